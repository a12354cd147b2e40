"""Scoped forward hooks: what flows into and out of each down projection, norm and layer.

Hooks are always registered inside a context manager and removed in `finally`. Callbacks receive
2-D tensors `[tokens, features]` (batch and sequence flattened) so that callers can reduce them to a
few numbers right away instead of keeping whole activations.

Fused mixture-of-experts modules call `F.linear` on a 3-D parameter instead of one module per expert,
so there is nothing per expert to hook; for them the hook on the experts module recomputes each routed
expert's intermediate activation as the adapter declares it (`ModelView.expert_input`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from superweight.model.adapters import DownProj, ModelView

# callback(proj, x [tokens, in], y [tokens, out], positions [tokens] flat indices into batch*seq)
DownCallback = Callable[[DownProj, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _first_tensor(obj) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    if hasattr(obj, "last_hidden_state"):
        return obj.last_hidden_state
    raise TypeError(f"cannot find a tensor in {type(obj).__name__}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


@contextmanager
def hooked(pairs: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register `(module, forward_hook)` pairs for the duration of the block."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _dense_hook(proj: DownProj, callback: DownCallback):
    def hook(module, inputs, output):
        x = _flat(inputs[0].detach())
        y = _flat(_first_tensor(output).detach())
        callback(proj, x, y, torch.arange(x.shape[0], device=x.device))
    return hook


def _experts_hook(projs: list[DownProj], callback: DownCallback, view: ModelView):
    by_expert = {p.expert: p for p in projs}

    def hook(module, inputs, output):
        hidden, top_k_index = inputs[0].detach(), inputs[1]
        hidden = _flat(hidden)
        for e in torch.unique(top_k_index).tolist():
            if e not in by_expert:
                continue
            tokens = (top_k_index == e).any(dim=-1).nonzero().flatten()
            x = view.expert_input(by_expert[e].layer, e, hidden[tokens]).detach()  # [tokens_e, intermediate]
            w = by_expert[e].matrix()
            y = nn.functional.linear(x, w).detach()  # [tokens_e, hidden]
            callback(by_expert[e], x, y, tokens)
    return hook


@contextmanager
def observe_down_projs(view: ModelView, callback: DownCallback,
                       layers: list[int] | None = None) -> Iterator[None]:
    """Call `callback` with every down projection's input and output during the block."""
    pairs = []
    for i in (range(view.num_layers) if layers is None else layers):
        projs = view.down_projs(i)
        routed = [p for p in projs if p.expert is not None]
        if routed:
            pairs.append((routed[0].module, _experts_hook(routed, callback, view)))
        pairs += [(p.module, _dense_hook(p, callback)) for p in projs if p.expert is None]
    with hooked(pairs):
        yield


@contextmanager
def observe_outputs(modules: dict[int, nn.Module],
                    callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call `callback(key, output [tokens, hidden])` for each module's output during the block."""
    def make(key):
        def hook(module, inputs, output):
            callback(key, _flat(_first_tensor(output).detach()))
        return hook
    with hooked([(m, make(k)) for k, m in modules.items()]):
        yield
