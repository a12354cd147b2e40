"""Round-to-nearest after z-score clipping of each block: the ablation "clipping alone".

Clipping tightens every block's range, but it also clamps the super weight itself, which the model
cannot survive: this method shows why the super weight has to be restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from superweight.quantize.rtn import RTNConfig
from superweight.tensor.quant import check_z, fake_quantize

DEFAULT_Z = 10.0  # the authors' scripts clip at z = 9 and 11; 3 clips far too much on SmolLM2


@dataclass
class RTNClipConfig(RTNConfig):
    """RTN with outliers clamped to mean(|w|) + z·std(|w|) of their block first."""

    method: ClassVar[str] = "rtn-clip"
    z: float = DEFAULT_Z

    def __post_init__(self) -> None:
        super().__post_init__()
        self.z = check_z(self.z)

    @property
    def z_or_none(self) -> float | None:
        return self.z

    def quantize_matrix(self, w: torch.Tensor, keep: Sequence[tuple[int, int]],
                        stats: dict) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.granularity, self.block, symmetric=self.symmetric,
                             z=self.z, tail=self.tail, stats=stats)
