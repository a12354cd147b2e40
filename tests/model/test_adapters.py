"""Every supported architecture, as a tiny random model: the adapter finds its layers and down
projections, reads W[row=out, col=in] as a view of the real weight, and the hooks report what the
down projection really computes (recomputed per expert for fused MoE experts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.adapters import ModelView, adapter_for
from superweight.model.hooks import hooked, observe_down_projs
from superweight.testing import HIDDEN, INTERMEDIATE, TINY_TYPES, tiny_model, tiny_tokenizer

LAYERS = 3
DENSE_FIRST = {"deepseek_v3": 1}  # DeepSeek-V3's first layers are dense (first_k_dense_replace)
MOE_EXPERTS = {"mixtral": 4, "qwen2_moe": 4, "qwen3_moe": 4, "olmoe": 4, "deepseek_v3": 4, "gpt_oss": 4}
POST_MLP_NORM = {"gemma2", "gemma3_text", "olmo2"}
PROMPT = "Apple Inc. is a worldwide tech company."


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return tiny_tokenizer()(PROMPT, return_tensors="pt").input_ids  # [1, seq]


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """One tiny model per type, shared by the tests that only read it."""
    return {t: tiny_model(t, num_layers=LAYERS) for t in TINY_TYPES}


def view_of(model: nn.Module) -> ModelView:
    return ModelView(model, adapter_for(model.config.model_type))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_view_finds_every_layer_and_down_projection(zoo, model_type):
    view = view_of(zoo[model_type])
    assert view.num_layers == LAYERS
    for layer in range(LAYERS):
        projs = view.down_projs(layer)
        routed = [p for p in projs if p.expert is not None]
        moe = model_type in MOE_EXPERTS and layer >= DENSE_FIRST.get(model_type, 0)
        assert view.is_moe_layer(layer) == moe
        assert [p.expert for p in routed] == list(range(MOE_EXPERTS[model_type] if moe else 0))
        dense = [p for p in projs if p.expert is None]
        assert len(dense) == (1 if not moe or view.adapter.shared_down_proj else 0)
        for p in projs:
            assert p.shape == (HIDDEN, INTERMEDIATE), p.name
            assert p.layer == layer


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_matrix_is_a_view_and_edits_change_the_forward(model_type, ids):
    model = tiny_model(model_type, num_layers=2)
    view = view_of(model)
    before = logits(model, ids)
    layer = 0
    projs = view.down_projs(layer)  # every expert, so that a routed one is surely edited
    for p in projs:
        w = p.matrix()
        param = getattr(p.module, p.param)
        assert w.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
        with torch.no_grad():
            w[3, 5] += 1.0
        assert param.detach().flatten().ne(0).any()
    after = logits(model, ids)
    assert not torch.allclose(before, after)
    for p in projs:  # the edit landed in the stored parameter at the right place
        param = getattr(p.module, p.param).detach()
        stored = param.T if p.layout == "conv1d" else param[p.expert] if p.layout == "experts" \
            else param[p.expert].T if p.layout == "experts_t" else param
        assert torch.equal(stored[3, 5], p.matrix()[3, 5])


def _collect(view: ModelView, ids: torch.Tensor, model: nn.Module) -> list:
    seen = []
    with torch.no_grad(), observe_down_projs(view, lambda p, x, y, pos: seen.append((p, x, y, pos))):
        model(input_ids=ids)
    return seen


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_observed_output_is_input_times_matrix(zoo, model_type, ids):
    model = zoo[model_type]
    view = view_of(model)
    seen = _collect(view, ids, model)
    assert {p.layer for p, *_ in seen} == set(range(LAYERS))
    tokens = ids.numel()
    for proj, x, y, pos in seen:
        assert x.shape == (pos.numel(), INTERMEDIATE) and y.shape == (pos.numel(), HIDDEN)
        bias = getattr(proj.module, "bias", None) if proj.expert is None else None
        expected = x @ proj.matrix().T + (bias if bias is not None else 0)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
        if proj.expert is None:
            assert torch.equal(pos, torch.arange(tokens))


@pytest.mark.parametrize("model_type", sorted(MOE_EXPERTS))
def test_moe_experts_recomputed_exactly_for_every_routed_expert(zoo, model_type, ids):
    """The hook recomputes each routed expert's input and output; check them by hand and check
    that the routing-weighted sum is what the experts module really returned."""
    model = zoo[model_type]
    view = view_of(model)
    for layer in range(DENSE_FIRST.get(model_type, 0), LAYERS):
        experts = view.down_module(layer)
        calls = []

        def grab(module, inputs, output):
            calls.append((inputs[0].detach(), inputs[1].detach(), inputs[2].detach(), output.detach()))

        seen = []
        with torch.no_grad(), hooked([(experts, grab)]), observe_down_projs(
                view, lambda p, x, y, pos: seen.append((p, x, y, pos)), layers=[layer]):
            model(input_ids=ids)
        (hidden, top_k, top_w, out), = calls  # hidden [tokens, H], top_k / top_w [tokens, k]
        routed = {p.expert: (x, y, pos) for p, x, y, pos in seen if p.expert is not None}
        assert set(routed) == set(torch.unique(top_k).tolist())  # every expert hit is reported
        total = torch.zeros_like(out)
        for e, (x, y, pos) in routed.items():
            tokens = (top_k == e).any(dim=-1).nonzero().flatten()
            assert torch.equal(pos, tokens)
            if model_type == "gpt_oss":  # transposed, biased, interleaved, clamped SwiGLU
                gate_up = hidden[tokens] @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
                gate, up = gate_up[..., ::2].clamp(max=7.0), gate_up[..., 1::2].clamp(-7.0, 7.0)
                x_manual = (up + 1) * gate * torch.sigmoid(gate * 1.702)
                y_manual = x_manual @ experts.down_proj[e] + experts.down_proj_bias[e]
            else:
                gate, up = (hidden[tokens] @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
                x_manual = nn.functional.silu(gate) * up  # [tokens_e, intermediate]
                y_manual = x_manual @ experts.down_proj[e].T
            torch.testing.assert_close(x, x_manual, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(y, y_manual, rtol=1e-5, atol=1e-6)
            weight = (top_w[tokens] * (top_k[tokens] == e)).sum(dim=-1, keepdim=True)
            total[tokens] += weight * y
        torch.testing.assert_close(total, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_post_mlp_norm_is_the_norm_applied_to_the_mlp_output(zoo, model_type, ids):
    model = zoo[model_type]
    view = view_of(model)
    if model_type not in POST_MLP_NORM:
        assert view.post_mlp_norm(0) is None and view.norm_gain(0) is None
        return
    for layer in range(LAYERS):
        norm = view.post_mlp_norm(layer)
        assert norm is view.layers[layer].post_feedforward_layernorm
        gain = view.norm_gain(layer)
        torch.testing.assert_close(gain, norm.weight.detach() + view.adapter.norm_gain_offset)
        mlp_out, norm_in = [], []
        with torch.no_grad(), hooked([(view.layers[layer].mlp, lambda m, i, o: mlp_out.append(o)),
                                      (norm, lambda m, i, o: norm_in.append(i[0]))]):
            model(input_ids=ids)
        assert torch.equal(mlp_out[0], norm_in[0])  # the norm reads exactly the MLP output
    assert float(view.norm_gain(0).mean()) == pytest.approx(1.0)  # Gemma: (1 + 0) at init


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_branches_add_up_to_the_layer_increment(zoo, model_type, ids):
    """What each layer adds to the residual stream is exactly the attention branch plus the MLP
    branch (post-branch norms included; in parallel for GPT-NeoX): the decomposition detection uses."""
    model = zoo[model_type]
    view = view_of(model)
    seen = {}
    for layer in range(LAYERS):
        attn, mlp = view.branches(layer)
        assert attn is not None and mlp is not None
        if model_type in POST_MLP_NORM:
            assert mlp is view.post_mlp_norm(layer) and attn is view.layers[layer].post_attention_layernorm

        def pre(module, args, kwargs):
            seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def keep(name):
            return lambda m, i, o: seen.__setitem__(name, (o[0] if isinstance(o, tuple) else o).detach())

        handle = view.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            with torch.no_grad(), hooked([(attn, keep("attn")), (mlp, keep("mlp")),
                                          (view.layers[layer], keep("out"))]):
                model(input_ids=ids)
        finally:
            handle.remove()
        shape = seen["out"].shape
        increment = seen["out"] - seen["in"].reshape(shape)
        torch.testing.assert_close(seen["attn"].reshape(shape) + seen["mlp"].reshape(shape), increment,
                                   rtol=1e-5, atol=1e-5)


def test_branches_of_an_unknown_architecture_are_none_where_unknown(zoo):
    view = ModelView(zoo["gpt2"], adapter_for("foo", layers="transformer.h", down_proj="mlp.c_proj"))
    attn, mlp = view.branches(0)
    assert attn is None and mlp is view.layers[0].mlp  # the default paths: no "self_attn" in GPT-2


@pytest.mark.parametrize("model_type, has_bias", [("llama", False), ("gpt2", True), ("opt", True),
                                                   ("gpt_neox", True)])
def test_attention_output_bias(zoo, model_type, has_bias):
    bias = view_of(zoo[model_type]).attn_out_bias(1)
    assert (bias is not None) == has_bias
    if has_bias:
        assert bias.shape == (HIDDEN,)


def test_gpt2_conv1d_is_read_transposed(zoo):
    view = view_of(zoo["gpt2"])
    proj = view.down_proj(1)
    module = proj.module
    assert type(module).__name__ == "Conv1D"
    assert tuple(module.weight.shape) == (INTERMEDIATE, HIDDEN)  # stored [in, out]
    assert proj.shape == (HIDDEN, INTERMEDIATE)  # read [out, in]
    x = torch.randn(5, INTERMEDIATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module(x), x @ proj.matrix().T + module.bias)
        row, col = 7, 100
        assert proj.matrix()[row, col] == module.weight[col, row]


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_feature_rows_produce_the_down_projection_input(zoo, model_type, ids):
    """`feature_rows` (used to plant) names the rows that make intermediate feature `col`: scaling
    them changes that input feature and no other."""
    model = tiny_model(model_type, num_layers=2)
    view = view_of(model)
    expert = 0 if view.is_moe_layer(0) else None  # DeepSeek-V3's layer 0: the dense MLP of a MoE model
    col = 9
    feats = view.feature_rows(0, col, expert)
    assert len(feats) in (1, 2) and all(f.weight.shape == (HIDDEN,) for f in feats)

    def inputs():
        xs = {}
        with torch.no_grad(), observe_down_projs(view, lambda p, x, y, pos: xs.setdefault(p.expert, x),
                                                 layers=[0]):
            model(input_ids=ids)
        return xs[expert]

    before = inputs()
    with torch.no_grad():
        for f in feats:
            f.weight.mul_(3.0)
            if f.bias is not None:
                f.bias.mul_(3.0)
    after = inputs()
    changed = (after - before).abs().amax(dim=0) > 1e-7  # [intermediate]
    assert changed.nonzero().flatten().tolist() == [col]


def test_router_weight_only_for_moe(zoo):
    for t in TINY_TYPES:
        w = view_of(zoo[t]).router_weight(DENSE_FIRST.get(t, 0))
        if t in MOE_EXPERTS:
            assert w.shape == (MOE_EXPERTS[t], HIDDEN)
        else:
            assert w is None


def test_unknown_architecture_says_how_to_add_it():
    with pytest.raises(SuperweightError, match="unsupported architecture 'foo'.*adapters.py.*--layers"):
        adapter_for("foo")


def test_path_overrides(zoo, ids):
    model = zoo["llama"]
    view = ModelView(model, adapter_for("foo", layers="model.layers", down_proj="mlp.down_proj"))
    assert view.num_layers == LAYERS
    assert view.down_proj(1).matrix() is not None
    assert view.down_proj(1).module is model.model.layers[1].mlp.down_proj
    # an override of a known type keeps the rest of its adapter
    gpt2 = ModelView(zoo["gpt2"], adapter_for("gpt2", down_proj="mlp.c_proj"))
    assert gpt2.down_proj(0).layout == "conv1d"
    # overriding only one path of an unknown type is not enough
    with pytest.raises(SuperweightError, match="unsupported architecture"):
        adapter_for("foo", layers="model.layers")


@pytest.mark.parametrize("layers, down_proj, match", [
    ("model.layerz", "mlp.down_proj", "'model.layerz' not found"),
    ("model.layers", "mlp.nope", "'mlp.nope' not found"),
    ("model.embed_tokens", "mlp.down_proj", "not a list of layers"),
    ("model.layers", "mlp", "no weight matrix"),
])
def test_bad_override_path(zoo, layers, down_proj, match):
    with pytest.raises(SuperweightError, match=match):
        ModelView(zoo["llama"], adapter_for("foo", layers=layers, down_proj=down_proj))


@pytest.mark.parametrize("layer", [-1, LAYERS, 100])
def test_layer_out_of_range(zoo, layer):
    view = view_of(zoo["llama"])
    with pytest.raises(SuperweightError, match=f"layer {layer} out of range.*{LAYERS} layers"):
        view.check_layer(layer)
    with pytest.raises(SuperweightError, match="out of range"):
        view.down_proj(layer)


def test_expert_index_required_and_checked(zoo):
    view = view_of(zoo["mixtral"])
    with pytest.raises(SuperweightError, match="give an expert index"):
        view.down_proj(0)
    with pytest.raises(SuperweightError, match="expert 9 out of range"):
        view.down_proj(0, expert=9)
    shared = view_of(zoo["qwen2_moe"]).down_proj(0)  # Qwen2-MoE: expert None is the shared expert
    assert shared.shared and shared.expert is None


def test_tiny_model_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_model("llama", num_layers=1), tiny_model("llama", num_layers=1), tiny_model(
        "llama", num_layers=1, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    w = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])
    assert not a.training and a.dtype == torch.float32
    with pytest.raises(SuperweightError, match="no tiny config for 'bloom'"):
        tiny_model("bloom")


def test_tiny_tokenizer_is_byte_level_and_fits_every_model(zoo):
    tok = tiny_tokenizer()
    text = "Grüße, world!\n\ttabs"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[1:] == list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text
    for model in zoo.values():
        assert model.get_input_embeddings().weight.shape[0] == len(tok)
