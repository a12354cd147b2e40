"""Trace a massive activation through the residual stream, with and without what makes it.

The paper (Sec. 3.2, Fig. 4): a super weight creates a huge value at one hidden channel and token
position; the residual stream then carries it, at the same channel and position, through the later
layers. Detection (`superweight.detect`, `superweight.massive`) finds the massive activations and
their origins; `trace` then records per layer the residual stream's max |value| with its channel,
position and typical magnitude (never the whole stream) and the value at the massive activation's
(position, channel) — in the model as it is, and with the weights that make it zeroed (or, when no
weight makes it, with the early super weight candidates zeroed, if there are any).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from superweight.errors import SuperweightError
from superweight.detect import DEFAULT_PROMPT, DetectConfig, DetectionResult, detect, encode, layer_stats
from superweight.interventions import prune
from superweight.massive import ResidualLayer, residual_scan
from superweight.model.load import LoadedModel
from superweight.records import INPUT_FEATURE, SUPER_WEIGHT, MassiveActivation, SuperWeight


@dataclass
class TraceResult:
    prompt: str
    tokens: list[str]
    activation: MassiveActivation | None  # the traced one: the largest early massive activation
    original: list[ResidualLayer]  # per layer, the embedding output first (layer -1)
    pruned: list[ResidualLayer] | None  # the same with `removed` zeroed (None: nothing to zero)
    detection: DetectionResult
    removed: list[SuperWeight] = field(default_factory=list)
    same_channel_layers: list[int] = field(default_factory=list)  # layers whose max sits on it
    removed_make_it: bool = True  # `removed` are the weights that make it (else: the early candidates)

    @property
    def zeroed_label(self) -> str:
        """What the second pass zeroed, in words for tables and plots."""
        return "its weights zeroed" if self.removed_make_it else "the early super weight candidates zeroed"

    @property
    def first_layer(self) -> int | None:
        return self.activation.first_layer if self.activation else None

    @property
    def last_layer(self) -> int | None:
        return self.activation.last_layer if self.activation else None

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "tokens": self.tokens,
                "massive_activation": self.activation.to_dict() if self.activation else None,
                "first_layer": self.first_layer, "last_layer": self.last_layer,
                "same_channel_layers": self.same_channel_layers,
                "removed": [s.to_dict() for s in self.removed], "removed_make_it": self.removed_make_it,
                "original": [r.to_dict() for r in self.original],
                "pruned": [r.to_dict() for r in self.pruned] if self.pruned is not None else None,
                "down_proj": [s.to_dict() for s in self.detection.layer_stats[0]],
                "super_weights": [s.to_dict() for s in self.detection.super_weights]}


def traced_activation(detection: DetectionResult) -> MassiveActivation | None:
    """The massive activation to follow: the largest early one (else the largest late one)."""
    early = [a for a in detection.massive if not a.late]
    return max(early or detection.massive, key=lambda a: abs(a.peak), default=None)


def trace(lm: LoadedModel, prompt: str = DEFAULT_PROMPT, config: DetectConfig | None = None,
          detection: DetectionResult | None = None) -> TraceResult:
    """Residual stream statistics per layer, original and with the weights that make it zeroed.

    >>> t = trace(load_model("smollm2-135m"))
    >>> t.activation.channel, t.first_layer, t.last_layer
    (507, 11, 27)
    """
    if detection is not None and list(dict.fromkeys(detection.prompts)) != [prompt]:
        raise SuperweightError("trace follows one prompt: the detection given was made on "
                               f"{len(set(detection.prompts))} prompt(s), not on {prompt!r}")
    from contextlib import nullcontext

    config = config or (detection.config if detection else DetectConfig())
    detection = detection or detect(lm, prompt, config)
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]

    def scan(pruned: list[tuple], at: tuple[int, int] | None) -> list[ResidualLayer]:
        with prune(lm.view, pruned) if pruned else nullcontext():
            return residual_scan(lm, ids, config.criterion, config.layers, at)

    return trace_with(scan, detection, prompt, tokens)


def trace_with(scan, detection: DetectionResult, prompt: str, tokens: list[str]) -> TraceResult:
    """`trace` with any engine: `scan(pruned keys, watch (position, channel))` runs one pass and
    returns the residual stream per layer (`residual_scan`'s rows)."""
    act = traced_activation(detection)
    at = (act.position, act.channel) if act else None
    original = scan([], at)
    weight_made = act is not None and act.origin is not None and act.origin.kind in (SUPER_WEIGHT, INPUT_FEATURE)
    removed = detection.made_by(act) if weight_made else detection.early
    pruned = scan([s.key for s in removed], at) if removed else None
    same = [r.layer for r in original if act and (r.position, r.channel) == at]
    return TraceResult(prompt, tokens, act, original, pruned, detection, list(removed), same, weight_made)


@dataclass
class TraceRun:
    """What `superweight trace` reports: one `TraceResult` per prompt, and what made them (the model's
    description, the engine, detection's settings): `to_dict()` is the result file."""

    traces: list[TraceResult]
    model: dict | None = None  # `LoadedModel.describe()`, or the llama.cpp engine's description
    engine: dict | None = None  # which engine ran it and why (`runtime.detect.EngineChoice`)
    config: DetectConfig | None = None

    def to_dict(self) -> dict:
        from superweight._io import result_header

        return result_header("trace", model=self.model, engine=self.engine,
                             config=self.config.to_dict() if self.config else None,
                             traces=[t.to_dict() for t in self.traces])


def trace_prompts(lm: LoadedModel, prompts: str | Sequence[str] = DEFAULT_PROMPT,
                  config: DetectConfig | None = None, *, choice=None) -> TraceRun:
    """`trace` each prompt in turn, recorded with the model and `choice` (the `EngineChoice` that
    picked PyTorch, if any).

    >>> run = trace_prompts(load_model("smollm2-135m"), ["The capital of France is"])  # doctest: +SKIP
    >>> run.to_dict()["traces"][0]["first_layer"]  # doctest: +SKIP
    """
    from superweight.detect import engine_record

    config = config or DetectConfig()
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return TraceRun([trace(lm, p, config) for p in prompts], lm.describe(), engine_record(choice), config)


__all__ = ["TraceResult", "TraceRun", "trace", "trace_prompts", "traced_activation", "residual_scan",
           "layer_stats"]
