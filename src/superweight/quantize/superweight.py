"""Super-weight-aware RTN (the paper, Sec. 4.2): clip outliers, quantize, restore the super weights.

With the super weights out of the way the clip threshold can be tight, so every block keeps a fine
step; the handful of super weights is then written back in full precision (a few scalars per model).
Small blocks gain little: a super weight is its group's maximum either way and the group is small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from superweight.quantize.rtn_clip import RTNClipConfig
from superweight.tensor.quant import fake_quantize


@dataclass
class SuperWeightQuantConfig(RTNClipConfig):
    """RTN-clip that restores the super weights (found by detection unless given) exactly."""

    method: ClassVar[str] = "superweight"
    protects: ClassVar[str] = "weight"

    def quantize_matrix(self, w: torch.Tensor, keep: Sequence[tuple[int, int]],
                        stats: dict) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.granularity, self.block, symmetric=self.symmetric,
                             z=self.z, keep=keep, tail=self.tail, stats=stats)


@dataclass
class CircuitQuantConfig(SuperWeightQuantConfig):
    """Super-weight-aware RTN that also keeps the super weights' *circuit*: the gate/up rows that make
    the input spike `x[col]` of each super weight `W[row, col]` (row `col` of that layer's gate and up
    projections, whole rows of `hidden` entries) are written back in full precision too.

    Why: at large blocks the super weight survives but its input spike collapses (2996 → 384 on the
    default model at block 16384), because the projections that make it are quantized.
    """

    method: ClassVar[str] = "circuit"
    protects: ClassVar[str] = "circuit"
