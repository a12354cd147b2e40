"""Property tests of the pure quantization math (superweight.tensor.quant)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from superweight.errors import SuperweightError
from superweight.tensor.quant import (as_matrix, blocks, check_bits, fake_quantize, minmax_params,
                                      num_blocks, zscore_threshold)

LAYOUTS = [("tensor", None), ("channel", None), ("group", 4), ("group", 3), ("block", 8), ("block", 5)]
FLOATS = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def matrices(draw, min_side=1, max_side=9):
    rows = draw(st.integers(min_side, max_side))
    cols = draw(st.integers(min_side, max_side))
    values = draw(st.lists(FLOATS, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


def _block_bounds(w: torch.Tensor, granularity, size, bits):
    """Per-entry Δ and range of the entry's block, computed independently of the code under test."""
    m = as_matrix(w.clone())
    index = torch.arange(m.numel(), dtype=torch.float64).reshape(m.shape)  # which entry is where
    steps = torch.empty(m.numel(), dtype=torch.float64)
    for b, idx in zip(blocks(m, granularity, size, "ragged"), blocks(index, granularity, size, "ragged")):
        step, _ = minmax_params(b.double(), bits)
        steps[idx.reshape(-1).long()] = step.expand_as(b).reshape(-1)
    return steps.reshape(w.shape)


@settings(max_examples=60, deadline=None)
@given(w=matrices(), bits=st.integers(2, 8), layout=st.sampled_from(LAYOUTS))
def test_minmax_error_within_half_step(w, bits, layout):
    granularity, size = layout
    q = fake_quantize(w, bits, granularity, size, tail="ragged")
    step = _block_bounds(w, granularity, size, bits)
    err = (q.double() - w.double()).abs()
    slack = 1e-5 * w.abs().max().double() + 1e-30  # float32 rounding of the affine map
    assert bool((err <= step / 2 + slack).all())


@settings(max_examples=60, deadline=None)
@given(w=matrices(), bits=st.integers(2, 8), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_kept_coordinates_are_exact_and_shape_dtype_kept(w, bits, layout, data):
    granularity, size = layout
    rows, cols = w.shape
    keep = data.draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)), max_size=3))
    fill = data.draw(st.sampled_from([None, "median"]))
    z = data.draw(st.sampled_from([None, 0.5, 3.0]))
    q = fake_quantize(w, bits, granularity, size, z=z, keep=keep, fill_kept=fill, tail="ragged")
    assert q.shape == w.shape and q.dtype == w.dtype
    for r, c in keep:
        assert q[r, c].item() == w[r, c].item()
    assert not torch.isnan(q).any()


@settings(max_examples=40, deadline=None)
@given(value=FLOATS, rows=st.integers(1, 6), cols=st.integers(1, 6), bits=st.integers(2, 8),
       symmetric=st.booleans(), layout=st.sampled_from(LAYOUTS))
def test_constant_blocks_have_no_nan_and_stay_exact(value, rows, cols, bits, symmetric, layout):
    w = torch.full((rows, cols), value)
    q = fake_quantize(w, bits, layout[0], layout[1], symmetric=symmetric, z=3.0, tail="ragged")
    assert not torch.isnan(q).any()
    if not symmetric:
        assert torch.equal(q, w)


@settings(max_examples=40, deadline=None)
@given(w=matrices(), bits=st.integers(2, 8))
def test_symmetric_error_within_half_step(w, bits):
    q = fake_quantize(w, bits, "channel", symmetric=True)
    step = w.abs().amax(-1, keepdim=True).double() / (2 ** (bits - 1) - 1)
    slack = 1e-5 * w.abs().max().double() + 1e-30
    assert bool(((q.double() - w.double()).abs() <= step / 2 + slack).all())


@settings(max_examples=40, deadline=None)
@given(w=matrices(min_side=2), z=st.floats(0.1, 5.0))
def test_clipping_bounds_every_block(w, z):
    """After clipping, no dequantized value exceeds its block's threshold by more than a step."""
    q = fake_quantize(w, 8, "channel", z=z)
    thr = zscore_threshold(w.double(), z)  # per row, [rows, 1]
    step = 2 * thr / 255
    assert bool((q.double().abs() <= thr + step + 1e-5 * w.abs().max()).all())


def test_block_size_dividing_row_is_a_group():
    w = torch.randn(8, 16)
    assert torch.equal(fake_quantize(w, 3, "block", 8), fake_quantize(w, 3, "group", 8))


def test_uses_all_2_pow_n_levels():
    """2^N − 1 steps (the authors' code), not the paper text's 2^(N−1) − 1."""
    w = torch.linspace(0, 15, 16).reshape(1, 16)
    assert torch.equal(fake_quantize(w, 4, "tensor"), w)


def test_super_weight_survives_only_when_kept():
    """In a large block the clipped range is far tighter than the outlier's: the others gain."""
    torch.manual_seed(0)
    w = torch.randn(64, 64) * 0.02
    w[2, 5] = 30.0
    plain = fake_quantize(w, 4, "block", 4096, z=3.0)
    kept = fake_quantize(w, 4, "block", 4096, z=3.0, keep=[(2, 5)])
    assert plain[2, 5] < 10 and kept[2, 5] == 30.0
    # without clipping the outlier stretches the range: the other weights collapse to few levels
    naive = fake_quantize(w, 4, "block", 4096)
    other = torch.ones_like(w, dtype=torch.bool)
    other[2, 5] = False
    assert (naive - w)[other].abs().mean() > 3 * (kept - w)[other].abs().mean()


def test_median_fill_keeps_range_tight():
    x = torch.randn(16, 32)
    x[0, 7] = 1e4
    q = fake_quantize(x, 8, "tensor", keep=[(0, 7)], fill_kept="median")
    assert q[0, 7] == 1e4 and (q - x).abs().max() < 0.05


def test_bf16_and_float64_keep_dtype():
    for dtype in (torch.bfloat16, torch.float64, torch.float16):
        w = torch.randn(4, 8).to(dtype)
        assert fake_quantize(w, 4, "group", 4).dtype == dtype


def test_activations_3d_per_token():
    x = torch.randn(2, 5, 8)
    q = fake_quantize(x, 8, "channel", symmetric=True)
    assert q.shape == x.shape
    assert torch.allclose(q, x, atol=x.abs().max().item() / 127)


def test_tail_error_and_ragged_counts():
    with pytest.raises(SuperweightError, match="does not divide"):
        fake_quantize(torch.randn(3, 5), 4, "block", 4)
    with pytest.raises(SuperweightError, match="does not divide"):
        fake_quantize(torch.randn(3, 5), 4, "group", 4)
    assert num_blocks((576, 576), "block", 128 * 128, "ragged") == (21, True)
    assert num_blocks((576, 1536), "block", 128 * 128) == (54, False)
    assert num_blocks((3, 5), "group", 4, "ragged") == (6, True)


@pytest.mark.parametrize("bits", [1, 9, 0, -3, 4.0, "4", True])
def test_bad_bits(bits):
    with pytest.raises(SuperweightError, match="bits must be an integer from 2 to 8"):
        fake_quantize(torch.randn(2, 2), bits, "tensor")
    if not isinstance(bits, bool) and isinstance(bits, int):
        with pytest.raises(SuperweightError):
            check_bits(bits)


@pytest.mark.parametrize("size", [0, -64, 1.5, "128", None])
def test_bad_size(size):
    with pytest.raises(SuperweightError, match="positive integer"):
        fake_quantize(torch.randn(2, 8), 4, "block", size)


@pytest.mark.parametrize("z", [0, -1.0, math.inf, math.nan, "3"])
def test_bad_z(z):
    with pytest.raises(SuperweightError, match="z must be a positive number"):
        fake_quantize(torch.randn(2, 8), 4, "tensor", z=z)


def test_bad_granularity_and_keep():
    with pytest.raises(SuperweightError, match="granularity"):
        fake_quantize(torch.randn(2, 8), 4, "rows")
    with pytest.raises(SuperweightError, match="takes no size"):
        fake_quantize(torch.randn(2, 8), 4, "tensor", 4)
    with pytest.raises(SuperweightError, match="outside"):
        fake_quantize(torch.randn(2, 8), 4, "tensor", keep=[(2, 0)])
