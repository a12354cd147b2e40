"""W8A8 fake quantization of every decoder linear: weights per output channel, inputs per tensor/token.

A *plan* says, for each linear, how to scale its input channels (SmoothQuant) and which input entries
(token position, channel) to protect (the paper's super activations). Applying a plan quantizes each
weight once — W·diag(s), per output channel — and registers a forward pre-hook that fake-quantizes
the input X·diag(s)⁻¹ on every call, so `Q(X/s) @ Q(W·s)ᵀ` is what the layer computes. Weights are
restored bit-exactly and hooks removed on exit, also on error (offloaded layers: the quantized
weights live in a temporary offload folder for the block, see `superweight.model.offload`).

Protected entries are replaced by the input tensor's median before the statistics are taken, then
restored to their exact values after dequantization (`fill_kept="median"` in the math). Positions
are token positions inside each sequence of the batch (the super activation sits on the first token).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Iterator

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.adapters import is_conv1d, linear_matrix
from superweight.model.load import LoadedModel
from superweight.model.offload import Overrides
from superweight.tensor.quant import check_bits, fake_quantize

ACT_GRANULARITIES = {"tensor": "tensor", "token": "channel"}  # per token = per row of X[tokens, C]
DEFAULT_BITS = 8


@dataclass
class W8A8Config:
    """Naive W8A8: RTN weights per output channel, RTN inputs per tensor (or per token)."""

    method: ClassVar[str] = "naive"
    protects: ClassVar[str] = "none"  # no super weights written back (superact protects activations)
    refusal_is_result: ClassVar[bool] = False
    w_bits: int = DEFAULT_BITS
    a_bits: int = DEFAULT_BITS
    act_granularity: str = "tensor"
    symmetric: bool = False  # False: the paper's asymmetric min-max; True: absmax (SmoothQuant's)

    def __post_init__(self) -> None:
        check_bits(self.w_bits)
        check_bits(self.a_bits)
        if self.act_granularity not in ACT_GRANULARITIES:
            raise SuperweightError(f"activation granularity must be one of {', '.join(ACT_GRANULARITIES)}, "
                                   f"got {self.act_granularity!r}")

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    def row_key(self) -> dict:
        """What a result row shows of this config."""
        return {"method": self.method, "bits": self.w_bits, "block": None, "a_bits": self.a_bits}

    def build_plan(self, lm: LoadedModel) -> "Plan":
        return Plan({name: LinearPlan() for name, _ in lm.view.decoder_linears()})

    def label(self) -> str:
        return f"W{self.w_bits}A{self.a_bits} {self.method} (act per {self.act_granularity})"


@dataclass
class LinearPlan:
    """What to do to one linear: input-channel scales (or None) and protected (position, channel)s."""

    scales: torch.Tensor | None = None  # [in_features], divides X and multiplies W's columns
    protect: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Plan:
    linears: dict[str, LinearPlan]
    notes: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"linears": len(self.linears),
                "smoothed": sum(p.scales is not None for p in self.linears.values()),
                "protected": {n: p.protect for n, p in self.linears.items() if p.protect},
                **self.notes}


def _weight_view(module: nn.Module) -> torch.Tensor:
    """W[out, in] of a Linear or (transposed) Conv1D."""
    return linear_matrix(module)


def quantize_input(x: torch.Tensor, config: W8A8Config, plan: LinearPlan) -> torch.Tensor:
    """Fake-quantize one linear's input [..., seq, C] as the plan says."""
    shape = x.shape
    xs = x if plan.scales is None else x / plan.scales.to(x.dtype)
    seq = shape[-2] if x.dim() >= 2 else 1
    rows = xs.numel() // shape[-1]
    keep = [(b * seq + p, c) for b in range(rows // seq) for p, c in plan.protect if p < seq]
    return fake_quantize(xs.reshape(rows, shape[-1]), config.a_bits, ACT_GRANULARITIES[config.act_granularity],
                         symmetric=config.symmetric, keep=keep,
                         fill_kept="median" if keep else None).reshape(shape)


def _pre_hook(config: W8A8Config, plan: LinearPlan):
    def hook(module, args, kwargs):
        if args:
            return (quantize_input(args[0], config, plan), *args[1:]), kwargs
        if "input" in kwargs:  # F.linear's name, should a model pass it by keyword
            return args, {**kwargs, "input": quantize_input(kwargs["input"], config, plan)}
        raise RuntimeError(f"{type(module).__name__} was called without an input to quantize")
    return hook


@contextmanager
def fake_w8a8(lm: LoadedModel, config: W8A8Config, plan: Plan | None = None) -> Iterator[Plan]:
    """Run the model under W8A8 fake quantization for the block; restore weights, remove hooks after.

    >>> from superweight.model import wrap_model
    >>> from superweight.testing import tiny_model, tiny_tokenizer
    >>> lm = wrap_model(tiny_model("llama"), tiny_tokenizer())
    >>> ids = lm.tokenizer("hello", return_tensors="pt").input_ids
    >>> with fake_w8a8(lm, W8A8Config()) as plan:
    ...     logits = lm.model(ids).logits  # computed with 8-bit weights and inputs
    >>> plan.summary()["linears"]  # 7 linears in each of 6 layers
    42
    """
    plan = plan or config.build_plan(lm)
    modules = dict(lm.view.decoder_linears())
    missing = [n for n in plan.linears if n not in modules]
    if missing:
        raise SuperweightError(f"plan names linears the model does not have: {', '.join(missing[:3])}")
    handles = []
    with Overrides(spill=True) as edits:
        try:
            with torch.no_grad():
                for name, lp in plan.linears.items():
                    module = modules[name]
                    w = _weight_view(module)  # [out, in]
                    ws = w if lp.scales is None else w * lp.scales.to(w.dtype)  # scale input columns
                    q = fake_quantize(ws, config.w_bits, "channel", symmetric=config.symmetric)
                    edits.set(module, "weight", q.T if is_conv1d(module) else q)
            for name, lp in plan.linears.items():
                handles.append(modules[name].register_forward_pre_hook(_pre_hook(config, lp), with_kwargs=True))
            yield plan
        finally:
            for h in handles:
                h.remove()
