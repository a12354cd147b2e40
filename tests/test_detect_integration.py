"""Detection on the real default model (SmolLM2-135M-Instruct, the packaged Q4_1 GGUF)."""

from __future__ import annotations

import pytest
import torch

from superweight.activations import trace
from superweight.cli import main
from superweight.detect import run_detection
from superweight.interventions import prune
from superweight.verify import text_perplexity, verification_text

pytestmark = pytest.mark.integration

EARLY = {(11, 507, 1229), (11, 507, 1487)}


def test_the_massive_activation_its_super_weights_and_the_late_spikes(default_lm):
    """The findings: one massive activation (channel 507, first token) that first appears after
    layer 11, made by the two weights of row 507 there; both verified; the late-layer spikes
    (layers 28-29) reported apart; the model needs the activation."""
    before = {k: v.clone() for k, v in default_lm.model.state_dict().items()}
    run = run_detection(default_lm, verify_threshold=3.0)
    result = run.result

    (act,) = result.massive
    assert (act.channel, act.position, act.first_layer) == (507, 0, 11) and act.last_layer >= 20
    assert act.origin.kind == "super weight" and {w.coord for w in act.origin.weights} == EARLY
    assert act.origin.mlp_share > 0.99 and act.ratio > 1000
    assert {s.coord for s in result.early} == EARLY
    assert all(s.verdict == "super weight" for s in result.early)
    assert result.late and {s.layer for s in result.late} <= {28, 29}
    assert all(s.verdict == "spike only" for s in result.late)
    assert result.converged
    assert act.verdict == "needed" and act.ppl_ratio > 100
    assert [(a.layer, a.channel, a.position) for a in result.super_activations] == [(11, 507, 0)]
    v = run.verification
    assert v.ppl_all_pruned > 100 * v.ppl  # both zeroed: a large perplexity ratio
    assert run.comparison.verdict == "agrees with the catalog"
    assert all(torch.equal(before[k], t) for k, t in default_lm.model.state_dict().items())


def test_zeroing_the_detected_weights_hurts(default_lm):
    from superweight.detect import detect

    result = detect(default_lm)
    text, _ = verification_text()
    ids = default_lm.tokenizer(text, return_tensors="pt").input_ids[:, :512]
    base = text_perplexity(default_lm, ids)
    with prune(default_lm.view, result.early):
        pruned = text_perplexity(default_lm, ids)
    assert pruned > 100 * base


def test_massive_activation_persists_through_the_residual_stream(default_lm):
    t = trace(default_lm)
    assert (t.activation.first_layer, t.activation.channel, t.activation.position) == (11, 507, 0)
    assert t.first_layer == 11 and t.last_layer >= 20
    after = {r.layer: r for r in t.pruned}
    assert max(abs(r.value) for r in t.pruned) < 0.5 * abs(t.activation.value)  # zeroed: it never forms
    assert abs(after[15].at) < 1000


def test_cli_default_model(capsys):
    assert main(["detect"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(11, 507, 1229)" in out and "agrees with the catalog" in out
    assert "Massive activation: channel 507, token 'Apple' (position 0), first after layer 11" in out
    assert "Super activation" not in out  # not verified here
