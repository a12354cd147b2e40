"""HQQ (Half-Quadratic Quantization, mobiusml/hqq): an established data-free baseline, run on CPU.

HQQ keeps the same asymmetric min-max grid as RTN but optimises each block's zero point (and scale)
against a sparsity-promoting loss on the weight error, without calibration data. We call its own
`hqq.core.quantize.Quantizer.quantize/dequantize` (PyPI package `hqq`, CPU, no bit packing) and
write the dequantized weights back, so it is evaluated exactly like our fake-quantized methods.

HQQ's `group_size` with `axis=1` reshapes the flat tensor to [-1, G]: the same blocks as the paper's
flattened blocks, so `--block B` means the same thing for both. HQQ itself asserts numel % G == 0;
with `tail="ragged"` we give the remainder its own HQQ block, as we do for RTN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from superweight.errors import SuperweightError
from superweight.quantize.rtn import RTNConfig

HQQ_BITS = (2, 3, 4, 8)  # HQQ also has 1, 1.58, 5 and 6; our bit range is 2..8
HQQ_GRANULARITIES = ("block", "channel")


def hqq_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hqq")
    except PackageNotFoundError:
        raise SuperweightError("method 'hqq' needs the hqq package: pip install hqq "
                               "(keep your torch: pip install -c <(pip freeze | grep ^torch=) hqq)") from None


@dataclass
class HQQConfig(RTNConfig):
    """HQQ at `bits` with groups of `block` entries of the flattened weight (its `group_size`)."""

    method: ClassVar[str] = "hqq"
    refusal_is_result: ClassVar[bool] = True  # HQQ's divisibility rule refuses some block sizes
    optimize: bool = True  # HQQ's half-quadratic zero-point optimisation (off: plain RTN in HQQ)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in HQQ_BITS:
            raise SuperweightError(f"hqq supports bits {', '.join(map(str, HQQ_BITS))} here, got {self.bits}")
        if self.granularity not in HQQ_GRANULARITIES or self.symmetric:
            raise SuperweightError("hqq quantizes asymmetric 'block' (its group_size) or 'channel' only")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "hqq_version": hqq_version()}

    def quantize_matrix(self, w: torch.Tensor, keep: Sequence[tuple[int, int]],
                        stats: dict) -> torch.Tensor:
        hqq_version()
        if self.granularity == "channel":
            out = _hqq(w, self.bits, None, self.optimize)
            stats.update(blocks=w.shape[0], clipped=0, ragged=False)
            return out.to(w.dtype)
        flat = w.reshape(-1)
        n, rest = divmod(flat.numel(), self.block)
        if rest and self.tail == "error":
            raise SuperweightError(f"block size {self.block} does not divide the tensor's {flat.numel()} "
                                   "entries (use tail 'ragged' for a shorter last block)")
        parts = []
        if n:
            parts.append(_hqq(flat[: n * self.block].reshape(n, self.block), self.bits, self.block,
                              self.optimize).reshape(-1))
        if rest:
            parts.append(_hqq(flat[n * self.block:].reshape(1, rest), self.bits, rest,
                              self.optimize).reshape(-1))
        stats.update(blocks=n + bool(rest), clipped=0, ragged=bool(rest))
        return torch.cat(parts).reshape(w.shape).to(w.dtype)


def _hqq(w: torch.Tensor, bits: int, group: int | None, optimize: bool) -> torch.Tensor:
    """HQQ quantize + dequantize of a 2-D tensor, groups along its rows (axis=1), on CPU."""
    from hqq.core.quantize import Quantizer

    w_q, meta = Quantizer.quantize(w.float(), nbits=bits, channel_wise=True, group_size=group,
                                   optimize=optimize, round_zero=False, axis=1, bitpack=False,
                                   compute_dtype=torch.float32, device=str(w.device))
    return Quantizer.dequantize(w_q, meta).reshape(w.shape)
