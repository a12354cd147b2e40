"""Scoped forward hooks: what flows into and out of each down projection, norm and layer.

Hooks are always registered inside a context manager and removed in `finally`. Callbacks receive
2-D tensors `[tokens, features]` (batch and sequence flattened) so that callers can reduce them to a
few numbers right away instead of keeping whole activations.

Fused mixture-of-experts modules call `F.linear` on a 3-D parameter instead of one module per expert,
so there is nothing per expert to hook; for them the hook on the experts module recomputes each routed
expert's intermediate activation as the adapter declares it (`ModelView.expert_input`).
The experts' weights are read through `read_param`: a hook runs after accelerate has put an offloaded
module's placeholders back, so `module.<param>` is a meta tensor there.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from superweight.model.adapters import DownProj, ModelView
from superweight.model.offload import read_param

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
    routed_layer = projs[0].layer

    def hook(module, inputs, output):
        hidden, top_k_index = inputs[0].detach(), inputs[1]
        hidden = _flat(hidden)
        # read once per call: for an offloaded layer these are copies loaded from the offload map
        gate_up_w = view.experts_gate_up(routed_layer).to(hidden.device)  # [experts, 2·intermediate, hidden]
        down_w = read_param(module, projs[0].param).to(hidden.device)  # [experts, hidden, intermediate]
        for e in torch.unique(top_k_index).tolist():
            if e not in by_expert:
                continue
            tokens = (top_k_index == e).any(dim=-1).nonzero().flatten()
            x = view.expert_input(routed_layer, e, hidden[tokens], gate_up_w[e]).detach()  # [tokens_e, inter]
            y = nn.functional.linear(x, down_w[e]).detach()  # [tokens_e, hidden]
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


@contextmanager
def observe_inputs(modules: dict[int, nn.Module],
                   callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call `callback(key, input [tokens, hidden])` with each module's first input during the block
    (a decoder layer's input is the residual stream entering it; passed positionally or as
    `hidden_states=`)."""
    def make(key):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                callback(key, _flat(x.detach()))
        return hook

    handles = []
    try:
        for key, module in modules.items():
            handles.append(module.register_forward_pre_hook(make(key), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def observe_io(modules: dict[int, nn.Module],
               callback: Callable[[int, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Call `callback(key, input [tokens, in], output [tokens, out])` for each module (a norm's input
    and output, say) during the block."""
    def make(key):
        def hook(module, inputs, output):
            callback(key, _flat(inputs[0].detach()), _flat(_first_tensor(output).detach()))
        return hook
    with hooked([(m, make(k)) for k, m in modules.items()]):
        yield


@contextmanager
def observe_routing(view: ModelView, callback: Callable[[int, torch.Tensor], None],
                    layers: list[int] | None = None) -> Iterator[None]:
    """For mixture-of-experts layers: `callback(layer, weights [tokens, experts])`, each routed
    expert's routing weight per token (0 where not routed), read from the fused experts module's
    inputs `(hidden, top_k_index, top_k_weights)`. Dense layers are skipped."""
    def make(layer):
        def hook(module, inputs, output):
            if len(inputs) < 3:
                return
            index, weights = inputs[1], inputs[2].detach()  # [tokens, k] each
            n = getattr(module, view.adapter.expert_param).shape[0]
            dense = torch.zeros(index.shape[0], n + 1, dtype=weights.dtype, device=weights.device)
            dense.scatter_add_(1, index.clamp(max=n), weights)  # index n: padding some models use
            callback(layer, dense[:, :n])
        return hook

    pairs = []
    for i in (range(view.num_layers) if layers is None else layers):
        routed = [p for p in view.down_projs(i) if p.expert is not None]
        if routed:
            pairs.append((routed[0].module, make(i)))
    with hooked(pairs):
        yield
