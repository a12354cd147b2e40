"""Quantization on the real default model (smollm2-135m): kept super weights, and the check."""

from __future__ import annotations

import copy

import pytest
import torch

from superweight.model import wrap_model
from superweight.quantize import RTNClipConfig, SuperWeightQuantConfig, quantized
from superweight.quantize.check import check_models
from superweight.records import SuperWeight

pytestmark = pytest.mark.integration

SUPER_WEIGHTS = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]


@pytest.fixture(scope="module")
def copy_lm(default_lm):
    return wrap_model(copy.deepcopy(default_lm.model), default_lm.tokenizer, ref="copy")


def test_superweight_method_keeps_the_super_activation(default_lm, copy_lm):
    w = copy_lm.view.down_proj(11).matrix()
    original = w.detach().clone()
    with quantized(copy_lm, SuperWeightQuantConfig(bits=4, block=128, z=10), SUPER_WEIGHTS) as rep:
        assert rep.summary()["kept"] == 2 and rep.summary()["clipped"] > 0
        rows = check_models(default_lm, copy_lm, SUPER_WEIGHTS[:1])
    assert rows[0].rel_error == 0 and rows[0].survives
    assert torch.equal(w, original)  # restored


def test_large_blocks_keep_the_weight_but_lose_its_input_spike(default_lm, copy_lm):
    """At 4 bits in blocks of 16384 the super weight is restored exactly, yet the gate/up weights
    (and earlier layers) that make its input spike are not: the super activation collapses."""
    with quantized(copy_lm, SuperWeightQuantConfig(bits=4, block=16384, z=20), SUPER_WEIGHTS) as rep:
        assert rep.summary()["ragged_tensors"] > 0
        rows = check_models(default_lm, copy_lm, SUPER_WEIGHTS[:1])
    assert rows[0].rel_error == 0 and not rows[0].survives
    assert abs(rows[0].input_other) < 0.5 * abs(rows[0].input_original)


def test_clipping_alone_destroys_it(default_lm, copy_lm):
    with quantized(copy_lm, RTNClipConfig(bits=4, block=16384, z=3)):
        rows = check_models(default_lm, copy_lm, SUPER_WEIGHTS[:1])
    assert rows[0].rel_error > 0.5 and not rows[0].survives


def test_w4_block32_rtn_reproduces_the_q4_1_gguf_exactly(default_lm):
    """The default model ships as llama.cpp Q4_1 (4 bits, 32-entry blocks, scale and minimum): our
    min-max RTN with 2^4 − 1 steps over the same blocks lands on exactly the same grid (the paper
    text's 2^(N−1) − 1 steps would not)."""
    from superweight.tensor.quant import fake_quantize

    w = default_lm.view.down_proj(11).matrix().detach()
    assert torch.equal(fake_quantize(w, 4, "block", 32), w)
    assert not torch.equal(fake_quantize(w, 3, "block", 32), w)
