"""Interventions on tiny planted models: each edit touches exactly what it names, and every
context restores the exact original bits on exit, also when the body raises."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.interventions import (measure_super_activations, prune, prune_top_k,
                                       restore_super_activation, scale, top_k_weights)
from superweight.model import wrap_model
from superweight.model.hooks import observe_down_projs
from superweight.records import SuperWeight
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

LAYER, ROW, COL, SW_VALUE, INPUT = 2, 17, 45, 50.0, 300.0
SW = SuperWeight(LAYER, ROW, COL)
TEXT = "The quick brown fox. It jumps over the lazy dog, and again."


@pytest.fixture(scope="module")
def lm():
    """A tiny Llama with a super weight planted at (2, 17, 45): its super activation (~1.5e4) on
    channel 17 at every token, from input feature 45 (~300)."""
    model = tiny_model("llama")
    plant_super_weight(model, LAYER, ROW, COL, weight=SW_VALUE, input_scale=INPUT)
    return wrap_model(model, tiny_tokenizer(), ref="planted-llama")


def snapshot(lm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def changed(lm, before) -> dict[str, torch.Tensor]:
    """name → flat indices of the entries that differ from `before`."""
    out = {}
    for n, p in lm.model.named_parameters():
        diff = (p.detach() != before[n]).flatten().nonzero().flatten()
        if diff.numel():
            out[n] = diff
    return out


def assert_identical(lm, before) -> None:
    for n, p in lm.model.named_parameters():
        assert torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)), n


DOWN = f"model.layers.{LAYER}.mlp.down_proj.weight"
SW_FLAT = ROW * 128 + COL


def test_prune_zeroes_exactly_the_super_weight(lm):
    before = snapshot(lm)
    with prune(lm.view, [SW]):
        assert {n: i.tolist() for n, i in changed(lm, before).items()} == {DOWN: [SW_FLAT]}
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == 0.0
    assert_identical(lm, before)


@pytest.mark.parametrize("factor", [0.0, 0.5, 2, 3.0, "1.5"])
def test_scale_multiplies_exactly_the_super_weight(lm, factor):
    before = snapshot(lm)
    with scale(lm.view, [(LAYER, ROW, COL)], factor):
        diff = changed(lm, before)
        assert set(diff) <= {DOWN}
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == pytest.approx(SW_VALUE * float(factor))
    assert_identical(lm, before)


@pytest.mark.parametrize("factor", ["abc", None, float("nan"), float("inf"), "", True])
def test_scale_rejects_a_factor_that_is_not_a_number(lm, factor):
    before = snapshot(lm)
    with pytest.raises(SuperweightError, match="factor"):
        with scale(lm.view, [SW], factor):
            pass
    assert_identical(lm, before)


def test_coordinates_become_records_validated_once(lm, monkeypatch):
    """`ModelView.check` is the one validation: tuples become `SuperWeight` records (records pass
    through as they are), and a coordinate already checked against this model is not checked again."""
    rec = SuperWeight(LAYER, 1, 2)
    out = lm.view.check([rec, (LAYER, 3, 4), [LAYER, 5, 6, None]])
    assert out[0] is rec and [s.key for s in out[1:]] == [(LAYER, 3, 4, None), (LAYER, 5, 6, None)]
    calls = []
    real = type(lm.view).down_proj
    monkeypatch.setattr(type(lm.view), "down_proj", lambda self, *a: calls.append(a) or real(self, *a))
    lm.view.check([(LAYER, 3, 4)])
    assert calls == []  # already validated
    lm.view.check([(LAYER, 7, 8)])
    assert len(calls) == 1
    with pytest.raises(SuperweightError, match=r"a coordinate is \(layer, row, col\)"):
        lm.view.check([(1, 2)])


@pytest.mark.parametrize("coord", [(LAYER, 64, 0), (LAYER, 0, 128), (6, 0, 0), (-1, 0, 0), (LAYER, -1, 3)])
def test_coordinates_outside_the_model_are_refused(lm, coord):
    with pytest.raises(SuperweightError, match="out of range|outside"):
        lm.view.check([coord])
    for ctx in (lambda: prune(lm.view, [coord]), lambda: scale(lm.view, [coord], 2.0),
                lambda: prune_top_k(lm.view, 10, exclude=[coord]),
                lambda: restore_super_activation(lm.view, [coord], positions=[0])):
        with pytest.raises(SuperweightError):
            with ctx():
                pass


def test_prune_top_k_zeroes_the_k_largest_other_weights(lm):
    k = 500
    before = snapshot(lm)
    linears = {f"{n}.weight" for n, _ in lm.view.decoder_linears()}
    with prune_top_k(lm.view, k, exclude=[SW]) as info:
        diff = changed(lm, before)
        assert set(diff) <= linears
        assert sum(i.numel() for i in diff.values()) == k == sum(info.per_module.values())
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == SW_VALUE  # excluded
        pruned = torch.cat([before[n].flatten()[i].abs() for n, i in diff.items()])
        assert (pruned > 0).all()
        # brute force: every weight left in place is no larger than the smallest one pruned
        kept_max = max(float(torch.where(p.detach() == 0, torch.zeros(()), before[n].abs()).flatten()
                             .sort().values[-2 if n == DOWN else -1])
                       for n, p in lm.model.named_parameters() if n in linears)
        assert kept_max <= pruned.min().item() == info.smallest
    assert_identical(lm, before)


def test_prune_top_k_without_exclusion_takes_the_super_weight_first(lm):
    before = snapshot(lm)
    with prune_top_k(lm.view, 1) as info:
        assert {n: i.tolist() for n, i in changed(lm, before).items()} == {DOWN: [SW_FLAT]}
        assert info.largest == SW_VALUE
    assert_identical(lm, before)


def test_prune_top_k_on_a_subset_of_modules(lm):
    before = snapshot(lm)
    with prune_top_k(lm.view, 50, exclude=[SW], modules=["*.mlp.down_proj"]):
        diff = changed(lm, before)
        assert diff and all(n.endswith("mlp.down_proj.weight") for n in diff)
    assert_identical(lm, before)
    with pytest.raises(SuperweightError, match="no decoder linear layer matches"):
        top_k_weights(lm.view, 5, modules=["*.nothing"])


@pytest.mark.parametrize("k", [0, -3, 2.5, "7000"])
def test_prune_top_k_rejects_a_bad_k(lm, k):
    with pytest.raises(SuperweightError, match="K must be"):
        with prune_top_k(lm.view, k):
            pass


def test_prune_top_k_refuses_k_larger_than_the_model(lm):
    before = snapshot(lm)
    total = sum(m.weight.numel() for _, m in lm.view.decoder_linears())
    with pytest.raises(SuperweightError, match="larger than the"):
        with prune_top_k(lm.view, total, exclude=[SW]):  # one too many: the SW is excluded
            pass
    assert_identical(lm, before)
    with prune_top_k(lm.view, total - 1, exclude=[SW]):
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == SW_VALUE
    assert_identical(lm, before)


def contexts(lm):
    return [lambda: prune(lm.view, [SW]), lambda: scale(lm.view, [SW], 3.0),
            lambda: prune_top_k(lm.view, 300, exclude=[SW]),
            lambda: restore_super_activation(lm.view, [SW], positions=[0])]


@pytest.mark.parametrize("i", range(4))
def test_every_context_restores_bit_identical_weights_when_the_body_raises(lm, i):
    before = snapshot(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with contexts(lm)[i]():
            assert changed(lm, before)
            raise RuntimeError("boom")
    assert_identical(lm, before)
    assert not any(m._forward_hooks for m in lm.model.modules())


def test_contexts_compose_and_unwind_exactly(lm):
    before = snapshot(lm)
    with pytest.raises(KeyError):
        with ExitStack() as stack:
            for make in contexts(lm):
                stack.enter_context(make())
            stack.enter_context(scale(lm.view, [SW], 5.0))
            ids = lm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
            lm.model(input_ids=ids)
            raise KeyError("x")
    assert_identical(lm, before)


def down_outputs(lm, text=TEXT) -> dict[int, torch.Tensor]:
    """Every down projection's output [tokens, hidden] on `text`."""
    out = {}
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad(), observe_down_projs(lm.view, lambda p, x, y, pos: out.__setitem__(p.layer, y.clone())):
        lm.model(input_ids=ids)
    return out


def test_restore_sa_reproduces_the_unpruned_activation_exactly_and_nothing_else(lm):
    before = snapshot(lm)
    orig = down_outputs(lm)
    with prune(lm.view, [SW]):
        pruned = down_outputs(lm)
    sws = measure_super_activations(lm, [SW], TEXT)
    top = int(orig[LAYER][:, ROW].abs().argmax())
    assert sws[0].output_value == orig[LAYER][top, ROW].item() and sws[0].position == top
    with restore_super_activation(lm.view, sws) as log:
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == 0.0  # pruned meanwhile
        restored = down_outputs(lm)
    assert_identical(lm, before)
    # the super activation positions: where the unpruned value reaches a quarter of its size
    sa = (orig[LAYER][:, ROW].abs() >= 0.25 * abs(sws[0].output_value)).nonzero().flatten().tolist()
    assert log.calls == 1 and log.restored == len(sa) > 0
    y, yo, yp = restored[LAYER], orig[LAYER], pruned[LAYER]
    assert torch.equal(y[sa, ROW], yo[sa, ROW])  # exactly the unpruned activation
    assert not torch.equal(yp[sa, ROW], yo[sa, ROW])
    others = [t for t in range(y.shape[0]) if t not in sa]
    assert torch.equal(y[others, ROW], yp[others, ROW])  # everywhere else: the pruned model
    rest = [c for c in range(y.shape[1]) if c != ROW]
    assert torch.equal(y[:, rest], yp[:, rest])
    for layer in range(LAYER):
        assert torch.equal(restored[layer], orig[layer])
    # downstream the restored model is the unpruned one again where the SA was restored
    assert torch.allclose(restored[LAYER + 1][sa], orig[LAYER + 1][sa], rtol=1e-3, atol=1e-2)


def test_restore_sa_at_given_positions(lm):
    orig = down_outputs(lm)
    with prune(lm.view, [SW]):
        pruned = down_outputs(lm)
    with restore_super_activation(lm.view, [SW], positions=[0, 3]) as log:
        restored = down_outputs(lm)
    y = restored[LAYER]
    assert torch.equal(y[[0, 3], ROW], orig[LAYER][[0, 3], ROW])
    assert torch.equal(y[4:, ROW], pruned[LAYER][4:, ROW])
    assert log.restored == 2 and log.sites == [{"layer": LAYER, "channel": ROW, "positions": [0, 3]}]


def test_restore_sa_needs_to_know_what_a_super_activation_is(lm):
    with pytest.raises(SuperweightError, match="no super activation size known"):
        with restore_super_activation(lm.view, [SW]):
            pass
    with pytest.raises(SuperweightError, match="no super weights"):
        with restore_super_activation(lm.view, [], positions=[0]):
            pass


def test_restore_sa_with_a_threshold_and_batches(lm):
    """The planted super activation sits at every token (padding included): a threshold below it
    restores all of them, over both rows, and the model is the unpruned one again; one above it
    restores nothing."""
    ids = lm.tokenizer(["one two", "three four five"], return_tensors="pt", padding=True)
    with torch.no_grad():
        orig_logits = lm.model(**ids).logits
        with prune(lm.view, [SW]):
            pruned_logits = lm.model(**ids).logits
        with restore_super_activation(lm.view, [SW], threshold=0.5 * SW_VALUE * INPUT) as log:
            logits = lm.model(**ids).logits
        assert log.restored == ids["input_ids"].numel() and torch.allclose(logits, orig_logits, atol=1e-4)
        with restore_super_activation(lm.view, [SW], threshold=10 * SW_VALUE * INPUT) as log:
            logits = lm.model(**ids).logits
        assert log.restored == 0 and torch.equal(logits, pruned_logits)


def test_measure_super_activations_fills_the_records(lm):
    (rec,) = measure_super_activations(lm, [(LAYER, ROW, COL)])
    assert rec.coord == (LAYER, ROW, COL) and rec.value == SW_VALUE and rec.position is not None
    assert rec.output_value > 0.2 * SW_VALUE * INPUT and rec.input_value > 0.2 * INPUT


def test_gpt2_conv1d_layout_exclusion_and_restore():
    """GPT-2 stores down projections transposed (Conv1D [in, out]); coordinates stay W[row=out, col=in]."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from superweight.model import wrap_model

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=64)).eval()
    lm = wrap_model(model)
    sw = SuperWeight(1, 5, 7)  # W[5, 7] = c_proj.weight[7, 5]
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[7, 5] = 50.0
    before = snapshot(lm)
    with prune_top_k(lm.view, 1) as info:  # without exclusion the planted weight goes first
        assert info.largest == 50.0 and model.transformer.h[1].mlp.c_proj.weight[7, 5] == 0
    with prune_top_k(lm.view, 1, exclude=[sw]) as info:
        assert info.largest < 50.0 and model.transformer.h[1].mlp.c_proj.weight[7, 5] == 50.0
    ids = torch.randint(0, 64, (1, 6))
    orig = {}
    with torch.no_grad(), observe_down_projs(lm.view, lambda p, x, y, pos: orig.__setitem__(p.layer, y.clone())):
        model(input_ids=ids)
    restored = {}
    with restore_super_activation(lm.view, [sw], positions=[2]):
        assert model.transformer.h[1].mlp.c_proj.weight[7, 5] == 0
        with torch.no_grad(), observe_down_projs(lm.view, lambda p, x, y, pos: restored.__setitem__(p.layer, y.clone())):
            model(input_ids=ids)
    assert torch.equal(restored[1][2, 5], orig[1][2, 5])
    assert not torch.equal(restored[1][3, 5], orig[1][3, 5])
    assert_identical(lm, before)
