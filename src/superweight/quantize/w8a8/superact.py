"""The paper's data-free W8A8 (Sec. 4.1): replace super activations by the median, quantize, restore.

Where the super activations sit comes from detection alone (one prompt, no calibration data): each
super weight's input spike X[position, col] enters its down projection, and the super activation it
creates, on channel `row` at that position, is carried by the residual stream into every later
layer, whose residual-stream readers — the linears the adapter declares (q/k/v, gate/up, fc1, a
router, a shared expert; never o_proj, whose input is the attention output) — are protected at
(position, row). Readers that are not linear modules (fused experts) are not quantized here, so
there is nothing to protect in them. Late spikes (detection's `late` super weights) are protected
in their down projections too. Each protected entry costs one full-precision scalar per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from superweight.model.load import LoadedModel
from superweight.quantize.w8a8.core import LinearPlan, Plan, W8A8Config
from superweight.records import SuperActivation, SuperWeight


@dataclass
class SuperActW8A8Config(W8A8Config):
    """W8A8 with the detected super activations kept out of the quantization range."""

    method: ClassVar[str] = "superact"
    include_late: bool = True  # also protect the late-layer down projection spikes
    residual: bool = True  # also protect the super activation's channel in later residual readers

    def build_plan(self, lm: LoadedModel, super_weights: Sequence[SuperWeight] | None = None,
                   super_activations: Sequence[SuperActivation] | None = None) -> Plan:
        if super_weights is None or super_activations is None:
            from superweight.detect import detect

            found = detect(lm)
            super_weights = found.super_weights if super_weights is None else super_weights
            super_activations = found.super_activations if super_activations is None else super_activations
        return protect_plan(lm, [s for s in super_weights if self.include_late or not s.late],
                            list(super_activations) if self.residual else [])


def protect_plan(lm: LoadedModel, super_weights: Sequence[SuperWeight],
                 super_activations: Sequence[SuperActivation]) -> Plan:
    """A plan protecting each super weight's input spike and each super activation downstream."""
    view = lm.view
    linears = {name: LinearPlan() for name, _ in view.decoder_linears()}
    for sw in super_weights:
        proj = view.down_proj(sw.layer, sw.expert)
        if sw.position is not None and proj.name in linears:
            _add(linears[proj.name], (sw.position, sw.col))
    for sa in super_activations:
        for layer in range(sa.layer + 1, view.num_layers):
            for name, _ in view.residual_readers(layer):
                if name in linears:  # a quantized linear (fused experts are not)
                    _add(linears[name], (sa.position, sa.channel))
    notes = {"super_weights": [s.label() + (" late" if s.late else "") for s in super_weights],
             "super_activations": [a.to_dict() for a in super_activations]}
    return Plan(linears, notes)


def _add(lp: LinearPlan, entry: tuple[int, int]) -> None:
    if entry not in lp.protect:
        lp.protect.append(entry)
