"""Sparse Matrix Tuning on tiny planted models: block scores, the choice, and training only blocks."""

from __future__ import annotations

import pytest
import torch

from finetune_helpers import LR, WD, batches, planted_lm, snapshot
from superweight.errors import SuperweightError
from superweight.finetune.smt import (Block, SMTConfig, block_mean_abs, choose, plan_smt, score_blocks,
                                      sparse_tuning)
from superweight.model import wrap_model
from superweight.model.adapters import linear_matrix
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer


def test_block_mean_abs_with_ragged_edges():
    t = torch.arange(5 * 7, dtype=torch.float32).reshape(5, 7) - 17  # 5 x 7 with blocks of 3: 2 x 3 tiles
    got = block_mean_abs(t, 3)
    assert got.shape == (2, 3)
    for i, r in enumerate(range(0, 5, 3)):
        for j, c in enumerate(range(0, 7, 3)):
            assert float(got[i, j]) == pytest.approx(float(t[r:r + 3, c:c + 3].abs().mean()))
    assert torch.equal(block_mean_abs(t, 100), t.abs().double().mean().reshape(1, 1))


def _block(name, score, size=4, r=0):
    return Block(name, "v", 0, r, 0, size, 1, score)


def test_choose_takes_the_best_until_the_budget_and_at_least_one():
    cands = [_block("a", 1.0), _block("b", 3.0), _block("c", 2.0), _block("d", 0.5)]
    assert [b.name for b in choose(cands, 16, 0.5)] == ["b", "c"]  # 8 of 16 parameters
    assert [b.name for b in choose(cands, 16, 0.3)] == ["b", "c"]  # 4.8 needs two blocks (overshoot < a block)
    assert [b.name for b in choose(cands, 16, 0.01)] == ["b"]  # always one block
    assert len(choose(cands, 16, 1.0)) == 4
    tied = [_block("x", 1.0, r=4), _block("x", 1.0, r=0)]
    assert [b.row0 for b in choose(tied, 8, 0.5)] == [0]  # ties broken by position


def test_warm_up_picks_the_block_with_a_planted_gradient():
    """A loss term that pushes one block of layer 3's V projection makes it the choice."""
    lm, _ = planted_lm()
    v = lm.model.model.layers[3].self_attn.v_proj.weight  # [kv_heads·head_dim = 32, 64]

    def loss_fn(model, batch):
        return model(**batch).loss + 1e3 * v[16:32, 0:16].sum()

    before = snapshot(lm.model)
    plan = plan_smt(lm, batches(lm, 2), SMTConfig(block=16, warmup_steps=2, budget=1e-3), loss_fn=loss_fn)
    (best,) = plan.blocks
    assert (best.name, best.kind, best.layer, best.row0, best.col0) == (
        "model.layers.3.self_attn.v_proj", "v", 3, 16, 0)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # no update
    assert all(p.grad is None for p in lm.model.parameters())
    assert plan.placement()["blocks_per_kind"]["v"] == 1


def test_warm_up_picks_the_block_of_a_planted_super_weight_and_can_exclude_it():
    """The planted super weight's input feature is ~100 at every token: its column dominates."""
    lm, sw = planted_lm()
    config = SMTConfig(block=64, warmup_steps=2, budget=1e-6, kinds=("down",))
    plan = plan_smt(lm, batches(lm, 2), config, [sw])
    (best,) = plan.blocks
    assert best.layer == sw.layer and best.kind == "down" and best.contains(sw.row, sw.col)
    excluded = plan_smt(lm, batches(lm, 2), SMTConfig(block=64, warmup_steps=2, budget=1e-6, kinds=("down",),
                                                      exclude_super=True), [sw])
    assert not any(b.contains(sw.row, sw.col) and b.layer == sw.layer for b in excluded.blocks)
    assert [(b.layer, b.row0, b.col0) for b in excluded.excluded] == [(best.layer, best.row0, best.col0)]


def test_scores_cover_every_block_of_the_eligible_kinds():
    lm, _ = planted_lm()
    blocks, eligible = score_blocks(lm, batches(lm, 1), SMTConfig(block=48, warmup_steps=1, kinds=("q", "down")))
    # q: 64 x 64 -> 2 x 2 tiles (48 + 16); down: 64 x 128 -> 2 x 3 tiles (48, 48, 32); 6 layers
    assert len(blocks) == 6 * (4 + 6)
    assert eligible == 6 * (64 * 64 + 64 * 128)
    assert sum(b.size for b in blocks) == eligible
    assert {b.kind for b in blocks} == {"q", "down"}


def test_block_gradients_equal_the_full_weight_gradient():
    lm, _ = planted_lm()
    batch = batches(lm, 1)[0]
    plan = plan_smt(lm, [batch], SMTConfig(block=16, warmup_steps=1, budget=0.05))
    names = {b.name for b in plan.blocks}
    modules = dict(lm.view.decoder_linears())
    for p in lm.model.parameters():  # the reference: full weight gradients
        p.requires_grad_(False)
    for n in names:
        modules[n].weight.requires_grad_(True)
    lm.model(**batch).loss.backward()
    full = {n: modules[n].weight.grad.clone() for n in names}
    for n in names:
        modules[n].weight.grad = None
        modules[n].weight.requires_grad_(False)
    with sparse_tuning(lm, plan) as tuner:
        lm.model(**batch).loss.backward()
        for t in tuner.tuned.values():
            assert t.module.weight.grad is None  # no full-size gradient
            name = next(n for n in names if modules[n] is t.module)
            for b, p in zip(t.blocks, t.params):
                ref = full[name][b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols]
                torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-7)


def test_training_changes_only_the_chosen_blocks_bit_identical_elsewhere():
    lm, _ = planted_lm()
    data = batches(lm, 6)
    plan = plan_smt(lm, data[:2], SMTConfig(block=16, warmup_steps=2, budget=0.02))
    before = snapshot(lm.model)
    with sparse_tuning(lm, plan) as tuner:
        opt = torch.optim.AdamW(tuner.parameters(), lr=LR, weight_decay=WD)  # fused-free default
        assert sum(p.numel() for p in tuner.parameters()) == plan.trainable_params
        assert all(p.requires_grad is False for n, p in lm.model.named_parameters() if "smt_blocks" not in n)
        lm.model.train()
        for batch in data:
            lm.model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        state = [s for s in opt.state.values()]
        assert sum(s["exp_avg"].numel() for s in state) == plan.trainable_params  # optimizer state: blocks only
    lm.model.eval()
    after = lm.model.state_dict()
    assert set(after) == set(before)  # the block parameters are gone again
    chosen = {}
    for b in plan.blocks:
        chosen.setdefault(b.name + ".weight", []).append(b)
    changed = 0
    for key, old in before.items():
        new = after[key]
        if key not in chosen:
            assert torch.equal(new, old), key
            continue
        mask = torch.zeros_like(old, dtype=torch.bool)
        for b in chosen[key]:
            mask[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols] = True
        assert torch.equal(new[~mask], old[~mask]), key
        changed += int((new[mask] != old[mask]).sum())
    assert changed > 0.9 * plan.trainable_params


def test_fused_adamw_updates_reach_the_weights():
    """A fused optimizer updates in place without bumping version counters; the blocks still sync."""
    lm, _ = planted_lm()
    data = batches(lm, 2)
    plan = plan_smt(lm, data[:1], SMTConfig(block=16, warmup_steps=1, budget=0.01))
    b = plan.blocks[0]
    w = linear_matrix(dict(lm.view.decoder_linears())[b.name])
    before = w[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols].detach().clone()
    with sparse_tuning(lm, plan) as tuner:
        opt = torch.optim.AdamW(tuner.parameters(), lr=LR, fused=True)
        lm.model(**data[0]).loss.backward()
        opt.step()
        with torch.no_grad():
            lm.model(**data[1])  # the forward pass sees the updated block
        assert torch.equal(w[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols], tuner.tuned[b.name].params[0].detach())
    assert not torch.equal(w[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols], before)


def test_hooks_and_parameters_are_removed_on_an_exception():
    lm, _ = planted_lm()
    plan = plan_smt(lm, batches(lm, 1), SMTConfig(block=16, warmup_steps=1, budget=0.01))
    keys = set(lm.model.state_dict())
    flags = [p.requires_grad for p in lm.model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with sparse_tuning(lm, plan):
            raise RuntimeError("boom")
    assert set(lm.model.state_dict()) == keys
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_smt_on_gpt2_conv1d():
    """GPT-2's Conv1D stores W transposed; blocks are cut on W[out, in] all the same."""
    model = tiny_model("gpt2")
    plant_super_weight(model, 2, 7, 11)
    lm = wrap_model(model, tiny_tokenizer())
    data = batches(lm, 3)
    plan = plan_smt(lm, data[:1], SMTConfig(block=32, warmup_steps=1, budget=0.05))
    before = snapshot(lm.model)
    with sparse_tuning(lm, plan) as tuner:
        opt = torch.optim.SGD(tuner.parameters(), lr=0.5)
        lm.model.train()
        for batch in data:
            lm.model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    lm.model.eval()
    modules = dict(lm.view.decoder_linears())
    for b in plan.blocks:
        w = linear_matrix(modules[b.name])
        key = b.name + ".weight"
        old = before[key].T
        assert not torch.equal(w[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols], old[b.row0:b.row0 + b.rows,
                                                                                        b.col0:b.col0 + b.cols])
    changed = sum(int((lm.model.state_dict()[k] != v).sum()) for k, v in before.items())
    assert 0 < changed <= plan.trainable_params


@pytest.mark.parametrize("kwargs, match", [
    ({"block": 0}, "block size must be a positive integer"),
    ({"block": 2.5}, "block size must be a positive integer"),
    ({"block": True}, "block size must be a positive integer"),
    ({"budget": 0}, r"budget .* in \(0, 1\]"),
    ({"budget": 1.5}, r"budget .* in \(0, 1\]"),
    ({"budget": -0.1}, r"budget .* in \(0, 1\]"),
    ({"warmup_steps": 0}, "warm-up steps"),
    ({"kinds": ()}, "kinds"),
])
def test_bad_smt_config(kwargs, match):
    with pytest.raises(SuperweightError, match=match):
        SMTConfig(**kwargs)


def test_unknown_kind_is_refused():
    lm, _ = planted_lm()
    with pytest.raises(SuperweightError, match="unknown module kind.*qkv.*this model has: q, k, v"):
        plan_smt(lm, batches(lm, 1), SMTConfig(block=16, warmup_steps=1, kinds=("qkv",)))


def test_everything_excluded_is_an_error():
    lm, sw = planted_lm()
    with pytest.raises(SuperweightError, match="every SMT block holds a super weight"):
        plan_smt(lm, batches(lm, 1), SMTConfig(block=1024, warmup_steps=1, kinds=("down",), exclude_super=True),
                 [sw.__class__(l, sw.row, sw.col) for l in range(6)])
