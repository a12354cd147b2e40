"""Super experts on tiny models of every MoE family, with a planted super expert.

`plant_super_expert` makes expert 1 of layer 2 (or the shared expert) routed for the first token,
with a down projection weight W[7, 11] = 50 that makes a massive activation on channel 7 there, and
an attention head in every later layer that turns the first token into a sink. The rule must pick
exactly that expert, the explanation must name the weight and the massive activation, pruning it
must remove the sink while random experts from the same layer do not, and an unplanted model must
have no super expert. Perplexity on a random tiny model is at chance whatever is pruned, so the
separation is read from the attention-sink share here (README/docs: on real models both move).
"""

from __future__ import annotations

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.model import wrap_model
from superweight.model.hooks import observe_down_projs
from superweight.moe import (SuperExpertConfig, check_experts, profile_experts, prune_experts, random_experts,
                             rule, super_experts, verify_super_experts)
from superweight.testing import plant_super_expert, tiny_model, tiny_tokenizer, unfuse_experts

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")
SHARED = ("qwen2_moe", "deepseek_v3")  # a shared expert beside the routed ones
TEXT = "The quick brown fox jumps over the lazy dog. " * 3
LAYER, ROW, COL, EXPERT = 2, 7, 11, 1


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def planted(model_type: str, tokenizer, expert: int | None = EXPERT, layer: int = LAYER, **kw):
    model = tiny_model(model_type, **kw)
    plant_super_expert(model, layer, ROW, COL, expert=expert)
    return wrap_model(model, tokenizer)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before) -> None:
    after = model.state_dict()
    assert [k for k, v in before.items() if not torch.equal(after[k], v)] == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"
    impl = getattr(model.config, "_experts_implementation", None)
    assert impl != "superweight_observe", "the experts implementation was not put back"


@pytest.mark.parametrize("model_type", FAMILIES)
def test_planted_super_expert_found_by_the_rule_and_explained(model_type, tokenizer):
    lm = planted(model_type, tokenizer)
    before = snapshot(lm.model)
    result = super_experts(lm)
    (se,) = result.super_experts
    assert (se.layer, se.expert, se.shared, se.channel, se.position) == (LAYER, EXPERT, False, ROW, 0)
    assert se.token == "<s>" and se.routed >= 1 and not se.late
    assert [w.key for w in se.weights] == [(LAYER, ROW, COL, EXPERT)]  # the planted weight, named
    assert se.weights[0].value == 50.0 and se.weights[0].dominance > 0.99 and se.weight_share > 0.9
    assert se.makes_massive and se.massive_first_layer == LAYER and abs(se.massive_value) > 1000
    assert result.outliers == []
    th = result.thresholds
    assert th.threshold >= th.percentile_value and th.threshold >= 0.1 * th.largest
    assert result.to_dict()["config"]["percentile"] == 99.5
    assert_unchanged(lm.model, before)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_no_super_expert_in_an_unplanted_model(model_type, tokenizer):
    result = super_experts(wrap_model(tiny_model(model_type), tokenizer))
    assert result.super_experts == [] and result.outliers == []


@pytest.mark.parametrize("model_type", SHARED)
def test_a_planted_shared_expert_is_reported_as_the_shared_expert(model_type, tokenizer):
    lm = planted(model_type, tokenizer, expert=None)
    (se,) = super_experts(lm).super_experts
    assert se.shared and se.expert is None and se.label() == f"layer {LAYER}, shared expert"
    assert [w.key for w in se.weights] == [(LAYER, ROW, COL, None)]
    assert se.makes_massive


@pytest.mark.parametrize("model_type", FAMILIES)
def test_verification_separates_the_super_expert_from_random_experts(model_type, tokenizer):
    lm = planted(model_type, tokenizer)
    before = snapshot(lm.model)
    found = super_experts(lm).super_experts
    v = verify_super_experts(lm, found, text=TEXT, draws=2, max_tokens=64)
    base, pruned = v.base.sink, v.pruned.sink
    mean, std = v.spread("sink")
    assert pruned < 0.5 * base  # the sink goes with the super expert ...
    assert abs(mean - base) + 3 * std < 0.2 * (base - pruned)  # ... and stays with random experts
    assert all(c.experts[0][0] == LAYER and c.experts[0][1] != EXPERT for c in v.random)
    assert v.to_dict()["variant"].startswith("output zeroed, as Su et al. prune")
    assert_unchanged(lm.model, before)


def test_a_late_super_expert_is_an_outlier_expert(tokenizer):
    lm = planted("qwen3_moe", tokenizer, layer=5)
    result = super_experts(lm)
    assert result.super_experts == []
    (o,) = result.outliers
    assert (o.layer, o.expert, o.late) == (5, EXPERT, True)
    assert [w.key for w in o.weights] == [(5, ROW, COL, EXPERT)] and o.weights[0].late
    # depth is configurable and recorded: with every layer eligible it is a super expert again
    result = super_experts(lm, config=SuperExpertConfig(depth=1.0))
    assert [s.key for s in result.super_experts] == [(5, EXPERT)]
    assert result.to_dict()["config"]["depth"] == 1.0


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_unfused_experts_give_the_same_profile_and_result(model_type, tokenizer):
    fused = planted(model_type, tokenizer)
    a = profile_experts(fused)
    lm = wrap_model(unfuse_experts(fused.model), tokenizer)
    assert lm.view.is_unfused(LAYER) and lm.view.down_proj(LAYER, EXPERT).layout == "linear"
    b = profile_experts(lm)
    assert [(s.key, s.kind, s.routed, s.channel, s.position) for s in a.stats] == \
        [(s.key, s.kind, s.routed, s.channel, s.position) for s in b.stats]
    assert max(abs(x.value - y.value) for x, y in zip(a.stats, b.stats)) < 1e-3
    (se,) = super_experts(lm).super_experts
    assert [w.key for w in se.weights] == [(LAYER, ROW, COL, EXPERT)]
    before = snapshot(lm.model)
    with prune_experts(lm.view, [(LAYER, EXPERT)]):
        assert lm.view.down_proj(LAYER, EXPERT).matrix().abs().max() == 0
    assert_unchanged(lm.model, before)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_inline_observation_is_the_recomputed_one_and_changes_nothing(model_type, tokenizer):
    """The profile observes fused experts as they run; the values equal the hook's recomputation
    and the model's output equals a plain forward pass."""
    lm = planted(model_type, tokenizer)
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    seen = {True: {}, False: {}}
    out = {}
    for inline in (True, False):
        def cb(p, x, y, pos, inline=inline):
            seen[inline][(p.layer, p.expert, p.shared)] = (float(y.abs().max()), pos.tolist())
        with torch.no_grad(), observe_down_projs(lm.view, cb, inline=inline):
            out[inline] = lm.model(input_ids=ids).logits
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
    assert seen[True].keys() == seen[False].keys()
    for k, (m, pos) in seen[True].items():
        assert seen[False][k][1] == pos and m == pytest.approx(seen[False][k][0], rel=1e-4, abs=1e-5)
    torch.testing.assert_close(out[True], plain, rtol=1e-4, atol=1e-5)


def test_prune_experts_restores_every_bit_also_on_error(tokenizer):
    lm = planted("gpt_oss", tokenizer)  # biased experts: the bias is zeroed too
    before = snapshot(lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with prune_experts(lm.view, [(LAYER, EXPERT), (3, 0)]):
            proj = lm.view.down_proj(LAYER, EXPERT)
            assert proj.matrix().abs().max() == 0 and proj.bias().abs().max() == 0
            assert lm.view.down_proj(LAYER, 0).matrix().abs().max() > 0  # only the named experts
            raise RuntimeError("boom")
    assert_unchanged(lm.model, before)


def test_random_controls_are_seeded_from_the_same_layers(tokenizer):
    lm = planted("mixtral", tokenizer)
    keys = [(2, 1), (3, 0)]
    a, b = random_experts(lm.view, keys, 7), random_experts(lm.view, keys, 7)
    assert a == b and [k[0] for k in a] == [2, 3] and not set(a) & set(keys)
    assert len({tuple(random_experts(lm.view, keys, s)) for s in range(10)}) > 1


def test_bad_expert_indices_and_routers_are_one_line_errors(tokenizer):
    lm = planted("mixtral", tokenizer)
    with pytest.raises(SuperweightError, match=r"expert 9 out of range for layer 2 \(4 experts, 0..3\)"):
        check_experts(lm.view, [(2, 9)])
    with pytest.raises(SuperweightError, match="give an expert index"):
        lm.view.down_proj(2)  # Mixtral has no shared expert: E is needed
    with pytest.raises(SuperweightError, match="layer 0 has no experts"):
        check_experts(wrap_model(tiny_model("deepseek_v3"), tokenizer).view, [(0, 1)])  # a dense layer
    dense = wrap_model(tiny_model("llama"), tokenizer)
    with pytest.raises(SuperweightError, match="has no experts"):
        dense.view.down_proj(1, 0)
    with pytest.raises(SuperweightError, match="not a mixture of experts"):
        profile_experts(dense)
    lm.model.model.layers[3].mlp.gate.weight = torch.nn.Parameter(torch.zeros(4))  # a router it cannot read
    with pytest.raises(SuperweightError, match="cannot read the router of layer 3"):
        profile_experts(lm)


def test_rule_thresholds_and_config_checks(tokenizer):
    lm = planted("olmoe", tokenizer)
    p = profile_experts(lm, [TEXT, "another prompt"])
    assert p.prompts == [TEXT, "another prompt"] and p.seconds > 0
    grid, shared = p.maxima()
    assert grid.shape == (6, 4) and not shared and float(grid.nan_to_num().max()) == pytest.approx(
        abs(max(p.stats, key=lambda s: abs(s.value)).value))
    early, late, th = rule(p, SuperExpertConfig())
    assert [s.key for s in early] == [(LAYER, EXPERT)] and late == []
    assert th.population == sum(1 for s in p.population() if s.routed)
    for bad in (dict(percentile=0), dict(fraction=2), dict(depth=0), dict(min_ratio=-1), dict(max_weights=0)):
        with pytest.raises(SuperweightError):
            SuperExpertConfig(**bad)


# --- under a memory budget: experts offloaded to disk ------------------------------------------------

@pytest.fixture(scope="module")
def budget_pair(tmp_path_factory):
    """A planted Qwen3-MoE (hidden 128, 8 layers) loaded whole and under a third of its weights."""
    from superweight.model import load_model
    from superweight.testing import save_model

    model = tiny_model("qwen3_moe", num_layers=8, hidden_size=128, moe_intermediate_size=256, head_dim=32)
    plant_super_expert(model, LAYER, ROW, COL, expert=EXPERT)
    path = save_model(model, tmp_path_factory.mktemp("moe-budget"))
    full = load_model(path, quiet=True)
    return full, load_model(path, quiet=True, max_memory=full.plan.weights_bytes // 3)


def _bits(lm) -> dict[str, bytes]:
    from superweight.model.offload import read_param

    return {f"{n}.{p}": read_param(m, p).detach().contiguous().view(torch.uint8).numpy().tobytes()
            for n, m in lm.model.named_modules() for p, _ in m.named_parameters(recurse=False)}


def test_offloaded_experts_give_the_same_profile_result_and_verification(budget_pair):
    from superweight.model.offload import is_offloaded

    full, off = budget_pair
    proj = off.view.down_proj(LAYER, EXPERT)
    assert is_offloaded(proj.module, proj.param)  # the super expert's layer sits on disk
    a, b = super_experts(full), super_experts(off)
    assert [(s.key, s.kind, s.routed, s.channel, s.position) for s in a.profile.stats] == \
        [(s.key, s.kind, s.routed, s.channel, s.position) for s in b.profile.stats]
    assert [s.value for s in b.profile.stats] == pytest.approx([s.value for s in a.profile.stats], rel=1e-5, abs=1e-7)
    assert [s.key for s in b.super_experts] == [(LAYER, EXPERT)]
    assert [w.key for w in b.super_experts[0].weights] == [(LAYER, ROW, COL, EXPERT)]
    before = _bits(off)
    va = verify_super_experts(full, a.super_experts, text=TEXT, draws=1, max_tokens=48)
    vb = verify_super_experts(off, b.super_experts, text=TEXT, draws=1, max_tokens=48)
    assert [vb.pruned.ppl, vb.pruned.sink, vb.random[0].sink] == pytest.approx(
        [va.pruned.ppl, va.pruned.sink, va.random[0].sink], rel=1e-5)
    assert vb.pruned.sink < 0.5 * vb.base.sink
    with pytest.raises(RuntimeError):
        with prune_experts(off.view, [(LAYER, EXPERT)]):
            assert off.view.down_proj(LAYER, EXPERT).matrix().abs().max() == 0
            raise RuntimeError("interrupted")
    assert _bits(off) == before


def test_zero_shot_accuracy_when_asked(tokenizer, tmp_path):
    import json

    from superweight.report.moe import verification_table

    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"goal": "To dry wet hands,", "sol1": "rub them with a towel.", "sol2": "put them in the freezer.",
         "label": 0},
        {"goal": "To boil water,", "sol1": "put it in the fridge.", "sol2": "heat it on the stove.", "label": 1}]))
    lm = planted("mixtral", tokenizer)
    v = verify_super_experts(lm, [(LAYER, EXPERT)], text=TEXT, draws=1, max_tokens=32, tasks=["piqa"], limit=2,
                             data_files={"piqa": piqa})
    for c in (v.base, v.pruned, *v.random):
        assert set(c.acc) == {"piqa"} and 0.0 <= c.acc["piqa"] <= 1.0
    assert "piqa acc" in [col.name for col in verification_table(v).columns]
