"""Data-free super weight detection: one prompt, one forward pass per round, a max per layer.

The paper's method (Yu et al. 2024, Sec. 3.1): a super weight W[row, col] in a down projection
multiplies a huge input X[pos, col] into a huge output Y[pos, row]. So for each layer we record only
the largest |input| and |output| of its down projection (with channel and token position) — never the
whole activations — and call a layer a candidate when both are outliers: above an absolute floor and
far above the typical layer (the median over layers). The coordinate is (layer, row = output channel,
col = input channel), where `col` is the input channel whose product X[pos, k]·W[row, k] is largest —
the paper's input spike channel whenever one product dominates, and the right choice in later rounds,
when a second weight of the same row carries what is left of the spike. Then we zero what was found,
run again, and look for the next ones, until nothing new appears; every weight is restored exactly.

A spike is not yet proof of a super weight: `verify` zeroes each candidate and measures perplexity,
because some models show down projection spikes whose removal does nothing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from superweight.errors import SuperweightError
from superweight.interventions import prune
from superweight.model.adapters import DownProj
from superweight.model.hooks import observe_down_projs, observe_outputs
from superweight.model.load import LoadedModel
from superweight.records import SuperActivation, SuperWeight
from superweight.tensor.stats import abs_argmax, dominance, rank_by_magnitude, top_product

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."

PROMPT_SET = (
    DEFAULT_PROMPT,
    "The quick brown fox jumps over the lazy dog.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "def add(a, b):\n    return a + b",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Paris is the capital and most populous city of France.",
)


@dataclass
class DetectConfig:
    """Thresholds of the search; the defaults work on the default model and on planted models."""

    min_output: float = 50.0  # |Y| floor for a candidate output spike
    output_ratio: float = 50.0  # ... and at least this many times the median layer's max |Y|
    min_input: float = 5.0  # |X| floor for the input spike
    input_ratio: float = 10.0  # ... and at least this many times the median layer's max |X|
    max_rounds: int = 5  # zero what was found and search again, at most this many times
    late_fraction: float = 0.8  # layers at or past this fraction of depth hold "late" spikes
    layers: tuple[int, ...] | None = None  # hook only these layers (None: all)

    def __post_init__(self) -> None:
        for name in ("min_output", "output_ratio", "min_input", "input_ratio"):
            if not getattr(self, name) > 0:
                raise SuperweightError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_rounds < 1:
            raise SuperweightError(f"max-rounds must be at least 1, got {self.max_rounds}")
        if not 0 < self.late_fraction <= 1:
            raise SuperweightError(f"late-fraction must be in (0, 1], got {self.late_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerStat:
    """What one forward pass showed at one down projection (the max over experts for MoE)."""

    layer: int
    expert: int | None
    out_value: float  # signed value of the largest |Y|
    out_pos: int
    out_channel: int
    in_value: float  # signed value of the largest |X| over all tokens
    in_pos: int
    in_channel: int
    x_at_out: torch.Tensor = field(repr=False)  # X[out_pos, :], to attribute the output spike
    y_at_out: float = 0.0  # Y[out_pos, out_channel] (== out_value)
    norm_out: float | None = None  # post-MLP norm output at (out_pos, out_channel)
    norm_max: float | None = None  # that norm output's max |value| over the whole tensor
    norm_channel: int | None = None  # ... its channel
    col: int = -1  # the input channel whose product X[out_pos, k]·W[out_channel, k] is largest

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("x_at_out")
        return d


@dataclass
class DetectionResult:
    """Super weights found (early and late), their super activations, and per-layer maxima."""

    super_weights: list[SuperWeight]
    super_activations: list[SuperActivation]
    layer_stats: list[list[LayerStat]]  # one list per round
    prompts: list[str]
    config: DetectConfig
    tokens: list[str] = field(default_factory=list)
    norm_spikes: list[NormSpike] = field(default_factory=list)  # post-MLP norm outliers (Gemma 2/3)

    @property
    def early(self) -> list[SuperWeight]:
        return [s for s in self.super_weights if not s.late]

    @property
    def late(self) -> list[SuperWeight]:
        return [s for s in self.super_weights if s.late]

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "tokens": self.tokens, "config": self.config.to_dict(),
                "super_weights": [s.to_dict() for s in self.super_weights],
                "super_activations": [a.to_dict() for a in self.super_activations],
                "norm_spikes": [n.to_dict() for n in self.norm_spikes],
                "layer_stats": [[s.to_dict() for s in r] for r in self.layer_stats]}


def encode(lm: LoadedModel, prompt: str) -> torch.Tensor:
    """Token ids [1, seq] of a prompt on the model's device; a clear error for an empty prompt."""
    if not prompt or not prompt.strip():
        raise SuperweightError("the prompt is empty")
    if lm.tokenizer is None:
        raise SuperweightError("the model has no tokenizer to encode the prompt")
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    if ids.numel() == 0:
        raise SuperweightError(f"the prompt {prompt!r} encodes to no tokens")
    return ids.to(lm.device)


def layer_stats(lm: LoadedModel, input_ids: torch.Tensor,
                layers: Sequence[int] | None = None) -> list[LayerStat]:
    """One forward pass; for each layer the max |input| and |output| of its down projection(s)."""
    view = lm.view
    layers = list(range(view.num_layers)) if layers is None else list(layers)
    for layer in layers:
        view.check_layer(layer)
    best: dict[int, LayerStat] = {}

    def on_down(proj: DownProj, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor) -> None:
        # x: [tokens, intermediate], y: [tokens, hidden]
        yv, yi, yc = abs_argmax(y)
        cur = best.get(proj.layer)
        if cur is not None and abs(cur.out_value) >= abs(yv):
            return
        xv, xi, xc = abs_argmax(x)
        x_row = x[yi].float().cpu().clone()  # [intermediate]
        col = top_product(x_row, proj.matrix()[yc].detach().float().cpu())
        best[proj.layer] = LayerStat(proj.layer, proj.expert, yv, int(positions[yi]), yc, xv,
                                     int(positions[xi]), xc, x_row, yv, col=col)

    norms = {i: m for i in layers if (m := view.post_mlp_norm(i)) is not None}
    norm_out: dict[int, torch.Tensor] = {}

    def on_norm(layer: int, out: torch.Tensor) -> None:
        norm_out[layer] = out  # [tokens, hidden]; read after the pass, then dropped

    with torch.no_grad(), observe_down_projs(view, on_down, layers), observe_outputs(norms, on_norm):
        lm.model(input_ids=input_ids)
    stats = [best[i] for i in sorted(best)]
    for s in stats:
        if s.layer in norm_out:
            out = norm_out.pop(s.layer)
            s.norm_out = float(out[s.out_pos, s.out_channel])
            s.norm_max, _, s.norm_channel = abs_argmax(out)
    return stats


def _median_abs(values: Sequence[float]) -> float:
    return statistics.median(abs(v) for v in values) if values else 0.0


def candidates(stats: list[LayerStat], config: DetectConfig) -> list[LayerStat]:
    """Layers whose output and input spikes are both outliers (absolute floor and ratio to median)."""
    med_out = _median_abs([s.out_value for s in stats])
    med_in = _median_abs([s.in_value for s in stats])
    return [s for s in stats
            if abs(s.out_value) >= max(config.min_output, config.output_ratio * med_out)
            and abs(s.x_at_out[s.col]) >= max(config.min_input, config.input_ratio * med_in)]


@dataclass
class NormSpike:
    """A massive value after a post-MLP norm, with the norm's gain on its channel."""

    layer: int
    channel: int
    value: float  # the norm output's largest |value|
    ratio: float  # ... over the median layer's
    gain: float | None  # the norm's gain on `channel`
    gain_ratio: float | None  # ... over the median gain of that norm
    from_weight: bool  # True when a detected super weight makes the down projection spike there

    def to_dict(self) -> dict:
        return asdict(self)


def norm_spikes(lm: LoadedModel, stats: list[LayerStat], config: DetectConfig,
                super_weights: Sequence[SuperWeight] = ()) -> list[NormSpike]:
    """Layers whose post-MLP norm output is an outlier, and whether the norm's gain or a weight made it.

    In Gemma 2/3 a massive activation can come from a large gain of the norm on the MLP output on
    one channel rather than from any single weight; this says which it is.
    """
    values = [abs(s.norm_max) for s in stats if s.norm_max is not None]
    if not values:
        return []
    median = statistics.median(values)
    spikes = []
    for s in stats:
        if s.norm_max is None or abs(s.norm_max) < max(config.min_output, config.output_ratio * median):
            continue
        gain = lm.view.norm_gain(s.layer)
        g = float(gain[s.norm_channel]) if gain is not None else None
        g_ratio = abs(g) / float(gain.abs().median()) if gain is not None and float(gain.abs().median()) > 0 else None
        from_weight = any(sw.layer == s.layer and sw.row == s.norm_channel for sw in super_weights)
        spikes.append(NormSpike(s.layer, s.norm_channel, s.norm_max,
                                abs(s.norm_max) / median if median > 0 else float("inf"), g, g_ratio,
                                from_weight))
    return spikes


def _record(lm: LoadedModel, s: LayerStat, rnd: int, config: DetectConfig,
            tokens: list[str]) -> SuperWeight:
    """Turn a candidate layer into a SuperWeight with its measurements."""
    proj = lm.view.down_proj(s.layer, s.expert)
    w = proj.matrix().detach()  # [hidden, intermediate]
    row = s.out_channel
    col = top_product(s.x_at_out, w[row].float().cpu())
    value = float(w[row, col])
    x = s.x_at_out  # [intermediate]
    share = dominance(x, w[row].float().cpu(), col)
    own = float(x[col]) * value
    n = lm.view.num_layers
    gain = lm.view.norm_gain(s.layer)
    return SuperWeight(
        layer=s.layer, row=row, col=col, expert=s.expert, value=value,
        input_value=float(x[col]), output_value=s.out_value, position=s.out_pos,
        token=tokens[s.out_pos] if s.out_pos < len(tokens) else None,
        dominance=share, output_without=s.out_value - own,
        rank=rank_by_magnitude(w, row, col), round=rnd,
        late=s.layer >= math.ceil(config.late_fraction * n) and n > 1,
        norm_output=s.norm_out,
        norm_gain=float(gain[row]) if gain is not None else None,
        norm_gain_median=float(gain.median()) if gain is not None else None)


def detect_prompt(lm: LoadedModel, prompt: str = DEFAULT_PROMPT,
                  config: DetectConfig | None = None) -> DetectionResult:
    """Iterative detection on one prompt; the model's weights are bit-identical afterwards."""
    config = config or DetectConfig()
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]
    found: dict[tuple, SuperWeight] = {}
    rounds: list[list[LayerStat]] = []
    for rnd in range(1, config.max_rounds + 1):
        with prune(lm.view, [sw.key for sw in found.values()]):
            stats = layer_stats(lm, ids, config.layers)
            rounds.append(stats)
            new = [_record(lm, s, rnd, config, tokens) for s in candidates(stats, config)]
        new = [sw for sw in new if sw.key not in found]
        if not new:
            break
        found.update((sw.key, sw) for sw in new)
    sws = sorted(found.values(), key=lambda s: (s.layer, s.row, s.col))
    for sw in sws:  # the value in the unedited model (a later round sees earlier ones zeroed)
        sw.value = float(lm.view.down_proj(sw.layer, sw.expert).matrix().detach()[sw.row, sw.col])
    acts = super_activations(sws)
    spikes = norm_spikes(lm, rounds[0], config, sws)
    return DetectionResult(sws, acts, rounds, [prompt], config, tokens, spikes)


def super_activations(sws: Sequence[SuperWeight]) -> list[SuperActivation]:
    """The super activation each early super weight creates: its layer, channel and position.

    One per (channel, position), at the layer where it first appears (the largest output there).
    """
    seen: dict[tuple, SuperActivation] = {}
    early = [s for s in sws if not s.late and s.position is not None]
    for sw in sorted(early, key=lambda s: (s.layer, -abs(s.output_value or 0.0))):
        seen.setdefault((sw.row, sw.position), SuperActivation(
            sw.layer, sw.row, sw.position, float(sw.output_value or 0.0), sw.token))
    return sorted(seen.values(), key=lambda a: (a.layer, a.channel, a.position))


def detect(lm: LoadedModel, prompts: str | Sequence[str] = DEFAULT_PROMPT,
           config: DetectConfig | None = None,
           progress: Callable[[int, int], None] | None = None) -> DetectionResult:
    """Find super weights; with several prompts, keep how many prompts each coordinate appeared in.

    >>> result = detect(load_model("smollm2-135m"))
    >>> [sw.coord for sw in result.early]
    [(11, 507, 1229)]
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise SuperweightError("no prompt given")
    results = []
    for i, p in enumerate(prompts):
        results.append(detect_prompt(lm, p, config))
        if progress:
            progress(i + 1, len(prompts))
    if len(results) == 1:
        for sw in results[0].super_weights:
            sw.prompts_found = 1
        return results[0]
    return _merge(results)


def _merge(results: list[DetectionResult]) -> DetectionResult:
    """Union over prompts, each coordinate with the count of prompts it appeared in."""
    counts: dict[tuple, int] = {}
    first: dict[tuple, SuperWeight] = {}
    for r in results:
        for sw in r.super_weights:
            counts[sw.key] = counts.get(sw.key, 0) + 1
            first.setdefault(sw.key, sw)
    sws = sorted(first.values(), key=lambda s: (-counts[s.key], s.layer, s.row, s.col))
    for sw in sws:
        sw.prompts_found = counts[sw.key]
    acts = super_activations([sw for sw in sws if counts[sw.key] == len(results)])
    base = results[0]
    return DetectionResult(sws, acts, base.layer_stats, [p for r in results for p in r.prompts],
                           base.config, base.tokens, base.norm_spikes)


def find_super_weights(lm: LoadedModel, prompt: str = DEFAULT_PROMPT,
                       config: DetectConfig | None = None) -> list[SuperWeight]:
    """The early (non-late) super weights of a model: what interventions and quantization protect."""
    return detect(lm, prompt, config).early
