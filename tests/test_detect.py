"""Detection, trace, verification and the catalog on a tiny Llama with a planted super weight."""

from __future__ import annotations

import pytest
import torch

from superweight import catalog
from superweight.activations import trace
from superweight.detect import DetectConfig, detect
from superweight.errors import SuperweightError
from superweight.model import wrap_model
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer
from superweight.verify import verify

PLANT = (2, 7, 11)


@pytest.fixture()
def planted_lm():
    model = tiny_model("llama")
    plant_super_weight(model, *PLANT)
    return wrap_model(model, tiny_tokenizer(), ref="tiny-llama")


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finds_the_planted_coordinate_with_its_measurements(planted_lm):
    before = snapshot(planted_lm.model)
    result = detect(planted_lm)
    assert [s.coord for s in result.early] == [PLANT]
    sw = result.early[0]
    assert sw.round == 1 and sw.rank == 1 and not sw.late
    assert sw.dominance > 0.9
    assert abs(sw.output_without) < 0.1 * abs(sw.output_value)
    assert sw.value == pytest.approx(float(planted_lm.view.down_proj(2).matrix().detach()[7, 11]))
    assert [(a.layer, a.channel) for a in result.super_activations] == [(2, 7)]
    assert_same(planted_lm.model, before)


def test_two_in_one_row_that_make_one_massive_activation_are_found_together():
    """Two weights of one row making one massive activation are its origin, both found in round 1
    (the old search needed a second round for the smaller one)."""
    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11, input_scale=200.0)
    plant_super_weight(model, 2, 7, 40, input_scale=100.0)
    lm = wrap_model(model, tiny_tokenizer())
    result = detect(lm)
    assert {s.coord: s.round for s in result.early} == {(2, 7, 11): 1, (2, 7, 40): 1}
    (act,) = result.massive
    assert act.origin.kind == "super weight" and [w.coord for w in act.origin.weights] == [(2, 7, 11), (2, 7, 40)]
    assert result.converged and result.rounds == 2


def test_two_in_one_row_where_one_makes_the_activation_the_other_in_round_2():
    """A second weight of the row too small to be part of the origin (< 10% of the output) is
    still found, by the down projection search, once the first is zeroed."""
    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11, input_scale=200.0)
    plant_super_weight(model, 2, 7, 40, weight=10.0, input_scale=60.0)
    result = detect(wrap_model(model, tiny_tokenizer()))
    assert {s.coord: s.round for s in result.early} == {(2, 7, 11): 1, (2, 7, 40): 2}
    assert [w.coord for w in result.massive[0].origin.weights] == [(2, 7, 11)]


def test_nothing_found_in_a_random_model():
    lm = wrap_model(tiny_model("llama"), tiny_tokenizer())
    result = detect(lm)
    assert result.super_weights == [] and result.super_activations == [] and result.massive == []
    assert result.converged and result.rounds == 1


def test_several_prompts_count_where_each_appears(planted_lm):
    result = detect(planted_lm, ["one prompt here", "and a second, longer prompt"])
    assert result.early[0].coord == PLANT and result.early[0].prompts_found == 2


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(planted_lm, prompt):
    with pytest.raises(SuperweightError, match="empty"):
        detect(planted_lm, prompt)


@pytest.mark.parametrize("field", ["min_output", "output_ratio", "min_input", "input_ratio"])
def test_thresholds_must_be_positive(field):
    with pytest.raises(SuperweightError, match="positive"):
        DetectConfig(**{field: 0})


def test_late_spikes_are_flagged_not_dropped():
    model = tiny_model("llama")
    plant_super_weight(model, 5, 3, 20)
    result = detect(wrap_model(model, tiny_tokenizer()))
    assert [s.coord for s in result.late] == [(5, 3, 20)] and result.early == []


def test_trace_follows_the_massive_activation(planted_lm):
    t = trace(planted_lm)
    assert t.activation.channel == 7 and t.first_layer == 2 and t.last_layer == 5
    assert [r.layer for r in t.original] == [-1, 0, 1, 2, 3, 4, 5]  # the embedding output first
    after = {r.layer: r for r in t.original}, {r.layer: r for r in t.pruned}
    assert abs(after[0][3].at) > 10 * abs(after[1][3].at)
    assert [s.coord for s in t.removed] == [PLANT]


def test_verify_sets_a_verdict_and_restores_weights(planted_lm):
    result = detect(planted_lm)
    before = snapshot(planted_lm.model)
    v = verify(planted_lm, result.super_weights, text="some plain text to score " * 8, massive=result.massive)
    sw = result.super_weights[0]
    assert sw.ppl_ratio is not None and sw.ppl_ratio > 0 and sw.verdict in ("super weight", "matters", "spike only")
    act = result.massive[0]
    assert act.ppl_ratio is not None and act.ppl_ratio > 0 and act.verdict in ("needed", "matters", "not needed")
    assert v.tokens > 10
    assert_same(planted_lm.model, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in planted_lm.model.modules())


def test_early_drops_candidates_verification_refutes(planted_lm):
    """After verification, `early` (what interventions and quantization use) and
    `super_activations` keep only what verification did not refute."""
    result = detect(planted_lm)
    assert [s.coord for s in result.early] == [PLANT] and len(result.super_activations) == 1
    result.super_weights[0].verdict = "spike only"
    assert result.early == [] and result.super_activations == []
    result.super_weights[0].verdict = "super weight"
    assert [s.coord for s in result.early] == [PLANT] and len(result.super_activations) == 1


def test_catalog_compare_and_local_add(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "cat.json"))
    assert catalog.compare("meta-llama/Llama-2-7b-hf", [(1, 2533, 7890)]).verdict == "agrees with the catalog"
    assert catalog.compare("meta-llama/Llama-2-7b", [(1, 2533, 7890)]).verdict == "not catalogued"
    olmo = catalog.compare("allenai/OLMo-1B-0724-hf", [(1, 1764, 1710), (2, 1764, 8041)])
    assert olmo.agree_alternative == [(2, 1764, 8041)] and not olmo.missing
    catalog.add("me/my-model", [(3, 4, 5)], "my run")
    assert catalog.lookup("me/my-model").super_weights == [(3, 4, 5)]
    assert catalog.compare("me/my-model", [(3, 4, 6)]).verdict == "disagrees with the catalog"


def test_a_massive_activation_made_by_a_norm_gain_is_reported_as_such(tmp_path, capsys):
    from superweight.cli import main

    model = tiny_model("gemma2")
    lm = wrap_model(model, tiny_tokenizer())
    with torch.no_grad():
        lm.view.post_mlp_norm(3).weight[9] = 5000.0  # Gemma's gain is 1 + w
    result = detect(lm)
    assert result.super_weights == []
    (act,) = result.massive
    assert (act.first_layer, act.channel, act.origin.kind) == (3, 9, "post-MLP norm gain")
    assert act.origin.gain_ratio > 1000 and act.origin.weights == []
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    assert main(["detect", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "made by the post-MLP norm's gain on channel 9" in out and "not a single weight" in out
    assert "Super activation" not in out


def test_verdicts_are_graded_and_the_scale_is_written(planted_lm):
    """Between `matters` and `needed` a massive activation or a weight *matters*: a ratio under the
    needed threshold is not reported as harmless; the scale goes into the result and the legend."""
    from superweight.detect import run_detection
    from superweight.report.detect_tables import detection_tables
    from superweight.verify import VerdictScale

    run = run_detection(planted_lm, verify_threshold=1e9, matters_threshold=1.0 + 1e-9,
                        text="some plain text to score " * 8)
    act, sw = run.result.massive[0], run.result.super_weights[0]
    assert act.verdict == ("matters" if act.ppl_ratio >= 1.0 + 1e-9 else "not needed")
    assert sw.verdict == ("matters" if max(sw.ppl_ratio, sw.ppl_ratio_given_others or 0) >= 1.0 + 1e-9
                          else "spike only")
    scale = run.to_dict()["verification"]["scale"]
    assert scale["needed"] == 1e9 and scale["matters"] == 1.0 + 1e-9 and "matters ≥ ×1" in scale["legend"]
    notes = " ".join(n for t in detection_tables(planted_lm.describe(), run) for n in t.notes)
    assert "Verdicts by perplexity ratio (the ppl× columns): needed" in notes and f"×{act.ppl_ratio:.3g}" in notes
    assert VerdictScale(1.2).matters == 1.2  # a needed threshold under the default: no middle grade
    with pytest.raises(SuperweightError, match="'matters' threshold .* is above the 'needed' one"):
        VerdictScale(3, 5)
    with pytest.raises(SuperweightError, match="matters threshold is a perplexity ratio above 1"):
        VerdictScale(3, 0.5)


def test_a_bad_verdict_scale_is_refused_before_the_model_loads(capsys):
    from superweight.cli import main

    assert main(["detect", "/nonexistent/model", "--verify", "--matters-threshold", "5"]) == 2
    assert "is above the 'needed' one" in capsys.readouterr().err
