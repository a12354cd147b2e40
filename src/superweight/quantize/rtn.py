"""Naive round-to-nearest weight quantization: the paper's "Naive W4" baseline of Figure 7.

Every weight block gets its own min-max range. With large blocks one super weight stretches the
range of its block so much that all its neighbours round to a handful of levels; that is the failure
the super-weight-aware method repairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Sequence

import torch

from superweight.errors import SuperweightError
from superweight.tensor.quant import GRANULARITIES, SIZED, TAILS, check_bits, check_size, fake_quantize

DEFAULT_BITS = 4
DEFAULT_BLOCK = 128
EXTRA_TARGETS = ("lm_head", "embed")  # outside the decoder layers, quantized only when asked


@dataclass
class RTNConfig:
    """Round-to-nearest: `bits`, blocks of `block` entries (see superweight.tensor.quant's table).

    `granularity` "block" is the paper's flattened blocks, "group" groups along the input dimension
    (both of `block` entries, DEFAULT_BLOCK when not given); "channel"/"tensor" take no size, and a
    `block` given with them is an error. `tail` says what a size that does not divide does ("error"
    or a shorter "ragged" last block). `include` adds "lm_head" and/or "embed" to the decoder linears.
    """

    method: ClassVar[str] = "rtn"
    # what is written back in full precision after quantizing: "none", "weight" (the super weights)
    # or "circuit" (the super weights and the gate/up rows that make their input spike)
    protects: ClassVar[str] = "none"
    refusal_is_result: ClassVar[bool] = False  # a refused shape is a result row, not an error (HQQ)
    bits: int = DEFAULT_BITS
    block: int | None = None
    granularity: str = "block"
    tail: str = "ragged"
    symmetric: bool = False
    include: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise SuperweightError(f"granularity must be one of {', '.join(GRANULARITIES)}, "
                                   f"got {self.granularity!r}")
        if self.granularity in SIZED:
            self.block = DEFAULT_BLOCK if self.block is None else self.block
            check_size(self.block, f"{self.granularity} size")
        elif self.block is not None:
            raise SuperweightError(f"granularity {self.granularity!r} takes no block size (got {self.block}); "
                                   f"sizes apply to {' and '.join(SIZED)}")
        if self.tail not in TAILS:
            raise SuperweightError(f"tail must be one of {', '.join(TAILS)}, got {self.tail!r}")
        self.include = tuple(self.include)
        bad = [t for t in self.include if t not in EXTRA_TARGETS]
        if bad:
            raise SuperweightError(f"can only include {', '.join(EXTRA_TARGETS)}, got {', '.join(bad)}")

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    def row_key(self) -> dict:
        """What a result row shows of this config."""
        return {"method": self.method, "bits": self.bits, "block": self.block}

    @property
    def z_or_none(self) -> float | None:
        return None

    def quantize_matrix(self, w: torch.Tensor, keep: Sequence[tuple[int, int]],
                        stats: dict) -> torch.Tensor:
        """W[out, in] → its fake-quantized copy; `keep` is ignored by naive RTN."""
        return fake_quantize(w, self.bits, self.granularity, self.block, symmetric=self.symmetric,
                             tail=self.tail, stats=stats)

    def label(self) -> str:
        size = f"{self.granularity} {self.block}" if self.block else self.granularity
        return f"{self.method} W{self.bits} {size}"
