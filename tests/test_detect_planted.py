"""Detection on every architecture: a super weight planted into a tiny random model is found at
exactly its coordinate (and expert), several at once or in later rounds, its massive activation is
traced back to it, and the model's weights are bit-identical afterwards."""

from __future__ import annotations

import math

import pytest
import torch

from superweight.detect import DEFAULT_PROMPT, DetectConfig, detect
from superweight.interventions import prune
from superweight.model import wrap_model
from superweight.model.hooks import observe_down_projs
from superweight.testing import HIDDEN, TINY_TYPES, plant_super_weight, planted, tiny_model, tiny_tokenizer

# gpt-oss clamps gate and up at 7 (swiglu_limit): its largest feature is (7 + 1)·7·σ(7·1.702) ≈ 56
CLAMPED = {"gpt_oss": 56.0}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss"}
POST_MLP_NORM = {"gemma2", "gemma3_text", "olmo2"}
OTHER_PROMPT = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def expert(model_type: str, e: int) -> int | None:
    return e if model_type in MOE else None


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [name for name, t in before.items() if not torch.equal(after[name], t)]
    assert not changed, f"detection changed {changed}"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


def spikes(lm, prompt: str) -> dict[int, tuple[float, torch.Tensor]]:
    """Per layer: the largest |down projection output| and the input [tokens, intermediate] of the
    projection that made it."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    out: dict[int, tuple[float, torch.Tensor]] = {}

    def on_down(proj, x, y, pos):
        m = float(y.abs().max())
        if proj.layer not in out or m > out[proj.layer][0]:
            out[proj.layer] = (m, x)

    with torch.no_grad(), observe_down_projs(lm.view, on_down):
        logits = lm.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    return out


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_planted_super_weight_is_found_exactly(model_type, tokenizer):
    model = tiny_model(model_type)
    sw = plant_super_weight(model, 2, 7, 11, expert=expert(model_type, 1))
    lm = wrap_model(model, tokenizer)
    before = snapshot(model)

    result = detect(lm)

    assert [s.key for s in result.super_weights] == [sw.key]
    found = result.super_weights[0]
    assert found.round == 1 and not found.late
    assert found.value == 50.0 and found.rank == 1
    feature = CLAMPED.get(model_type, 100.0)
    assert found.input_value == pytest.approx(feature, rel=0.3)
    assert found.output_value == pytest.approx(50.0 * feature, rel=0.3)
    assert found.dominance > 0.99
    assert abs(found.output_without) < 50
    if model_type in POST_MLP_NORM:  # the norm bounds the spike by ~sqrt(hidden) x gain ...
        assert found.norm_output is not None and found.norm_gain is not None
        assert 0.5 * math.sqrt(HIDDEN) < abs(found.norm_output) <= math.sqrt(HIDDEN) * found.norm_gain * 1.01
        assert result.massive == [] and result.super_activations == []  # ... so nothing massive
    else:
        assert found.norm_output is None
        (act,) = result.massive  # the massive activation, traced back to the planted weight
        assert (act.channel, act.first_layer, act.last_layer) == (7, 2, 5)
        assert act.origin.kind == "super weight" and [w.key for w in act.origin.weights] == [sw.key]
        assert act.origin.mlp_share > 0.99 and act.ratio > 1000
        assert len(act.positions) == lm.tokenizer(DEFAULT_PROMPT, return_tensors="pt").input_ids.numel()
        assert [(a.layer, a.channel) for a in result.super_activations] == [(2, 7)]
    assert result.converged and result.rounds == 2
    assert_unchanged(model, before)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_planted_spike_is_everywhere_finite_and_removed_by_zeroing(model_type, tokenizer):
    """The plant's contract: the input feature is large at every token of any prompt, the forward
    stays finite, other layers stay O(1), and zeroing the one weight removes the output spike."""
    model = tiny_model(model_type)
    sw = plant_super_weight(model, 2, 7, 11, expert=expert(model_type, 1))
    lm = wrap_model(model, tokenizer)
    stats = spikes(lm, OTHER_PROMPT)
    top, x = stats[2]
    assert 1e3 <= top <= 1e4
    assert bool((x[:, 11] > 50).all())  # every token (for MoE: every token routed to the expert)
    if model_type in MOE:
        assert x.shape[0] == lm.tokenizer(OTHER_PROMPT, return_tensors="pt").input_ids.numel()
    assert max(m for layer, (m, _) in stats.items() if layer != 2) < 5
    with prune(lm.view, [sw]):
        assert spikes(lm, OTHER_PROMPT)[2][0] < 50
        assert not detect(lm).super_weights


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_two_in_different_layers_are_both_found(model_type, tokenizer):
    model = tiny_model(model_type)
    first = plant_super_weight(model, 1, 7, 11, expert=expert(model_type, 1))
    second = plant_super_weight(model, 3, 20, 40, expert=expert(model_type, 2), weight=-30.0)
    lm = wrap_model(model, tokenizer)
    before = snapshot(model)

    result = detect(lm)

    assert {s.key: s.round for s in result.super_weights} == {first.key: 1, second.key: 1}
    assert {s.key: s.value for s in result.super_weights} == {first.key: 50.0, second.key: -30.0}
    assert_unchanged(model, before)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_two_in_the_same_row(model_type, tokenizer):
    """Same layer, same output channel. Where the residual stream shows the massive activation, both
    weights are its origin and are found at once; behind a post-MLP norm (no massive activation)
    the bigger product hides the smaller one until it is zeroed, in round 2."""
    model = tiny_model(model_type)
    e = expert(model_type, 0)
    first = plant_super_weight(model, 2, 5, 11, expert=e)
    second = plant_super_weight(model, 2, 5, 90, expert=e, weight=20.0, input_scale=60.0)
    lm = wrap_model(model, tokenizer)
    before = snapshot(model)

    result = detect(lm)

    late_round = 2 if model_type in POST_MLP_NORM else 1
    assert {s.key: s.round for s in result.super_weights} == {first.key: 1, second.key: late_round}
    if model_type not in POST_MLP_NORM:
        (act,) = result.massive
        assert {w.key for w in act.origin.weights} == {first.key, second.key}
    assert_unchanged(model, before)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_two_spikes_in_one_layer_different_rows_are_both_found_in_round_1(model_type, tokenizer):
    """A layer can spike in several rows, each from its own input feature: the search keeps the
    largest few rows per layer, so the smaller spike does not wait for the larger one to be zeroed
    (behind a post-MLP norm there is no massive activation to point at either of them)."""
    model = tiny_model(model_type)
    e = expert(model_type, 1)
    big = plant_super_weight(model, 2, 7, 11, expert=e)
    small = plant_super_weight(model, 2, 20, 40, expert=e, weight=30.0, input_scale=60.0)
    result = detect(wrap_model(model, tokenizer))
    assert {s.key: s.round for s in result.super_weights} == {big.key: 1, small.key: 1}
    assert result.converged and result.rounds == 2


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "olmo2", "mixtral"])
def test_planting_order_does_not_matter(model_type, tokenizer):
    """Planting the later layer first still leaves both findable (earlier plants are re-planted)."""
    model = tiny_model(model_type)
    late = plant_super_weight(model, 4, 30, 60, expert=expert(model_type, 3))
    early = plant_super_weight(model, 1, 8, 9, expert=expert(model_type, 0), weight=-50.0)
    assert [s.key for s in planted(model)] == [early.key, late.key]
    result = detect(wrap_model(model, tokenizer))
    assert {s.key for s in result.super_weights} == {early.key, late.key}


def test_shared_expert_super_weight(tokenizer):
    """Qwen2-MoE's dense shared expert: expert None."""
    model = tiny_model("qwen2_moe")
    sw = plant_super_weight(model, 1, 3, 4)
    assert sw.expert is None
    result = detect(wrap_model(model, tokenizer))
    assert [s.key for s in result.super_weights] == [(1, 3, 4, None)]


def test_a_late_layer_plant_is_marked_late(tokenizer):
    model = tiny_model("llama")
    plant_super_weight(model, 5, 1, 2)
    (found,) = detect(wrap_model(model, tokenizer), config=DetectConfig()).super_weights
    assert found.coord == (5, 1, 2) and found.late


def test_plant_rejects_coordinates_outside_the_matrix():
    from superweight.errors import SuperweightError

    model = tiny_model("llama", num_layers=2)
    with pytest.raises(SuperweightError, match="outside"):
        plant_super_weight(model, 0, 64, 0)
    with pytest.raises(SuperweightError, match="out of range"):
        plant_super_weight(model, 2, 0, 0)
    with pytest.raises(SuperweightError, match="expert index"):
        plant_super_weight(tiny_model("mixtral", num_layers=1), 0, 0, 0)
