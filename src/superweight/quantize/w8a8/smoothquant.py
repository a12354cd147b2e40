"""SmoothQuant (Xiao et al. 2023) α-migration: the calibrated W8A8 baseline of the paper's Table 3.

Per input channel j of a linear, s_j = max|X_j|^α / max|W_j|^(1−α) (clamped ≥ 1e-5), then the layer
computes (X/s)·(W·s)ᵀ: activation outliers shrink, weights absorb them. max|X_j| comes from a
calibration pass over a few hundred tokens of text. Linears that read the same input tensor (q/k/v;
gate/up) share one s, with max|W_j| taken over all of them, as SmoothQuant does so that s can be
folded into the preceding norm; we find them by the identity of the input tensor, not by name.

Unlike SmoothQuant's release (which smooths only the norm-fed q/k/v and gate/up/fc1), every decoder
linear is smoothed here, o_proj and down_proj included: in fake quantization the division by s sits
in the input hook. For down_proj it is deployable (fold 1/s into up_proj's rows); for o_proj it is
exact when each value head feeds its own o_proj columns (no GQA sharing); set `all_linears=False`
for SmoothQuant's own choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from superweight.errors import SuperweightError
from superweight.model.load import LoadedModel
from superweight.quantize.w8a8.core import LinearPlan, Plan, W8A8Config, _weight_view

DEFAULT_ALPHA = 0.5
DEFAULT_CALIB_TOKENS = 512
CALIB_SEQLEN = 512  # tokens per calibration sequence
MIN_SCALE = 1e-5  # SmoothQuant's clamp


@dataclass
class SmoothQuantW8A8Config(W8A8Config):
    """W8A8 after SmoothQuant's scale migration, calibrated on `calib_tokens` tokens of `calib_source`.

    The calibration documents are taken from the end of the source, so that evaluations reading a
    prefix of the same source do not see them.
    """

    method: ClassVar[str] = "smoothquant"
    alpha: float = DEFAULT_ALPHA
    calib_tokens: int = DEFAULT_CALIB_TOKENS
    calib_source: str = "c4"
    all_linears: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1:
            raise SuperweightError(f"alpha must be in [0, 1], got {self.alpha}")
        if isinstance(self.calib_tokens, bool) or not isinstance(self.calib_tokens, int) or self.calib_tokens < 2:
            raise SuperweightError(f"calibration tokens must be an integer ≥ 2, got {self.calib_tokens!r}")

    def build_plan(self, lm: LoadedModel, calib_ids: torch.Tensor | None = None) -> Plan:
        seqs = ([calib_ids.reshape(-1)] if calib_ids is not None
                else calibration_ids(lm, self.calib_source, self.calib_tokens))
        act_max, groups = activation_stats(lm, seqs)
        return smooth_plan(lm, act_max, groups, self.alpha, self.all_linears,
                           notes={"calibration_tokens": sum(int(s.numel()) for s in seqs)})


def calibration_ids(lm: LoadedModel, source: str, tokens: int) -> list[torch.Tensor]:
    """`tokens` token ids from the last documents of a registered text source, in sequences of
    at most CALIB_SEQLEN ([seq] each)."""
    from superweight.evaluate import sources

    picked, count = [], 0
    for doc in reversed(sources.documents(source)):
        picked.append(doc)
        count += len(lm.tokenizer(doc).input_ids)
        if count >= tokens:
            break
    ids = lm.tokenizer("\n\n".join(reversed(picked)), return_tensors="pt").input_ids[0][-tokens:]
    return list(ids.split(CALIB_SEQLEN))


def activation_stats(lm: LoadedModel, seqs: list[torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Per-linear max|X_j| over the calibration tokens, and the groups of linears sharing an input."""
    act_max: dict[str, torch.Tensor] = {}
    owner: dict[int, tuple[str, torch.Tensor]] = {}  # holds the tensor so its id is not reused
    group_of: dict[str, str] = {}

    def make(name):
        def hook(module, args):
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()  # [in]
            act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)
            first, _ = owner.setdefault(id(args[0]), (name, args[0]))  # same tensor = same input
            group_of.setdefault(name, first)
        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in lm.view.decoder_linears()]
    try:
        with torch.inference_mode():
            for seq in seqs:
                owner.clear()
                lm.model(seq[None].to(lm.device))
    finally:
        owner.clear()
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    for name, first in group_of.items():
        groups.setdefault(first, []).append(name)
    return act_max, list(groups.values())


def smooth_plan(lm: LoadedModel, act_max: dict[str, torch.Tensor], groups: list[list[str]],
                alpha: float, all_linears: bool = True, notes: dict | None = None) -> Plan:
    modules = dict(lm.view.decoder_linears())
    linears = {name: LinearPlan() for name in modules}
    for group in groups:
        if not all_linears and len(group) == 1:
            continue  # SmoothQuant's release: only linears fed by a shared norm output
        w_max = torch.stack([_weight_view(modules[n]).detach().abs().amax(0).float() for n in group]).amax(0)
        x_max = torch.stack([act_max[n] for n in group]).amax(0)
        s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=MIN_SCALE)  # [in]
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        for n in group:
            linears[n].scales = s
    return Plan(linears, {"alpha": alpha, "groups": sum(len(g) > 1 for g in groups), **(notes or {})})
