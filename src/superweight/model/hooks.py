"""Scoped forward hooks: what flows into and out of each down projection, norm and layer.

Hooks are always registered inside a context manager and removed in `finally`. Callbacks receive
2-D tensors `[tokens, features]` (batch and sequence flattened) so that callers can reduce them to a
few numbers right away instead of keeping whole activations.

Fused mixture-of-experts modules call `F.linear` on a 3-D parameter instead of one module per expert,
so there is nothing per expert to hook; for them the hook on the experts module recomputes each routed
expert's intermediate activation as the adapter declares it (`ModelView.expert_input`).
The experts' weights are read through `read_param`: a hook runs after accelerate has put an offloaded
module's placeholders back, so `module.<param>` is a meta tensor there.

Recomputing costs a second pass through every routed expert. `observe_down_projs(..., inline=True)`
avoids it where transformers dispatches the experts' forward through its experts interface
(`@use_experts_implementation`, every fused family in transformers 5): for the block, the experts
run through a registered implementation that computes each expert exactly as transformers' own
eager loop does and hands the callback the input and output it computed anyway (the implementation
setting is put back on exit). Unfused experts (an nn.ModuleList) are hooked one by one; the tokens
an expert received are found among the MoE block's input rows (the experts get copies of them).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch import nn

from superweight.model.adapters import DownProj, ModelView, get_path
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
            y = view.expert_output(by_expert[e], x, down_w[e]).detach()  # [tokens_e, hidden]
            callback(by_expert[e], x, y, tokens)
    return hook


def _match_rows(rows: torch.Tensor, table: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """For each row of `rows` [n, hidden], the index of an identical row of `table` [tokens, hidden]."""
    out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    for s in range(0, rows.shape[0], chunk):
        eq = (rows[s:s + chunk, None, :] == table[None, :, :]).all(dim=-1)  # [chunk, tokens]
        out[s:s + chunk] = eq.float().argmax(dim=-1)
    return out


def _unfused_pairs(view: ModelView, layer: int, projs: list[DownProj], callback: DownCallback):
    """Hooks for an nn.ModuleList of experts: each expert's down projection, with the token positions
    found by matching the rows the expert received against the MoE block's input."""
    block = view.layers[layer] if view.adapter.mlp is None else get_path(view.layers[layer], view.adapter.mlp)
    experts = view.down_module(layer)
    state: dict = {}

    def on_block(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        state["table"] = _flat(x.detach())

    def pre_hooks():
        for p in projs:
            def on_expert(module, args, kwargs, e=p.expert):
                x = args[0] if args else next(iter(kwargs.values()))
                state[e] = _match_rows(_flat(x.detach()), state["table"].to(x.device))
            yield experts[p.expert], on_expert

    def down_hook(p: DownProj):
        def hook(module, inputs, output):
            x, y = _flat(inputs[0].detach()), _flat(_first_tensor(output).detach())
            callback(p, x, y, state.pop(p.expert, torch.arange(x.shape[0], device=x.device)))
        return hook

    return [(block, on_block)] + list(pre_hooks()), [(p.module, down_hook(p)) for p in projs]


@contextmanager
def _pre_hooked(pairs: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


INLINE = "superweight_observe"  # the experts implementation registered for `inline=True`
_INLINE_CALLBACKS: dict[int, Callable] = {}  # id(experts module) -> callback(expert, x, y, tokens)


def _inline_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager experts loop (concatenated or interleaved gate_up, transposed or not,
    with or without biases: the flags `@use_experts_implementation` sets), handing each expert's
    down projection input and output to the callback registered for this module."""
    callback = _INLINE_CALLBACKS.get(id(self))
    out = torch.zeros_like(hidden_states)
    n = self.gate_up_proj.shape[0]
    for e in torch.unique(top_k_index).tolist():
        if e >= n:  # padding index some models use
            continue
        tokens, k = torch.where(top_k_index == e)
        h = hidden_states[tokens]
        w = self.gate_up_proj[e]
        gate_up = h @ w if self.is_transposed else nn.functional.linear(h, w)
        if self.has_bias:
            gate_up = gate_up + self.gate_up_proj_bias[e]
        x = self._apply_gate(gate_up)  # [tokens_e, intermediate]
        d = self.down_proj[e]
        y = x @ d if self.is_transposed else nn.functional.linear(x, d)
        if self.has_bias:
            y = y + self.down_proj_bias[e]
        if callback is not None:
            callback(e, x.detach(), y.detach(), tokens)
        out.index_add_(0, tokens, (y * top_k_weights[tokens, k, None]).to(out.dtype))
    return out


def _inline_ready(module: nn.Module) -> bool:
    """Whether the experts module dispatches through transformers' experts interface (gated)."""
    return (hasattr(module, "_apply_gate") and getattr(module, "has_gate", False)
            and getattr(getattr(module, "config", None), "_experts_implementation", None) is not None
            and isinstance(getattr(module, "gate_up_proj", None), torch.Tensor))


@contextmanager
def _inline_experts(modules: dict[int, tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Run the given experts modules through `_inline_experts_forward` for the block."""
    from transformers.integrations.moe import ExpertsInterface

    if INLINE not in ExpertsInterface._global_mapping:
        ExpertsInterface.register(INLINE, _inline_experts_forward)
    configs = {id(m.config): m.config for m, _ in modules.values()}
    saved = {k: c._experts_implementation_internal for k, c in configs.items()}
    try:
        for m, cb in modules.values():
            _INLINE_CALLBACKS[id(m)] = cb
        for c in configs.values():
            c._experts_implementation_internal = INLINE
        yield
    finally:
        for k, c in configs.items():
            c._experts_implementation_internal = saved[k]
        for m, _ in modules.values():
            _INLINE_CALLBACKS.pop(id(m), None)


@contextmanager
def observe_down_projs(view: ModelView, callback: DownCallback,
                       layers: list[int] | None = None, inline: bool = False) -> Iterator[None]:
    """Call `callback` with every down projection's input and output during the block.

    Fused experts are recomputed in a hook, or with `inline=True` observed as they are computed
    (no second pass; see the module docstring). Positions are flat indices into batch·seq."""
    pairs, pre, inlined = [], [], {}
    for i in (range(view.num_layers) if layers is None else layers):
        projs = view.down_projs(i)
        routed = [p for p in projs if p.expert is not None]
        if routed and view.is_unfused(i):
            p_pre, p_post = _unfused_pairs(view, i, routed, callback)
            pre += p_pre
            pairs += p_post
        elif routed and inline and _inline_ready(routed[0].module):
            by_expert = {p.expert: p for p in routed}
            inlined[i] = (routed[0].module, lambda e, x, y, t, b=by_expert: callback(b[e], x, y, t))
        elif routed:
            pairs.append((routed[0].module, _experts_hook(routed, callback, view)))
        pairs += [(p.module, _dense_hook(p, callback)) for p in projs if p.expert is None]
    with hooked(pairs), _pre_hooked(pre), (_inline_experts(inlined) if inlined else nullcontext()):
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
            n = view.num_experts(layer)
            dense = torch.zeros(index.shape[0], n + 1, dtype=weights.dtype, device=weights.device)
            dense.scatter_add_(1, index.clamp(max=n), weights)  # index n: padding some models use
            callback(layer, dense[:, :n])
        return hook

    pairs = []
    for i in (range(view.num_layers) if layers is None else layers):
        routed = [p for p in view.down_projs(i) if p.expert is not None]
        if routed:
            pairs.append((view.down_module(i), make(i)))
    with hooked(pairs):
        yield
