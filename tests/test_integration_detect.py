"""Detection on the real default model (SmolLM2-135M-Instruct, the packaged Q4_1 GGUF)."""

from __future__ import annotations

import pytest
import torch

from superweight.activations import trace
from superweight.cli import main
from superweight.detect import detect
from superweight.interventions import prune
from superweight.verify import text_perplexity, verification_text, verify

pytestmark = pytest.mark.integration


def test_detects_a_super_weight_that_matters(default_lm):
    before = {k: v.clone() for k, v in default_lm.model.state_dict().items()}
    result = detect(default_lm)
    coords = [s.coord for s in result.early]
    assert (11, 507, 1229) in coords
    text, _ = verification_text()
    ids = default_lm.tokenizer(text, return_tensors="pt").input_ids[:, :512]
    base = text_perplexity(default_lm, ids)
    with prune(default_lm.view, result.early):
        pruned = text_perplexity(default_lm, ids)
    assert pruned > 3 * base
    v = verify(default_lm, result.super_weights)
    top = next(s for s in result.early if s.coord == (11, 507, 1229))
    assert top.verdict == "super weight" and v.ppl_all_pruned > 3 * v.ppl
    assert all(torch.equal(before[k], v) for k, v in default_lm.model.state_dict().items())


def test_super_activation_persists_through_the_residual_stream(default_lm):
    t = trace(default_lm)
    assert (t.activation.layer, t.activation.channel, t.activation.position) == (11, 507, 0)
    assert t.first_layer == 11 and t.last_layer >= 20


def test_cli_default_model(capsys):
    assert main(["detect"]) == 0
    out = capsys.readouterr().out
    assert "(11, 507, 1229)" in out and "agrees with the catalog" in out
