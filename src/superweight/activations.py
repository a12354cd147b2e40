"""Super activations: follow the residual stream layer by layer, with and without the super weights.

The paper (Sec. 3.2, Fig. 4): a super weight creates a huge value at one hidden channel and token
position; the residual stream then carries it, at the same channel and position, through the later
layers. We record, per layer, the residual stream's max |value| with its channel and position (never
the whole stream), and the value at the super activation's (position, channel), in the model as it is
and with the super weights zeroed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from superweight.detect import DEFAULT_PROMPT, DetectConfig, DetectionResult, detect, encode, layer_stats
from superweight.interventions import prune
from superweight.model.hooks import observe_outputs
from superweight.model.load import LoadedModel
from superweight.records import SuperActivation
from superweight.tensor.stats import abs_argmax

PERSIST_FRACTION = 0.5  # the activation "persists" while it stays above this share of its peak


@dataclass
class ResidualMax:
    layer: int
    value: float  # signed value of the largest |h| after this layer
    channel: int
    position: int
    at_sa: float | None = None  # h[position, channel] of the super activation

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TraceResult:
    prompt: str
    tokens: list[str]
    activation: SuperActivation | None
    original: list[ResidualMax]
    pruned: list[ResidualMax]
    detection: DetectionResult
    first_layer: int | None = None  # the first layer whose residual carries the super activation
    last_layer: int | None = None  # the last layer of the unbroken run from first_layer
    same_channel_layers: list[int] = field(default_factory=list)  # layers whose max sits on it

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "tokens": self.tokens,
                "super_activation": self.activation.to_dict() if self.activation else None,
                "first_layer": self.first_layer, "last_layer": self.last_layer,
                "same_channel_layers": self.same_channel_layers,
                "original": [r.to_dict() for r in self.original],
                "pruned": [r.to_dict() for r in self.pruned],
                "down_proj": [s.to_dict() for s in self.detection.layer_stats[0]],
                "super_weights": [s.to_dict() for s in self.detection.super_weights]}


def residual_maxima(lm: LoadedModel, input_ids: torch.Tensor,
                    at: tuple[int, int] | None = None) -> list[ResidualMax]:
    """Per layer, the largest |value| of the residual stream after it, and h[at] if given."""
    out: dict[int, ResidualMax] = {}

    def on_layer(layer: int, h: torch.Tensor) -> None:  # h: [tokens, hidden]
        v, pos, ch = abs_argmax(h)
        out[layer] = ResidualMax(layer, v, ch, pos, float(h[at[0], at[1]]) if at else None)

    with torch.no_grad(), observe_outputs(dict(enumerate(lm.view.layers)), on_layer):
        lm.model(input_ids=input_ids)
    return [out[i] for i in sorted(out)]


def persistence(rows: Sequence[ResidualMax]) -> tuple[int | None, int | None]:
    """(first, last) layer of the unbroken run where h at the super activation stays near its peak."""
    values = [abs(r.at_sa or 0.0) for r in rows]
    if not values or max(values) == 0:
        return None, None
    threshold = PERSIST_FRACTION * max(values)
    first = next(i for i, v in enumerate(values) if v >= threshold)
    last = first
    while last + 1 < len(values) and values[last + 1] >= threshold:
        last += 1
    return rows[first].layer, rows[last].layer


def trace(lm: LoadedModel, prompt: str = DEFAULT_PROMPT, config: DetectConfig | None = None,
          detection: DetectionResult | None = None) -> TraceResult:
    """Residual stream maxima per layer, original and with the (early) super weights zeroed.

    >>> t = trace(load_model("smollm2-135m"))
    >>> t.activation.channel, t.first_layer
    (507, 11)
    """
    detection = detection or detect(lm, prompt, config)
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]
    sa = max(detection.super_activations, key=lambda a: abs(a.value), default=None)
    at = (sa.position, sa.channel) if sa else None
    original = residual_maxima(lm, ids, at)
    with prune(lm.view, [s.key for s in detection.early]):
        pruned = residual_maxima(lm, ids, at)
    first, last = persistence(original) if sa else (None, None)
    same = [r.layer for r in original if sa and (r.position, r.channel) == at]
    return TraceResult(prompt, tokens, sa, original, pruned, detection, first, last, same)


__all__ = ["ResidualMax", "TraceResult", "residual_maxima", "persistence", "trace", "layer_stats"]
