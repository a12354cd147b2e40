"""Outlier statistics on plain tensors: where the largest value is, how much one product dominates."""

from __future__ import annotations

import torch


def abs_argmax(t: torch.Tensor) -> tuple[float, int, int]:
    """(signed value, row, col) of the largest |value| of a 2-D tensor [rows, cols].

    >>> abs_argmax(torch.tensor([[1.0, -5.0], [2.0, 3.0]]))
    (-5.0, 0, 1)
    """
    flat = int(t.abs().argmax())
    row, col = divmod(flat, t.shape[-1])
    return float(t[row, col]), row, col


def dominance(x: torch.Tensor, w_row: torch.Tensor, col: int) -> float:
    """Share of one product in a dot product: |x[col]·w[col]| / Σ_k |x[k]·w[k]|.

    For a super weight, `x` is the down projection's input at the spike's token [intermediate] and
    `w_row` the weight row of the spike's output channel [intermediate]; a value near 1 means this
    single weight makes the output spike.

    >>> dominance(torch.tensor([10.0, 1.0]), torch.tensor([1.0, 0.0]), 0)
    1.0
    """
    products = (x.float() * w_row.float()).abs()  # [intermediate]
    total = float(products.sum())
    return float(products[col]) / total if total > 0 else 0.0


def top_product(x: torch.Tensor, w_row: torch.Tensor) -> int:
    """Index k of the largest |x[k]·w[k]|: the input channel that contributes most to one output.

    >>> top_product(torch.tensor([10.0, 1.0, 5.0]), torch.tensor([0.1, 2.0, 1.0]))
    2
    """
    return int((x.float() * w_row.float()).abs().argmax())


def rank_by_magnitude(w: torch.Tensor, row: int, col: int) -> int:
    """1-based rank of |w[row, col]| among all entries of `w` (1 = the largest)."""
    return int((w.abs() > w[row, col].abs()).sum()) + 1
