"""finetune(): full, LoRA and SMT through the Trainer on a tiny planted Llama; checkpoint, check, errors."""

from __future__ import annotations

import json

import pytest
import torch

from finetune_helpers import LR, TEXTS, WD, planted_lm, snapshot, sw_value
from superweight.errors import SuperweightError
from superweight.finetune import FinetuneConfig, SMTConfig, finetune, training_documents
from superweight.finetune.lora import LoRASettings
from superweight.finetune.train import MANIFEST_NAME
from superweight.model import load_model
from superweight.report.finetune_plots import plot_drift, plot_smt_placement

SMT = SMTConfig(block=16, warmup_steps=2, budget=0.05, kinds=("v", "down"))


def run(method: str, guard: str, tmp_path=None, **kwargs):
    lm, sw = planted_lm()
    before = sw_value(lm, sw)
    config = FinetuneConfig(method=method, guard=guard, steps=3, lr=LR, weight_decay=WD, batch_size=2, seqlen=32,
                            guard_every=1, smt=SMT, lora=LoRASettings(r=4), **kwargs)
    out = tmp_path / f"{method}-{guard}" if tmp_path is not None else None
    result = finetune(lm, config, TEXTS, super_weights=[sw], out=out)
    return lm, sw, before, result


@pytest.mark.parametrize("method", ["full", "lora", "smt"])
def test_freeze_keeps_super_weights_bit_identical_in_the_saved_checkpoint(method, tmp_path):
    lm, sw, before, r = run(method, "freeze", tmp_path)
    assert torch.equal(sw_value(lm, sw), before)
    tuned = load_model(r.out, quiet=True)
    assert torch.equal(sw_value(tuned, sw), before)  # what was saved, read back from disk
    (row,) = r.check
    assert row.other == row.original and row.rel_error == 0.0
    assert r.drift.weight_rows()[0]["bit_identical"]
    assert len(r.train.losses) == 3 and r.train.trainable_params > 0
    manifest = json.loads((tmp_path / f"{method}-freeze" / MANIFEST_NAME).read_text())
    assert manifest["config"]["method"] == method and manifest["kind"] == "finetuned-model"
    assert set(tuned.model.state_dict()) == set(lm.model.state_dict())  # a plain checkpoint: no adapter keys
    assert not lm.model.training
    assert lm.model.config.use_cache and tuned.model.config.use_cache  # the Trainer's switch-off is undone
    assert not hasattr(lm.model, "_is_accelerate_prepared")


@pytest.mark.parametrize("method", ["full", "lora", "smt"])
def test_without_a_guard_the_super_weight_changes(method):
    lm, sw, before, r = run(method, "none")
    after = sw_value(lm, sw)
    assert not torch.equal(after, before)
    assert r.drift.weight_rows()[0]["final"] == float(after)
    assert r.check[0].other == float(after)
    if method == "smt":  # the planted weight's block is the one SMT trains first
        assert any(b.layer == sw.layer and b.kind == "down" and b.contains(sw.row, sw.col) for b in r.smt.blocks)


def test_the_model_trains():
    """Full fine-tuning with a sane learning rate lowers the loss on the training text."""
    lm, sw = planted_lm()
    r = finetune(lm, FinetuneConfig(steps=8, lr=3e-3, batch_size=2, seqlen=32), TEXTS, super_weights=[sw],
                 check=False)
    assert r.train.losses[-1] < r.train.losses[0]


def test_lora_records_the_effective_value_and_restores_after_merge():
    lm, sw, before, r = run("lora", "freeze")
    phases = [s.phase for s in r.drift.snapshots]
    assert phases[0] == "start" and phases[-1] == "merged"
    during = [s.weights[0] for s in r.drift.snapshots if s.phase in ("train", "end")]
    assert any(v != float(before) for v in during)  # W + B·A moved while training
    assert r.drift.snapshots[-1].weights[0] == float(before)
    assert any("LoRA" in n for n in r.notes)


def test_clip_bounds_the_total_change_for_every_method():
    for method in ("full", "lora", "smt"):
        lm, sw, before, r = run(method, "clip", max_step_rel=1e-3, max_total_rel=2e-3)
        assert abs(float(sw_value(lm, sw)) - float(before)) <= 2e-3 * abs(float(before)), method


def test_smt_placement_and_plots(tmp_path):
    lm, sw, before, r = run("smt", "freeze")
    placement = r.smt.placement()
    assert placement["kinds"] == ["v", "down"] and placement["layers"] == list(range(6))
    assert sum(map(sum, placement["blocks"])) == len(r.smt.blocks)
    assert r.smt.trainable_params == r.train.trainable_params
    png = plot_smt_placement(placement, tmp_path / "smt.png")
    drift = plot_drift(r.drift.to_dict(), tmp_path / "drift.png")
    assert png.stat().st_size > 1000 and drift.stat().st_size > 1000
    d = r.to_dict()
    json.dumps(d)  # JSON-able
    assert d["smt"]["placement"] == placement and d["config"]["smt"]["block"] == 16


def test_guard_none_without_super_weights_trains_and_skips_check():
    lm, _ = planted_lm()
    r = finetune(lm, FinetuneConfig(guard="none", steps=1, batch_size=2, seqlen=32), TEXTS, super_weights=[])
    assert r.check is None and any("check skipped" in n for n in r.notes)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": -3}, "steps must be a positive integer"),
    ({"method": "qlora"}, "unknown fine-tuning method 'qlora'; choose one of full, lora, smt"),
    ({"guard": "lock"}, "unknown guard 'lock'; choose one of freeze, clip, none"),
    ({"lr": 0}, "learning rate"),
    ({"seqlen": 1}, "seqlen must be at least 2"),
    ({"batch_size": 0}, "batch size"),
    ({"smt": {"budget": 2}}, "budget"),
    ({"smt": {"block": 0}}, "block size"),
    ({"lora": {"r": 0}}, "LoRA rank"),
    ({"lr_scheduler": "zigzag"}, "unknown learning-rate scheduler 'zigzag'; choose one of linear, cosine"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(SuperweightError, match=match):
        FinetuneConfig(**kwargs)


@pytest.mark.parametrize("texts, match", [
    ([], "empty"),
    (["   ", "\n"], "empty"),
    ("just a string", "list of text documents"),
])
def test_empty_corpus(texts, match):
    lm, sw = planted_lm()
    with pytest.raises(SuperweightError, match=match):
        finetune(lm, FinetuneConfig(steps=1), texts, super_weights=[sw])


def test_missing_or_unknown_corpus(tmp_path):
    with pytest.raises(SuperweightError, match="does not exist"):
        training_documents(tmp_path / "missing.txt")
    with pytest.raises(SuperweightError, match="unknown training corpus 'nonesuch'"):
        training_documents("nonesuch")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SuperweightError, match="empty"):
        training_documents(tmp_path / "empty.txt")
    (tmp_path / "docs.jsonl").write_text('{"text": "hello world"}\n{"text": "again"}\n')
    assert training_documents(tmp_path / "docs.jsonl") == ["hello world", "again"]


def test_guard_without_super_weights_is_an_error_before_training():
    lm, _ = planted_lm()
    before = snapshot(lm.model)
    with pytest.raises(SuperweightError, match="no super weights to guard"):
        finetune(lm, FinetuneConfig(guard="freeze", steps=1), TEXTS, super_weights=[])
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())


def test_output_folder_is_checked_before_training(tmp_path):
    lm, sw = planted_lm()
    before = snapshot(lm.model)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(SuperweightError, match="not empty; add --force"):
        finetune(lm, FinetuneConfig(steps=1), TEXTS, super_weights=[sw], out=tmp_path / "busy")
    (tmp_path / "file").write_text("")
    with pytest.raises(SuperweightError, match="not a directory"):
        finetune(lm, FinetuneConfig(steps=1), TEXTS, super_weights=[sw], out=tmp_path / "file")
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert (tmp_path / "busy" / "x").read_text() == "keep me"


def test_never_writes_into_the_models_own_folder(tmp_path):
    lm, sw = planted_lm()
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    local = load_model(str(tmp_path / "model"), quiet=True)
    with pytest.raises(SuperweightError, match="model's own files"):
        finetune(local, FinetuneConfig(steps=1), TEXTS, super_weights=[sw], out=tmp_path / "model" / "tuned")


def test_force_replaces_and_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    lm, sw, _, r = run("full", "freeze", tmp_path)
    target = tmp_path / "full-freeze"
    lm2, sw2 = planted_lm()
    r2 = finetune(lm2, FinetuneConfig(steps=1, batch_size=2, seqlen=32), TEXTS, super_weights=[sw2], out=target,
                  force=True, check=False)
    assert r2.out == str(target) and (target / "model.safetensors").is_file()

    import superweight.model.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    lm3, sw3 = planted_lm()
    monkeypatch.setattr(checkpoint, "write_json", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        finetune(lm3, FinetuneConfig(steps=1, batch_size=2, seqlen=32), TEXTS, super_weights=[sw3],
                 out=tmp_path / "new", check=False)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_lora_share_counts_rank_times_in_plus_out():
    from superweight.finetune.lora import lora_share

    lm, _ = planted_lm()
    # per layer: q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    total = sum(a * b for a, b in shapes)
    assert lora_share(lm, LoRASettings(r=4)) == pytest.approx(sum(4 * (a + b) for a, b in shapes) / total)
    assert lora_share(lm, LoRASettings(r=4, kinds=("v",))) == pytest.approx(4 * (32 + 64) / total)


def test_lora_runs_are_reproducible_whatever_the_global_random_state():
    """peft draws the adapters' initialisation from torch's RNG, which every process seeds differently."""
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        lm, sw = planted_lm()
        finetune(lm, FinetuneConfig(method="lora", guard="none", steps=2, lr=LR, batch_size=2, seqlen=32,
                                    lora=LoRASettings(r=4)), TEXTS, super_weights=[sw], check=False)
        states.append(snapshot(lm.model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("method", ["full", "lora", "smt"])
def test_an_interrupt_during_training_leaves_no_output_and_a_clean_model(method, tmp_path, monkeypatch):
    """Ctrl-C in the middle of training: no output folder, no temporary folder, and the model has no
    adapters, SMT blocks or hooks left on it (only the steps already taken)."""
    import superweight.finetune.train as train
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(train, "step_timer", Interrupt)
    lm, sw = planted_lm()
    keys, flags = set(lm.model.state_dict()), {n: p.requires_grad for n, p in lm.model.named_parameters()}
    config = FinetuneConfig(method=method, steps=4, lr=LR, batch_size=2, seqlen=32, smt=SMT, lora=LoRASettings(r=4))
    with pytest.raises(KeyboardInterrupt):
        finetune(lm, config, TEXTS, super_weights=[sw], out=tmp_path / "tuned")
    assert list(tmp_path.iterdir()) == []
    assert set(lm.model.state_dict()) == keys and not lm.model.training
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
