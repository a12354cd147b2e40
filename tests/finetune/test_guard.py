"""SuperWeightGuard on a tiny planted Llama: freeze, clip, monitor; plain loop vs Trainer callback."""

from __future__ import annotations

import pytest
import torch

from finetune_helpers import LR, WD, batches, planted_lm, sw_value
from superweight.errors import SuperweightError
from superweight.finetune import GuardConfig, SuperWeightGuard
from superweight.finetune.data import BlockDataset
from superweight.finetune.guard import entry_slot
from superweight.finetune.train import FinetuneConfig, make_trainer
from superweight.model import wrap_model
from superweight.records import SuperWeight
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer


def train_plain(lm, guard, steps: int = 4, lr: float = LR, wd: float = WD, data=None):
    """A plain PyTorch loop: every parameter trained with AdamW, the guard on the optimizer."""
    opt = torch.optim.AdamW(lm.model.parameters(), lr=lr, weight_decay=wd, foreach=False)
    lm.model.train()
    with guard.attach(opt):
        for batch in data or batches(lm, steps):
            lm.model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    lm.model.eval()


def test_freeze_keeps_the_super_weight_bit_identical():
    lm, sw = planted_lm()
    before = sw_value(lm, sw)
    other_before = lm.view.down_proj(sw.layer).matrix()[sw.row, sw.col + 1].detach().clone()
    guard = SuperWeightGuard(lm, [sw], GuardConfig(mode="freeze", every=1))
    train_plain(lm, guard)
    after = sw_value(lm, sw)
    assert torch.equal(after, before)  # bit-identical
    assert after.view(torch.int32) == before.view(torch.int32)
    assert not torch.equal(lm.view.down_proj(sw.layer).matrix()[sw.row, sw.col + 1], other_before)  # the rest trained
    rows = guard.report().weight_rows()
    assert rows[0]["bit_identical"] and rows[0]["rel_change"] == 0.0
    assert not [f for f in guard.report().flags if f.what == "weight"]


def test_without_a_guard_the_super_weight_moves_and_is_flagged():
    lm, sw = planted_lm()
    before = float(sw_value(lm, sw))
    guard = SuperWeightGuard(lm, [sw], GuardConfig(mode="monitor", every=1))
    train_plain(lm, guard)
    after = float(sw_value(lm, sw))
    assert after != before
    assert guard.report().weight_rows()[0]["final"] == after
    flags = [f for f in guard.report().flags if f.what == "weight"]
    assert flags and flags[-1].rel_change == pytest.approx(abs(after - before) / abs(before))


def test_weight_decay_alone_moves_a_super_weight_whose_gradient_is_zero():
    """Why freeze must restore values, not only zero gradients: AdamW decays the weight anyway."""
    lm, sw = planted_lm()
    before = float(sw_value(lm, sw))
    slot = entry_slot(lm.view.down_proj(sw.layer), sw.row, sw.col)
    opt = torch.optim.AdamW(lm.model.parameters(), lr=LR, weight_decay=WD, foreach=False)
    mask = slot.tensor.register_hook(lambda g: g.reshape(-1).index_fill(0, torch.tensor([slot.index]), 0).view_as(g))
    try:
        for batch in batches(lm, 3):
            lm.model(**batch).loss.backward()
            assert float(slot.tensor.grad.reshape(-1)[slot.index]) == 0.0
            opt.step()
            opt.zero_grad()
    finally:
        mask.remove()
    assert float(sw_value(lm, sw)) == pytest.approx(before * (1 - LR * WD) ** 3, rel=1e-5)


def test_freeze_zeroes_the_gradient_while_attached():
    lm, sw = planted_lm()
    guard = SuperWeightGuard(lm, [sw], GuardConfig(mode="freeze"))
    slot = entry_slot(lm.view.down_proj(sw.layer), sw.row, sw.col)
    batch = batches(lm, 1)[0]
    with guard.attach():
        lm.model(**batch).loss.backward()
    grad = slot.tensor.grad.reshape(-1)
    assert float(grad[slot.index]) == 0.0 and float(grad.abs().sum()) > 0
    lm.model.zero_grad()
    lm.model(**batch).loss.backward()  # the hook is gone after the block
    assert float(slot.tensor.grad.reshape(-1)[slot.index]) != 0.0


def test_clip_bounds_each_step_and_the_total():
    lm, sw = planted_lm()
    config = GuardConfig(mode="clip", every=1, max_step_rel=1e-3, max_total_rel=2.5e-3)
    guard = SuperWeightGuard(lm, [sw], config)
    train_plain(lm, guard, steps=5)
    orig = float(guard.original[(sw.layer, sw.row, sw.col, None)])
    values = [s.weights[0] for s in guard.report().snapshots]
    assert values[0] == orig
    for a, b in zip(values, values[1:]):
        assert abs(b - a) <= config.max_step_rel * abs(orig)
    assert all(abs(v - orig) <= config.max_total_rel * abs(orig) for v in values)
    assert abs(values[-1] - orig) == pytest.approx(config.max_total_rel * abs(orig), rel=1e-4)  # it was clamped
    assert float(sw_value(lm, sw)) == values[-1]


def test_clip_moves_to_the_bound_even_when_the_bound_is_not_representable():
    """50 · (1 − 1e-4) = 49.995 has no float32: the clamp takes the nearest float32 inside the bound
    (it once fell back to the previous value, so the weight never moved)."""
    lm, sw = planted_lm()
    config = GuardConfig(mode="clip", every=1, max_step_rel=1e-4, max_total_rel=1.5e-4)
    guard = SuperWeightGuard(lm, [sw], config)
    train_plain(lm, guard, steps=3)
    orig = float(guard.original[(sw.layer, sw.row, sw.col, None)])
    values = [s.weights[0] for s in guard.report().snapshots]
    ulp = torch.finfo(torch.float32).eps * abs(orig)  # float32 spacing near the value
    assert abs(values[1] - orig) == pytest.approx(1e-4 * abs(orig), abs=ulp)  # moved by the step bound
    assert abs(values[-1] - orig) == pytest.approx(1.5e-4 * abs(orig), abs=ulp)  # then the total bound
    assert all(abs(v - orig) <= 1.5e-4 * abs(orig) for v in values)


def test_records_every_n_steps_and_the_super_activation():
    lm, sw = planted_lm()
    guard = SuperWeightGuard(lm, [sw], GuardConfig(mode="monitor", every=2))
    train_plain(lm, guard, steps=5)
    report = guard.report()
    assert [(s.step, s.phase) for s in report.snapshots] == [(0, "start"), (2, "train"), (4, "train"), (5, "end")]
    (site,) = report.sites
    assert (site.layer, site.row) == (sw.layer, sw.row)
    assert abs(report.snapshots[0].activations[0]) > 1000  # the planted ~50 × 100
    d = report.to_dict()
    assert d["activations"][0]["original"] == report.snapshots[0].activations[0]
    assert d["config"]["mode"] == "monitor"


@pytest.mark.parametrize("mode", ["freeze", "clip"])
def test_trainer_callback_and_plain_loop_give_the_same_result(mode):
    """The same optimizer, data and steps through Trainer + callback and a plain loop + attach():
    identical snapshots and identical weights, bit for bit."""
    config = GuardConfig(mode=mode, every=1)
    lm_a, sw_a = planted_lm()
    guard_a = SuperWeightGuard(lm_a, [sw_a], config)
    first = batches(lm_a, 1)  # one batch of two blocks, seen at every step (the Trainer's whole data set)
    train_plain(lm_a, guard_a, data=first * 4)

    lm_b, sw_b = planted_lm()
    guard_b = SuperWeightGuard(lm_b, [sw_b], config)
    opt = torch.optim.AdamW(lm_b.model.parameters(), lr=LR, weight_decay=WD, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    blocks = first[0]["input_ids"]
    run = FinetuneConfig(steps=4, batch_size=2, seqlen=32, lr=LR, weight_decay=WD, max_grad_norm=0.0)
    make_trainer(lm_b.model, run, BlockDataset(blocks), [guard_b.callback()], optimizers=(opt, sched)).train()

    snaps_a, snaps_b = guard_a.report().snapshots, guard_b.report().snapshots
    assert [(s.step, s.weights, s.activations) for s in snaps_a] == [(s.step, s.weights, s.activations)
                                                                      for s in snaps_b]
    for (name, pa), pb in zip(lm_a.model.named_parameters(), lm_b.model.parameters()):
        assert torch.equal(pa, pb), name


def test_guard_needs_super_weights_unless_monitoring():
    lm, _ = planted_lm()
    with pytest.raises(SuperweightError, match="no super weights to guard"):
        SuperWeightGuard(lm, [], GuardConfig(mode="freeze"))
    with pytest.raises(SuperweightError, match="no super weights to guard"):
        SuperWeightGuard(lm, [], GuardConfig(mode="clip"))
    guard = SuperWeightGuard(lm, [], GuardConfig(mode="monitor"))
    train_plain(lm, guard, steps=1)
    report = guard.report()
    assert report.weight_rows() == [] and report.sites == []
    assert [(s.step, s.weights, s.activations) for s in report.snapshots] == [(0, [], []), (1, [], [])]


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "lock"}, "unknown guard mode"),
    ({"every": 0}, "positive integer"),
    ({"max_step_rel": -1.0}, "max-step-rel"),
    ({"max_total_rel": float("nan")}, "max-total-rel"),
    ({"probe": "  "}, "probe prompt is empty"),
])
def test_bad_guard_config(kwargs, match):
    with pytest.raises(SuperweightError, match=match):
        GuardConfig(**kwargs)


def test_out_of_range_coordinates_are_refused():
    lm, _ = planted_lm()
    with pytest.raises(SuperweightError, match="outside the down projection"):
        SuperWeightGuard(lm, [SuperWeight(2, 7, 10_000)])


def test_guard_works_on_a_transposed_conv1d_layout():
    """GPT-2 stores W transposed; the guard finds the entry through the view's strides."""
    model = tiny_model("gpt2")
    sw = plant_super_weight(model, 2, 7, 11)
    lm = wrap_model(model, tiny_tokenizer())
    before = sw_value(lm, sw)
    slot = entry_slot(lm.view.down_proj(2), 7, 11)
    assert torch.equal(slot.read(), before)
    guard = SuperWeightGuard(lm, [sw], GuardConfig(mode="freeze", every=1))
    train_plain(lm, guard, steps=2)
    assert torch.equal(sw_value(lm, sw), before)
