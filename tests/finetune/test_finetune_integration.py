"""A short guarded fine-tuning run on the real default model (a fresh copy: `default_lm` is shared)."""

from __future__ import annotations

import pytest
import torch

from superweight.finetune import FinetuneConfig, finetune, training_documents
from superweight.model import load_model
from superweight.records import SuperWeight

pytestmark = pytest.mark.integration

SUPER_WEIGHTS = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]


def test_guarded_full_finetune_keeps_super_weights_and_writes_a_checkable_checkpoint(tmp_path, fetched_data):
    lm = load_model("smollm2-135m", quiet=True)  # trained in place below: never the shared fixture
    before = [lm.view.down_proj(s.layer).matrix()[s.row, s.col].detach().clone() for s in SUPER_WEIGHTS]
    other = lm.view.down_proj(11).matrix()[507, 0].detach().clone()
    config = FinetuneConfig(method="full", guard="freeze", steps=3, seqlen=32, batch_size=2, lr=1e-4,
                            weight_decay=0.1, guard_every=1)
    r = finetune(lm, config, training_documents("ptb-train"), super_weights=SUPER_WEIGHTS, out=tmp_path / "tuned")
    for s, b in zip(SUPER_WEIGHTS, before):
        assert torch.equal(lm.view.down_proj(s.layer).matrix()[s.row, s.col], b)
    assert not torch.equal(lm.view.down_proj(11).matrix()[507, 0], other)  # the rest of the row trained
    # r.check is `check_models(original loaded again, the checkpoint loaded from disk)`
    assert [(row.original, row.other) for row in r.check] == [(float(b), float(b)) for b in before]
    assert all(row.survives and 0.5 < row.activation_ratio < 2 for row in r.check)
    tuned = load_model(str(tmp_path / "tuned"), quiet=True)
    for s, b in zip(SUPER_WEIGHTS, before):
        assert torch.equal(tuned.view.down_proj(s.layer).matrix()[s.row, s.col], b)
    assert r.drift.activation_rows()[0]["original"] > 1e4  # the ~2.4e4 super activation, watched
