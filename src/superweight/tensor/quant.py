"""Round-to-nearest (RTN) fake quantization: the data-free baseline the paper protects super outliers in.

Everything here is pure tensor math (no modules, no models). A tensor is read as a 2-D matrix
`[rows, cols]` (its last dimension is `cols`: the input dimension of a weight `W[out, in]`, the feature
dimension of an activation `X[tokens, features]`) and cut into *blocks*, each quantized with its own
statistics:

| granularity | one block is                                              | `size`          |
|-------------|-----------------------------------------------------------|-----------------|
| "tensor"    | the whole tensor                                          | —               |
| "channel"   | one row (an output channel of W; a token of X)            | —               |
| "group"     | `size` consecutive entries of one row (the usual group_size) | G, along cols |
| "block"     | `size` consecutive entries of the row-major flattened tensor (the paper's code: `w.reshape(-1, B)`, e.g. B = 128×128) | B |

When `size` does not divide (cols for "group", numel for "block"), `tail` decides, explicitly:
`"error"` raises; `"ragged"` quantizes the remainder as one shorter last block (per row for "group")
with its own statistics — the same as padding it with copies of its own entries, which changes
neither its minimum nor its maximum. The paper's code instead falls back silently to one block for
the whole tensor; we never do that. A block of B ≤ cols with cols % B == 0 is exactly a group of B,
and the same blocks that HQQ's `group_size` makes (it also reshapes the flat tensor to [-1, G]).

Asymmetric min-max (the paper, Sec. 4): Δ = (max − min) / L, Q(x) = round((x − min) / Δ) ∈ [0, L],
Q⁻¹(q) = Δ·q + min, with L = 2^N − 1 steps, i.e. 2^N levels: what the authors' code does
(`scale = (2 ** nbits - 1) / (max - min)`). The paper's text writes Δ = (max − min) / (2^(N−1) − 1),
which would use only half the codes of an N-bit integer; we follow the code. Symmetric absmax (the
usual int8 baseline, SmoothQuant's fake quantizer): Δ = max|x| / (2^(N−1) − 1), Q(x) ∈ [−L', L'].
A constant block (Δ = 0) gets Δ = 1, so it is reproduced exactly instead of dividing by zero.

Outlier clipping by z-score, per block (the paper's "zscore" clip): entries whose |x| exceeds
mean(|x|) + z·std(|x|) are clamped to ±that threshold before the statistics are taken. We use the
population std (correction 0; the authors' code uses torch's default, correction 1 — a factor
sqrt(B/(B−1)), under 1 % for B ≥ 64 — because correction 1 is NaN on one-element blocks).

Coordinates in `keep` are restored exactly after dequantization (the super weights). With
`fill_kept="median"` they are first replaced by the tensor's median, so that they do not stretch the
range at all (the paper's activation method: replace, quantize, dequantize, restore).
"""

from __future__ import annotations

from typing import Sequence

import torch

from superweight.errors import SuperweightError

MIN_BITS, MAX_BITS = 2, 8
GRANULARITIES = ("tensor", "channel", "group", "block")
SIZED = ("group", "block")  # granularities that take a size
TAILS = ("error", "ragged")
FILLS = (None, "median")

Index = tuple  # one coordinate: (row, col) of the 2-D view, or a full index of the tensor


# --- validation --------------------------------------------------------------------------------

def check_bits(bits: object, lo: int = MIN_BITS, hi: int = MAX_BITS) -> int:
    """An integer bit width in [lo, hi], or a one-line error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise SuperweightError(f"bits must be an integer from {lo} to {hi}, got {bits!r}")
    return bits


def check_size(size: object, what: str = "block size") -> int:
    """A positive integer block or group size, or a one-line error."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SuperweightError(f"{what} must be a positive integer, got {size!r}")
    return size


def check_z(z: object) -> float:
    """A finite positive z-score threshold, or a one-line error."""
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 < float(z) < float("inf"):
        raise SuperweightError(f"z must be a positive number, got {z!r}")
    return float(z)


def check_layout(granularity: str, size: int | None, tail: str) -> None:
    if granularity not in GRANULARITIES:
        raise SuperweightError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if granularity in SIZED:
        check_size(size, f"{granularity} size")
    elif size is not None:
        raise SuperweightError(f"granularity {granularity!r} takes no size (got {size})")
    if tail not in TAILS:
        raise SuperweightError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")


# --- blocks ------------------------------------------------------------------------------------

def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """The 2-D reading `[rows, cols]` of a tensor: its last dimension is `cols`."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(-1, x.shape[-1])


def blocks(m: torch.Tensor, granularity: str, size: int | None = None,
           tail: str = "error") -> list[torch.Tensor]:
    """Views of a contiguous 2-D matrix whose last dimension is one block.

    Every entry lies in exactly one block; writing into the views writes into `m`. At most two views
    come back: the full blocks and, with `tail="ragged"`, the shorter remainder.

    >>> [tuple(b.shape) for b in blocks(torch.zeros(4, 6), "group", 4, tail="ragged")]
    [(4, 1, 4), (4, 2)]
    """
    check_layout(granularity, size, tail)
    rows, cols = m.shape
    if granularity == "tensor":
        return [m.view(1, -1)]
    if granularity == "channel":
        return [m]
    if granularity == "group":
        n, rest = divmod(cols, size)
        _check_tail(rest, tail, f"group size {size} does not divide the row length {cols}")
        out = [m[:, : n * size].unflatten(1, (n, size))] if n else []  # [rows, n, G]
        return out + ([m[:, n * size:]] if rest else [])  # [rows, rest]
    flat = m.view(-1)
    n, rest = divmod(flat.numel(), size)
    _check_tail(rest, tail, f"block size {size} does not divide the tensor's {flat.numel()} entries")
    out = [flat[: n * size].view(n, size)] if n else []  # [n, B]
    return out + ([flat[n * size:].view(1, rest)] if rest else [])  # [1, rest]


def _check_tail(rest: int, tail: str, message: str) -> None:
    if rest and tail == "error":
        raise SuperweightError(message + " (use tail 'ragged' for a shorter last block)")


def num_blocks(shape: Sequence[int], granularity: str, size: int | None = None,
               tail: str = "error") -> tuple[int, bool]:
    """(number of blocks, whether one of them is a shorter ragged block) for a tensor shape."""
    m = torch.empty(tuple(shape), device="meta")
    bs = blocks(as_matrix(m), granularity, size, tail)
    count = sum(b.numel() // b.shape[-1] for b in bs)
    full = bs[0].shape[-1]
    return count, any(b.shape[-1] != full for b in bs)


# --- clipping and round-to-nearest on one set of blocks [..., L] ---------------------------------

def zscore_threshold(b: torch.Tensor, z: float) -> torch.Tensor:
    """mean(|b|) + z·std(|b|) over the last dimension (population std), shape [..., 1].

    A block whose |values| are all equal has nothing to clip; its threshold is its max |value|, so
    the rounding of the mean cannot clamp it.
    """
    a = b.abs()
    std = a.std(-1, correction=0, keepdim=True)
    thr = a.mean(-1, keepdim=True) + z * std
    return torch.where(std > 0, thr, a.amax(-1, keepdim=True))


def zscore_clip_(b: torch.Tensor, z: float) -> int:
    """Clamp, in place, entries beyond the z-score threshold of their block; return how many."""
    thr = zscore_threshold(b, z)  # [..., 1]
    clipped = int((b.abs() > thr).sum())
    torch.clamp_(b, min=-thr, max=thr)
    return clipped


def minmax_params(b: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ, min) per block for asymmetric min-max RTN with 2^bits − 1 steps, each [..., 1]."""
    lo = b.amin(-1, keepdim=True)
    hi = b.amax(-1, keepdim=True)
    step = (hi - lo) / (2 ** bits - 1)
    return torch.where(step > 0, step, torch.ones_like(step)), lo


def quantize_minmax(b: torch.Tensor, step: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits − 1] (as floats of b's dtype)."""
    return torch.clamp(torch.round((b - lo) / step), 0, 2 ** bits - 1)


def dequantize_minmax(q: torch.Tensor, step: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    return q * step + lo


def absmax_params(b: torch.Tensor, bits: int) -> torch.Tensor:
    """Δ per block for symmetric absmax RTN, [..., 1]: max|b| / (2^(bits−1) − 1)."""
    step = b.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    return torch.where(step > 0, step, torch.ones_like(step))


def quantize_absmax(b: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(b / step), -qmax, qmax)


def fake_quant_blocks_(b: torch.Tensor, bits: int, symmetric: bool = False) -> None:
    """Quantize and dequantize each block of `b` [..., L] in place."""
    if symmetric:
        step = absmax_params(b, bits)
        b.copy_(quantize_absmax(b, step, bits) * step)
    else:
        step, lo = minmax_params(b, bits)
        b.copy_(dequantize_minmax(quantize_minmax(b, step, lo, bits), step, lo))


# --- the public verb -----------------------------------------------------------------------------

def fake_quantize(x: torch.Tensor, bits: int, granularity: str = "block", size: int | None = None, *,
                  symmetric: bool = False, z: float | None = None, keep: Sequence[Index] = (),
                  fill_kept: str | None = None, tail: str = "error",
                  stats: dict | None = None) -> torch.Tensor:
    """Quantize then dequantize `x` (a new tensor of the same shape and dtype; `x` is not changed).

    `z` clips outliers per block first; `keep` lists coordinates (of the 2-D view `[rows, cols]`, or
    full indices of `x`) restored to their exact original values afterwards; `fill_kept="median"`
    replaces them by the tensor's median before any statistics. `stats`, if given, receives the
    number of blocks, of clipped entries and whether a ragged block was used.

    >>> w = torch.tensor([[0.1, -0.2, 0.3, 50.0]])
    >>> fake_quantize(w, 4, "tensor", z=1.0, keep=[(0, 3)])[0, 3].item()
    50.0
    """
    check_bits(bits)
    check_layout(granularity, size, tail)
    if z is not None:
        z = check_z(z)
    if fill_kept not in FILLS:
        raise SuperweightError(f"fill_kept must be None or 'median', got {fill_kept!r}")
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    work = x.detach().to(work_dtype).clone().contiguous()
    m = as_matrix(work)  # [rows, cols], shares work's storage
    kept = [_index(m, work, k) for k in keep]
    originals = [t[i].clone() for t, i in kept]
    if kept and fill_kept == "median":
        med = work.median()
        for t, i in kept:
            t[i] = med
    clipped = 0
    parts = blocks(m, granularity, size, tail)
    for b in parts:
        if z is not None:
            clipped += zscore_clip_(b, z)
        fake_quant_blocks_(b, bits, symmetric)
    for (t, i), v in zip(kept, originals):
        t[i] = v
    if stats is not None:
        stats.update(blocks=sum(b.numel() // b.shape[-1] for b in parts), clipped=clipped,
                     ragged=len(parts) > 1 or (granularity in SIZED and parts[0].shape[-1] != size))
    return work.to(x.dtype)


def _index(m: torch.Tensor, work: torch.Tensor, k: Index) -> tuple[torch.Tensor, tuple]:
    """Resolve one kept coordinate to (tensor, index) with a range check."""
    k = tuple(int(v) for v in k)
    target = m if len(k) == 2 else work
    if len(k) != target.dim() or any(not 0 <= v < n for v, n in zip(k, target.shape)):
        raise SuperweightError(f"kept coordinate {k} is outside a tensor of shape {tuple(work.shape)}")
    return target, k
