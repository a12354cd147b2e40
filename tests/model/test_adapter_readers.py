"""What the adapters declare beyond module paths: which modules read the residual stream, and how a
fused experts module computes an expert's input. Checked on a tiny model of every architecture by
watching what the modules actually receive in a forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from superweight.model import wrap_model
from superweight.model.hooks import observe_down_projs
from superweight.testing import TINY_TYPES, plant_super_weight, tiny_model, tiny_tokenizer

LAYER = 1


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")  # RMSNorm, OlmoLayerNorm


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_residual_readers_are_exactly_the_modules_fed_by_the_residual_stream(model_type):
    """A module reads the residual stream when its input is the layer's input, a norm's output, or
    the MLP block's input (post-norm models such as OLMo 2 feed the raw stream). Every declared
    reader must be fed so, and every decoder linear fed so must be declared (o_proj and the down
    projection never are)."""
    lm = wrap_model(tiny_model(model_type), tiny_tokenizer())
    layer = lm.view.layers[LAYER]
    readers = dict(lm.view.residual_readers(LAYER))
    # tensors are kept alive until the end, so that no address is reused by a later tensor
    kept, sources, inputs, handles = [], set(), {}, []

    projected = set()  # outputs of decoder linears: a norm of one (DeepSeek's q_a/kv_a norms) is no source

    def keep_projection(module, args, output):
        kept.append(output)
        projected.add(output.data_ptr())

    def keep_output(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        kept.append(out)
        if not (args and args[0].data_ptr() in projected):
            sources.add(out.data_ptr())

    def keep_input(name, is_source=False):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            kept.append(x)
            if is_source:
                sources.add(x.data_ptr())
            else:
                inputs[name] = x.data_ptr()
        return hook

    prefix = f"{lm.view.adapter.layers}.{LAYER}."
    try:
        handles.append(layer.register_forward_pre_hook(keep_input("layer", True), with_kwargs=True))
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            handles.append(mlp.register_forward_pre_hook(keep_input("mlp", True), with_kwargs=True))
        for name, module in layer.named_modules():
            if _is_norm(module):
                handles.append(module.register_forward_hook(keep_output))
        linears = {n: m for n, m in lm.view.decoder_linears() if n.startswith(prefix)}
        for name, module in {**linears, **readers}.items():
            handles.append(module.register_forward_pre_hook(keep_input(name), with_kwargs=True))
        for module in linears.values():
            handles.append(module.register_forward_hook(keep_projection))
        with torch.no_grad():
            lm.model(**lm.tokenizer("a residual stream", return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    assert readers and all(name in inputs for name in readers), "a declared reader never ran"
    for name in readers:
        assert inputs[name] in sources, f"{name} is declared but does not read the residual stream"
    fed = {n for n in linears if inputs.get(n) in sources}
    assert fed <= set(readers), f"undeclared readers: {sorted(fed - set(readers))}"
    assert not any(n.endswith(("o_proj", "c_proj", "dense", "out_proj", "down_proj", "fc2", "dense_4h_to_h"))
                   for n in readers)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss"])
def test_the_declared_experts_forward_matches_the_module(model_type):
    """`ModelView.expert_input` (act(gate)·up from the fused gate_up, as the adapter declares it),
    through each routed expert's down projection and weighted by the router, adds up to exactly
    what the experts module computes itself."""
    model = tiny_model(model_type)
    sw = plant_super_weight(model, layer=LAYER, row=5, col=9, expert=2)
    lm = wrap_model(model, tiny_tokenizer())
    experts = lm.view.down_module(LAYER)
    seen, call = [], {}

    def capture_in(module, args):
        call["index"], call["weights"] = args[1], args[2]  # [tokens, top_k] each

    def capture_out(module, args, output):
        call["out"] = output.detach()
    handles = [experts.register_forward_pre_hook(capture_in), experts.register_forward_hook(capture_out)]
    try:
        with torch.no_grad(), observe_down_projs(
                lm.view, lambda p, x, y, pos: seen.append((p.expert, x.clone(), y.clone(), pos)), [LAYER]):
            lm.model(**lm.tokenizer("experts at work", return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros_like(call["out"])  # [tokens, hidden]
    for expert, x, y, pos in seen:
        if expert is None:
            continue  # Qwen2-MoE's shared expert is a module of its own
        weight = (call["weights"] * (call["index"] == expert)).sum(-1)[pos]  # [tokens_e]
        total.index_add_(0, pos, y * weight[:, None].to(y.dtype))
    assert torch.allclose(total, call["out"], atol=1e-5, rtol=1e-4)
    planted = next(x for e, x, _, _ in seen if e == sw.expert)
    assert planted[:, sw.col].abs().min() > 10  # the planted expert's spike, seen at every token
