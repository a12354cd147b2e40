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

    def quantize_matrix(self, w: torch.Tensor, keep: Sequence[tuple[int, int]],
                        stats: dict) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.granularity, self.block, symmetric=self.symmetric,
                             z=self.z, keep=keep, tail=self.tail, stats=stats)
