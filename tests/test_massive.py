"""Massive activations on tiny planted models: each kind of origin is named, in one run; the
ablation that checks whether the model needs one; the wording of the report."""

from __future__ import annotations

import pytest
import torch

from superweight.cli import main
from superweight.detect import DetectConfig, candidates, detect, run_detection
from superweight.interventions import ablate_massive
from superweight.massive import MassiveCriterion, ResidualLayer, massive_entries, residual_scan, runs
from superweight.model import wrap_model
from superweight.records import ATTENTION, EMBEDDING, INPUT_FEATURE, MLP, NORM_GAIN, SUPER_WEIGHT
from superweight.testing import (BOS_ID, plant_attention_activation, plant_embedding_activation,
                                 plant_input_feature, plant_norm_activation, plant_super_weight, save_demo,
                                 TINY_TYPES, tiny_model, tiny_tokenizer)

MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss"}
POST_MLP_NORM = {"gemma2", "gemma3_text", "olmo2"}
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away into the woods. " * 3


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_clean(model, before):
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


# --- the criterion and the runs (pure functions) -------------------------------------------------

def test_massive_entries_are_relative_to_their_own_hidden_state():
    h = torch.ones(4, 8)
    h[0, 3] = 5000.0  # 5000× the median: massive
    h[2, 5] = -900.0  # over the floor but only 900×: not massive
    median, threshold, entries = massive_entries(h, MassiveCriterion(floor=100, ratio=1000))
    assert median == 1.0 and threshold == 1000.0 and entries == {(0, 3): 5000.0}
    assert massive_entries(h * 0.01, MassiveCriterion(floor=100, ratio=1000))[2] == {}  # 5000× the median but under the floor


def test_runs_split_at_a_gap_and_keep_the_peak():
    rows = [ResidualLayer(layer, 0, 0, 0, 1.0, 1000, massive=m) for layer, m in enumerate([
        {}, {(0, 3): 2000.0}, {(0, 3): -9000.0, (1, 3): 1500.0}, {}, {(0, 3): 3000.0}])]
    got = [(r.position, r.channel, r.first, r.last, r.peak, r.peak_layer) for r in runs(rows)]
    assert got == [(0, 3, 1, 2, -9000.0, 2), (1, 3, 2, 2, 1500.0, 2), (0, 3, 4, 4, 3000.0, 4)]


# --- one test per origin ------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "olmo2"])
def test_post_mlp_norm_gain_in_every_layer(model_type, tokenizer):
    """The Gemma 3 case: the post-MLP norm's gain makes a massive activation in every layer from 1
    on, so the median layer has it too and the down projection search (median layer) sees nothing."""
    model = tiny_model(model_type)
    plant_norm_activation(model, 9)
    lm = wrap_model(model, tokenizer)
    before = snapshot(model)

    result = detect(lm)

    (act,) = result.massive
    assert (act.channel, act.first_layer, act.last_layer) == (9, 1, 5)
    assert act.origin.kind == NORM_GAIN and act.origin.weights == []
    assert act.origin.gain == pytest.approx(5000.0) and act.origin.gain_ratio > 1000
    assert abs(act.origin.mlp_raw) < 50 and act.origin.mlp_share > 0.99  # the raw MLP output is small
    massive_layers = [r.layer for r in result.residual if any(c == 9 for _, c in r.massive)]
    assert massive_layers == [1, 2, 3, 4, 5]
    assert not candidates(result.layer_stats[0], result.config)  # what the old search alone saw
    assert result.super_weights == [] and result.super_activations == [] and result.early == []
    assert_clean(model, before)


def test_one_input_feature_feeding_four_rows_is_found_in_one_run(tokenizer):
    """The Qwen2.5-1.5B case: one huge input feature feeds several rows; the column and all its rows
    are reported together, in round 1, instead of one row per round."""
    model = tiny_model("qwen2")
    planted = plant_input_feature(model, 2, 11, [3, 17, 29, 40])
    lm = wrap_model(model, tokenizer)
    before = snapshot(model)

    result = detect(lm)

    assert sorted(a.channel for a in result.massive) == [3, 17, 29, 40]
    for act in result.massive:
        assert act.first_layer == 2 and act.origin.kind == INPUT_FEATURE
        assert act.origin.column == 11 and act.origin.rows == [3, 17, 29, 40]
        assert act.origin.input_value == pytest.approx(100.0, rel=0.3)
        assert sorted(w.coord for w in act.origin.weights) == sorted(s.coord for s in planted)
    assert {s.coord: s.round for s in result.super_weights} == {s.coord: 1 for s in planted}
    assert result.rounds == 2 and result.converged  # round 2 only confirms nothing is left
    assert_clean(model, before)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_one_input_feature_on_every_architecture(model_type, tokenizer):
    """The column is found whole in round 1 everywhere (per expert for MoE). Behind a post-MLP norm
    the outputs are normalised (no massive activation), so only the down projection search sees it."""
    model = tiny_model(model_type)
    e = 1 if model_type in MOE else None
    # gpt-oss clamps its gate and up at 7 (the feature reaches ~56, not 100) and its residual stream is
    # ~4x larger: larger weights keep every row over 1000x the median
    weights = [150.0, 130.0, 110.0] if model_type == "gpt_oss" else None
    planted = plant_input_feature(model, 2, 11, [3, 17, 29], expert=e, weights=weights)
    result = detect(wrap_model(model, tokenizer))
    assert {s.key: s.round for s in result.super_weights} == {s.key: 1 for s in planted}
    assert result.converged and result.rounds == 2
    if model_type in POST_MLP_NORM:
        assert result.massive == []
        return
    assert sorted(a.channel for a in result.massive) == [3, 17, 29]
    assert {(a.origin.kind, a.origin.column, tuple(a.origin.rows)) for a in result.massive} == \
        {(INPUT_FEATURE, 11, (3, 17, 29))}


def test_the_round_limit_is_reported_when_candidates_still_appear(tokenizer, tmp_path, capsys):
    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    result = detect(wrap_model(model, tokenizer), config=DetectConfig(max_rounds=1))
    assert result.rounds == 1 and not result.converged
    assert result.to_dict()["converged"] is False
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["detect", str(tmp_path), "--max-rounds", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "stopped at the round limit (1 rounds) while still finding new candidates" in out


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "opt"])
def test_attention_made(model_type, tokenizer):
    """The attention output projection's bias makes it (GPT-NeoX adds attention and MLP in parallel)."""
    model = tiny_model(model_type, **({"attention_bias": True} if model_type == "llama" else {}))
    plant_attention_activation(model, 1, 9)
    result = detect(wrap_model(model, tokenizer))
    (act,) = result.massive
    assert (act.channel, act.first_layer, act.origin.kind) == (9, 1, ATTENTION)
    assert act.origin.attention_share > 0.99 and act.origin.weights == []
    assert result.super_weights == []


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2"])
def test_embedding_made(model_type, tokenizer):
    model = tiny_model(model_type)
    plant_embedding_activation(model, BOS_ID, 9)
    result = detect(wrap_model(model, tokenizer))
    (act,) = result.massive
    assert (act.channel, act.first_layer, act.position, act.positions) == (9, -1, 0, [0])
    assert act.origin.kind == EMBEDDING and act.token == "<s>"


def test_mlp_made_by_many_weights(tokenizer):
    """An MLP output spread evenly over many products has no few weights to name."""
    model = tiny_model("llama")
    lm = wrap_model(model, tokenizer)
    cols = list(range(20))
    for c in cols:  # twenty equal weights from twenty equally large features into row 9
        plant_super_weight(model, 2, 9, c, weight=10.0, input_scale=25.0, view=lm.view)
    result = detect(lm)
    (act,) = [a for a in result.massive if a.channel == 9]
    assert act.first_layer == 2 and act.origin.kind == MLP and act.origin.weights == []
    assert act.origin.weight_share < 0.5


# --- does the model need it? --------------------------------------------------------------------

@pytest.mark.parametrize("plant, first_layer", [("norm", 1), ("embedding", -1), ("weight", 2)])
def test_ablation_removes_the_activation_from_its_first_layer_on(plant, first_layer, tokenizer):
    model = tiny_model("gemma3_text" if plant == "norm" else "llama")
    {"norm": lambda: plant_norm_activation(model, 9),
     "embedding": lambda: plant_embedding_activation(model, BOS_ID, 9),
     "weight": lambda: plant_super_weight(model, 2, 9, 11)}[plant]()
    lm = wrap_model(model, tokenizer)
    ids = tokenizer("hello there, world", return_tensors="pt").input_ids
    before = snapshot(model)
    rows = residual_scan(lm, ids, MassiveCriterion(100, 1000))
    assert any(c == 9 for _, c in rows[first_layer + 1].massive)
    with ablate_massive(lm.view, 9, first_layer, MassiveCriterion(100, 1000)) as log:
        ablated = residual_scan(lm, ids, MassiveCriterion(100, 1000))
    assert log.replaced > 0
    assert all(not any(c == 9 for _, c in r.massive) for r in ablated if r.layer >= first_layer)
    assert_clean(model, before)
    assert torch.equal(torch.tensor([r.value for r in residual_scan(lm, ids, MassiveCriterion(100, 1000))]),
                       torch.tensor([r.value for r in rows]))


def test_ablation_hooks_are_removed_on_error(tokenizer):
    model = tiny_model("llama")
    lm = wrap_model(model, tokenizer)
    with pytest.raises(RuntimeError):
        with ablate_massive(lm.view, 3, 1, MassiveCriterion(100, 1000)):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_verify_gives_every_massive_activation_a_verdict(tokenizer):
    model = tiny_model("gemma3_text")
    plant_norm_activation(model, 9)
    lm = wrap_model(model, tokenizer)
    run = run_detection(lm, verify_threshold=3.0, text=TEXT)
    (act,) = run.result.massive
    assert act.ppl_ratio > 0 and act.verdict == ("needed" if act.ppl_ratio >= 3 else "not needed")
    assert run.to_dict()["massive_activations"][0]["verdict"] == act.verdict
    assert run.verification.ablated_to.startswith("the channel's median")


# --- the words of the report --------------------------------------------------------------------

def test_a_super_activation_only_when_a_verified_super_weight_makes_it(tokenizer):
    from rich.console import Console

    from superweight.report.detect_tables import render_detection

    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    lm = wrap_model(model, tokenizer, ref="tiny")
    run = run_detection(lm, verify_threshold=3.0, text=TEXT)

    def text(run):
        console = Console(width=400, record=True, file=open("/dev/null", "w"))
        render_detection(console, lm, run)
        return console.export_text()

    sw = run.result.super_weights[0]
    sw.verdict = "super weight"
    assert "Super activation: channel 7" in text(run)
    sw.verdict = "spike only"
    out = text(run)
    assert "Super activation" not in out and "super activation(s)" not in out
    assert "Massive activation: channel 7" in out and "whose removal does not hurt" in out
    assert run.result.super_activations == [] and run.result.early == []


@pytest.mark.parametrize("demo, words", [
    ("demo-norm", ["made by the post-MLP norm's gain on channel 9", "not a single weight"]),
    ("demo-column", ["a few weights of one input feature: column 11 of layer 2",
                     "feeds rows 3, 17, 29, 40", "Massive activations: channels 3, 17, 29, 40"]),
    ("demo-attention", ["made by attention (100% of the layer's increment)"]),
    ("demo-embedding", ["already in the embedding output", "made by the token embedding of '<s>'"]),
])
def test_demo_models_as_a_user_runs_them(demo, words, tmp_path, capsys):
    from superweight.testing import main as testing_main

    assert testing_main([demo, str(tmp_path)]) == 0
    assert (tmp_path / "config.json").is_file()
    capsys.readouterr()
    assert main(["detect", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in out
    assert "Super activation" not in out  # nothing verified


def test_detect_json_carries_the_massive_activations(tmp_path, capsys):
    import json

    save_demo("demo-column", tmp_path)
    assert main(["detect", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["converged"] is True and payload["rounds"] == 2
    kinds = {a["origin"]["kind"] for a in payload["massive_activations"]}
    assert kinds == {INPUT_FEATURE}
    assert payload["massive_activations"][0]["origin"]["rows"] == [3, 17, 29, 40]
    assert len(payload["residual"]) == 7 and payload["residual"][0]["layer"] == -1
    assert payload["config"]["massive_ratio"] == 1000.0


def test_kinds_are_the_documented_words():
    assert (SUPER_WEIGHT, INPUT_FEATURE, NORM_GAIN) == ("super weight", "input feature", "post-MLP norm gain")


def test_a_layer_that_only_tips_a_large_value_over_is_said_to(tokenizer):
    """Layer 1 writes 600 on channel 9 (under a floor of 1000), layer 2 adds 500 more: the
    activation first counts as massive after layer 2, and the report says layer 2 adds under half."""
    from rich.console import Console

    from superweight.report.detect_tables import render_detection

    model = tiny_model("llama", attention_bias=True)
    plant_attention_activation(model, 1, 9, value=600.0)
    plant_attention_activation(model, 2, 9, value=500.0)
    lm = wrap_model(model, tokenizer)
    run = run_detection(lm, config=DetectConfig(massive_floor=1000))
    (act,) = run.result.massive
    assert act.first_layer == 2 and act.origin.kind == ATTENTION
    assert 0.3 < act.origin.increment / act.value < 0.5
    console = Console(width=400, record=True, file=open("/dev/null", "w"))
    render_detection(console, lm, run)
    text = console.export_text()
    assert "layer 2 adds 45% of the value; the rest comes in from earlier layers" in text


# --- review fixes: verification without the activation, several prompts, the trace ----------------

def test_an_activation_that_does_not_form_on_the_verification_text_gets_no_verdict(tokenizer):
    from superweight.report.detect_tables import detection_tables

    model = tiny_model("llama")
    plant_embedding_activation(model, ord("Z"), 9)  # only where the prompt has a "Z"
    lm = wrap_model(model, tokenizer)
    run = run_detection(lm, "Zebras graze.", verify_threshold=3.0, text=TEXT)  # TEXT has no "Z"
    (act,) = run.result.massive
    assert act.verdict is None and act.ppl_ratio is None
    assert run.verification.not_formed == [(9, -1)]
    notes = [n for t in detection_tables(lm.describe(), run) for n in t.notes]
    assert any("does not form on the verification text: no verdict" in n for n in notes)
    assert not any("not verified" in n for n in notes)


def test_a_prompt_counts_once_for_a_massive_activation(tokenizer):
    model = tiny_model("llama")
    plant_embedding_activation(model, ord("Z"), 9)
    result = detect(wrap_model(model, tokenizer), ["Zoo Zed", "Zap", "no capital zed here"])
    (act,) = result.massive
    assert act.prompts_found == 2  # two of the three prompts, counted once each (two positions in the first)
    assert result.super_activations == []  # an embedding, not a weight


def test_trace_refuses_a_detection_of_other_prompts_and_the_report_traces_the_first(tokenizer):
    from superweight.activations import trace
    from superweight.errors import SuperweightError
    from superweight.overview import OverviewConfig, gather

    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    lm = wrap_model(model, tokenizer)
    merged = detect(lm, ["one prompt", "another prompt"])
    with pytest.raises(SuperweightError, match="trace follows one prompt"):
        trace(lm, "one prompt", detection=merged)
    ov = gather(lm, OverviewConfig(prompts=("one prompt", "another prompt"), verify=False))
    assert ov.trace.prompt == "one prompt" and ov.trace.detection.prompts == ["one prompt"]


def test_trace_says_when_what_it_zeroes_does_not_make_the_activation(tokenizer):
    from superweight.activations import trace
    from superweight.report.detect_tables import trace_summary

    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    plant_embedding_activation(model, BOS_ID, 9, value=50000.0)  # the largest: made by the embedding
    t = trace(wrap_model(model, tokenizer), TEXT[:40])
    assert t.activation.channel == 9 and not t.removed_make_it and t.removed
    assert t.zeroed_label == "the early super weight candidates zeroed"
    assert "not what makes it, the early candidates" in trace_summary(t)


def test_verification_threshold_must_be_a_ratio_above_one(tmp_path, capsys):
    from superweight.errors import SuperweightError
    from superweight.verify import check_threshold

    for bad in (0, -1, 1, float("nan"), "x"):
        with pytest.raises(SuperweightError):
            check_threshold(bad)
    assert main(["detect", str(tmp_path / "missing"), "--verify", "--verify-threshold", "0"]) == 2
    assert "perplexity ratio above 1" in capsys.readouterr().err
