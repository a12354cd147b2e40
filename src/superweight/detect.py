"""Data-free detection: massive activations in the residual stream, what makes them, and the
super weight candidates behind them. One prompt, one forward pass per round.

The paper's account (Yu et al. 2024) is a causal chain: a weight makes a huge output, the residual
stream carries it, the model depends on it. Detection follows it from both ends:
- **the residual stream** (`superweight.massive`): in round 1's forward pass, every layer's hidden
  state is compared with its own typical magnitude; each massive activation is traced to the
  layer where it first appears and to what makes it there — one or a few weights of its row (a
  super weight candidate), one huge input feature feeding several rows (a column pattern,
  reported whole), the post-MLP norm's gain, attention, or the embedding;
- **the down projections** (the paper's search): per layer the largest |input| and |output| of
  the down projection (never whole activations); a layer is a candidate when both are outliers
  against the median layer. The coordinate is (layer, row = output channel, col = the input
  channel whose product X[pos, k]·W[row, k] is largest), and every other row that the same input
  feature pushes over the output threshold comes with it, at once. Then what was found is zeroed
  and the search runs again, until a round finds nothing new (`converged`) or `max_rounds` stops
  it; every weight is restored exactly. This catches spikes that do not stay in the residual
  stream (late layers, or a spike a post-MLP norm rescales), which are reported apart.

A candidate is not yet a super weight: `superweight.verify` zeroes each one and measures perplexity,
and ablates each massive activation itself, because some spikes do nothing when removed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from superweight.errors import SuperweightError, check_fields
from superweight.events import PROMPT, OnEvent, emitter
from superweight.interventions import prune
from superweight.massive import (MASSIVE_FLOOR, MASSIVE_RATIO, MassiveCriterion, OriginConfig, ResidualLayer, ResidualProbe,
                                 massive_activations)
from superweight.model.adapters import DownProj
from superweight.model.hooks import observe_down_projs, observe_outputs
from superweight.model.load import LoadedModel
from superweight.records import (INPUT_FEATURE, SPIKE, SUPER_WEIGHT, MassiveActivation, SuperActivation,
                                 SuperWeight)
from superweight.tensor.stats import abs_argmax, dominance, top_product

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
    spikes_per_layer: int = 4  # down projection rows (their largest |output|) kept per layer and round
    late_fraction: float = 0.8  # layers at or past this fraction of depth hold "late" spikes
    layers: tuple[int, ...] | None = None  # hook only these layers (None: all)
    massive_floor: float = MASSIVE_FLOOR  # a massive activation: |h| above this ...
    massive_ratio: float = MASSIVE_RATIO  # ... and this many times the median |h| of its hidden state
    weight_share: float = 0.5  # a few weights make an MLP output when they make this share of it
    min_product_share: float = 0.1  # ... each at least this share
    max_weights: int = 4  # ... and at most this many of them

    @property
    def criterion(self) -> MassiveCriterion:
        """What a massive activation is: the one criterion detection and verification share."""
        return MassiveCriterion(self.massive_floor, self.massive_ratio)

    def __post_init__(self) -> None:
        check_fields(self, positive=("min_output", "output_ratio", "min_input", "input_ratio", "massive_floor",
                                     "massive_ratio"),
                     fractions=("late_fraction", "weight_share", "min_product_share"),
                     counts=("max_rounds", "max_weights", "spikes_per_layer"))

    def to_dict(self) -> dict:
        return asdict(self)

    def late_from(self, num_layers: int) -> int:
        """The first layer counted as late (past the end when the model has one layer)."""
        return math.ceil(self.late_fraction * num_layers) if num_layers > 1 else num_layers


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
    y_row: torch.Tensor | None = field(default=None, repr=False)  # Y[out_pos, :] (every row's output)
    spikes: list[LayerStat] = field(default_factory=list, repr=False)  # other rows' spikes, largest first

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("x_at_out", "y_row", "spikes")}
        d["spikes"] = [s.to_dict() for s in self.spikes]
        return d


@dataclass
class DetectionResult:
    """Massive activations (with their origins), super weight candidates, per-layer maxima.

    `super_weights` holds every candidate, early and late, with `verdict` set once verified.
    `early` is what interventions, quantization and the catalog use: the early candidates, minus
    those verification found to be spikes only. `super_activations` are the early massive
    activations that such weights make.
    """

    super_weights: list[SuperWeight]
    massive: list[MassiveActivation]
    layer_stats: list[list[LayerStat]]  # one list per round
    residual: list[ResidualLayer]  # the residual stream per layer in round 1 (embedding first)
    prompts: list[str]
    config: DetectConfig
    tokens: list[str] = field(default_factory=list)
    converged: bool = True  # False: the round limit stopped the search while it still found new ones

    @property
    def early(self) -> list[SuperWeight]:
        return [s for s in self.super_weights if not s.late and s.verdict != SPIKE]

    @property
    def late(self) -> list[SuperWeight]:
        return [s for s in self.super_weights if s.late]

    @property
    def rounds(self) -> int:
        return len(self.layer_stats)

    @property
    def verified(self) -> bool:
        """Whether verification ran (it gives every candidate and massive activation a verdict)."""
        return any(x.verdict is not None for x in [*self.super_weights, *self.massive])

    def made_by(self, act: MassiveActivation) -> list[SuperWeight]:
        """The candidates (records of `super_weights`) among the weights that make `act`."""
        keys = {w.key for w in act.origin.weights} if act.origin else set()
        return [s for s in self.super_weights if s.key in keys]

    def is_super_activation(self, act: MassiveActivation) -> bool:
        """A massive activation made by a super weight: verified, or a candidate when unverified."""
        if act.late or act.origin is None or act.origin.kind not in (SUPER_WEIGHT, INPUT_FEATURE):
            return False
        weights = [s for s in self.made_by(act) if s.row == act.channel]
        return any(s.verdict != SPIKE for s in weights)

    @property
    def super_activations(self) -> list[SuperActivation]:
        n = len(set(self.prompts))
        return [a.as_super_activation() for a in self.massive
                if self.is_super_activation(a) and (a.prompts_found or 1) >= n]

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "tokens": self.tokens, "config": self.config.to_dict(),
                "rounds": self.rounds, "converged": self.converged,
                "massive_activations": [a.to_dict() for a in self.massive],
                "super_weights": [s.to_dict() for s in self.super_weights],
                "super_activations": [a.to_dict() for a in self.super_activations],
                "residual": [r.to_dict() for r in self.residual],
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


class _DownMaxima:
    """Hook callbacks keeping, per layer, the largest |output| of its down projection(s) and the
    input row that made it, the post-MLP norm's output there, and the same for the next few rows
    whose largest |output| is over `floor` (a layer can hold spikes in several rows, each made by
    its own input feature) — a few numbers per layer."""

    def __init__(self, spikes: int = 1, floor: float = float("inf")):
        self.best: dict[int, LayerStat] = {}
        self.more: dict[int, dict[int, LayerStat]] = {}  # layer -> row -> its spike
        self.spikes, self.floor = spikes, floor

    def _stat(self, proj: DownProj, x, y, positions, pos: int, row: int, xmax) -> LayerStat:
        x_row = x[pos].float().cpu().clone()  # [intermediate]
        col = top_product(x_row, proj.row(row))
        yv = float(y[pos, row])
        xv, xi, xc = xmax
        return LayerStat(proj.layer, proj.expert, yv, int(positions[pos]), row, xv, int(positions[xi]), xc,
                         x_row, yv, col=col, y_row=y[pos].float().cpu().clone())

    def on_down(self, proj: DownProj, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor) -> None:
        # x: [tokens, intermediate], y: [tokens, hidden]
        yv, yi, yc = abs_argmax(y)
        xmax = abs_argmax(x)
        cur = self.best.get(proj.layer)
        if cur is None or abs(yv) > abs(cur.out_value):
            self.best[proj.layer] = self._stat(proj, x, y, positions, yi, yc, xmax)
        if self.spikes < 2:
            return
        per_row, at = y.abs().max(dim=0)  # [hidden]: each row's largest |Y| and where
        values, rows = per_row.topk(min(self.spikes, per_row.numel()))
        more = self.more.setdefault(proj.layer, {})
        for v, r in zip(values.tolist(), rows.tolist()):
            if v < self.floor or r == yc:
                continue
            if r not in more or v > abs(more[r].out_value):
                more[r] = self._stat(proj, x, y, positions, int(at[r]), r, xmax)

    def on_norm(self, layer: int, out: torch.Tensor) -> None:  # out: [tokens, hidden], reduced here
        s = self.best.get(layer)
        if s is None:
            return
        s.norm_out = float(out[s.out_pos, s.out_channel])
        s.norm_max, _, s.norm_channel = abs_argmax(out)

    def stats(self) -> list[LayerStat]:
        out = [self.best[i] for i in sorted(self.best)]
        for s in out:
            others = [o for r, o in self.more.get(s.layer, {}).items() if r != s.out_channel]
            s.spikes = sorted(others, key=lambda o: -abs(o.out_value))[:self.spikes - 1]
        return out


def _layers(lm: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    layers = list(range(lm.view.num_layers)) if layers is None else list(layers)
    for layer in layers:
        lm.view.check_layer(layer)
    return layers


def layer_stats(lm: LoadedModel, input_ids: torch.Tensor,
                layers: Sequence[int] | None = None, probe: ResidualProbe | None = None,
                config: DetectConfig | None = None) -> list[LayerStat]:
    """One forward pass; for each layer the max |input| and |output| of its down projection(s), and
    with a `config` the next `spikes_per_layer - 1` rows whose output is over `min_output`.

    With a `probe`, the same pass also scans the residual stream (`superweight.massive`)."""
    from contextlib import nullcontext

    view = lm.view
    layers = _layers(lm, layers)
    maxima = _DownMaxima(config.spikes_per_layer, config.min_output) if config else _DownMaxima()
    norms = {i: m for i in layers if (m := view.post_mlp_norm(i)) is not None}

    def on_down(proj, x, y, positions):  # one hook for both observers (MoE experts are recomputed once)
        maxima.on_down(proj, x, y, positions)
        if probe is not None:
            probe.on_down(proj, x, y, positions)

    with torch.no_grad(), observe_down_projs(view, on_down, layers), \
            observe_outputs(norms, maxima.on_norm), (probe.hooks(down=False) if probe else nullcontext()):
        lm.model(input_ids=input_ids)
    return maxima.stats()


def _median_abs(values: Sequence[float]) -> float:
    return statistics.median(abs(v) for v in values) if values else 0.0


def output_threshold(stats: list[LayerStat], config: DetectConfig) -> float:
    """|Y| from which a down projection output counts as a spike: the floor, or `output_ratio` × the
    median layer's max |Y|, whichever is larger."""
    return max(config.min_output, config.output_ratio * _median_abs([s.out_value for s in stats]))


def candidates(stats: list[LayerStat], config: DetectConfig) -> list[LayerStat]:
    """Spikes whose output and input are both outliers (absolute floor and ratio to the median
    layer's maximum): each layer's largest, and the other rows' spikes recorded with it."""
    out_min = output_threshold(stats, config)
    in_min = max(config.min_input, config.input_ratio * _median_abs([s.in_value for s in stats]))
    return [sp for s in stats for sp in [s, *s.spikes]
            if abs(sp.out_value) >= out_min and abs(sp.x_at_out[sp.col]) >= in_min]


def _records(view, s: LayerStat, rnd: int, config: DetectConfig, tokens: list[str],
             out_min: float) -> list[SuperWeight]:
    """A candidate layer's super weight candidates: the spike's own (row, col), and every other row
    that the same input feature `col` pushes over the output threshold (one column, several rows)."""
    proj = view.down_proj(s.layer, s.expert)  # W [hidden, intermediate], read a row or a column at a time
    x = s.x_at_out  # [intermediate]
    col = s.col
    fed = (x[col] * proj.column(col)).abs()  # [hidden]: what the input feature adds per row
    rows = sorted({s.out_channel} | set((fed >= out_min).nonzero().flatten().tolist()))
    gain = view.norm_gain(s.layer)
    out = []
    for row in rows:
        w_row = proj.row(row)
        y = s.out_value if row == s.out_channel else float(s.y_row[row]) if s.y_row is not None \
            else float(x @ w_row)
        main = row == s.out_channel
        out.append(SuperWeight(
            layer=s.layer, row=row, col=col, expert=s.expert, value=float(w_row[col]),
            input_value=float(x[col]), output_value=y, position=s.out_pos,
            token=tokens[s.out_pos] if s.out_pos < len(tokens) else None,
            dominance=dominance(x, w_row, col), output_without=y - float(x[col] * w_row[col]),
            rank=proj.rank(row, col), round=rnd,
            late=s.layer >= config.late_from(view.num_layers),
            norm_output=s.norm_out if main else None,
            norm_gain=float(gain[row]) if gain is not None else None,
            norm_gain_median=float(gain.median()) if gain is not None else None))
    return out


def detect_prompt(lm: LoadedModel, prompt: str = DEFAULT_PROMPT,
                  config: DetectConfig | None = None) -> DetectionResult:
    """Detection on one prompt; the model's weights are bit-identical afterwards."""
    from contextlib import nullcontext

    config = config or DetectConfig()
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]
    layers = _layers(lm, config.layers)

    def run_pass(pruned: list[tuple], probe: ResidualProbe | None) -> list[LayerStat]:
        with prune(lm.view, pruned) if pruned else nullcontext():
            return layer_stats(lm, ids, layers, probe, config)

    return detect_rounds(lm.view, run_pass, prompt, tokens, layers, config)


PassRunner = Callable[[list[tuple], "ResidualProbe | None"], list[LayerStat]]


def detect_rounds(view, run_pass: PassRunner, prompt: str, tokens: list[str], layers: list[int],
                  config: DetectConfig) -> DetectionResult:
    """The rounds of detection over one prompt, whatever runs the model (the seam of the engines).

    `run_pass(pruned, probe)` runs one forward pass with the weights `pruned` (keys (layer, row,
    col, expert)) removed and returns the per-layer `LayerStat`s (`layer_stats`); with a `probe`
    it also feeds the residual stream to it. `view` answers `num_layers`, `down_proj(layer,
    expert)` (`.row(r)`, `.column(c)`, `.rank(r, c)`) and `norm_gain(layer)`: a `ModelView`, or the GGUF-backed
    view of the llama.cpp engine (`superweight.runtime.detect`).
    """
    late_from = config.late_from(view.num_layers)
    probe = ResidualProbe(view, layers, config.criterion)
    stats = run_pass([], probe)  # round 1: down projections + residual stream
    out_min = output_threshold(stats, config)
    origin_config = OriginConfig(config.weight_share, config.min_product_share, config.max_weights,
                                 row_threshold=out_min)
    massive = massive_activations(view, probe, origin_config, tokens, late_from)
    found: dict[tuple, SuperWeight] = {}
    for s in candidates(stats, config):
        found.update((sw.key, sw) for sw in _records(view, s, 1, config, tokens, out_min))
    for act in massive:  # weights that make a massive activation are candidates, found in round 1
        for sw in act.origin.weights if act.origin else []:
            found.setdefault(sw.key, sw)
    rounds, converged = [stats], not found
    for rnd in range(2, config.max_rounds + 1):
        if converged:
            break
        stats = run_pass([sw.key for sw in found.values()], None)
        rounds.append(stats)
        out_min = output_threshold(stats, config)
        new = [sw for s in candidates(stats, config)
               for sw in _records(view, s, rnd, config, tokens, out_min) if sw.key not in found]
        converged = not new
        found.update((sw.key, sw) for sw in new)
    sws = sorted(found.values(), key=lambda s: (s.layer, s.row, s.col))
    for sw in sws:  # the value in the unedited model (a later round sees earlier ones zeroed)
        sw.value = float(view.down_proj(sw.layer, sw.expert).row(sw.row)[sw.col])
    _share_records(massive, sws)
    return DetectionResult(sws, massive, rounds, probe.rows, [prompt], config, tokens, converged)


def _share_records(massive: Sequence[MassiveActivation], sws: Sequence[SuperWeight]) -> None:
    """Point each origin at the candidate records themselves, so verdicts show in both places."""
    by_key = {s.key: s for s in sws}
    for act in massive:
        if act.origin:
            act.origin.weights = [by_key.get(w.key, w) for w in act.origin.weights]


def detect(lm: LoadedModel, prompts: str | Sequence[str] = DEFAULT_PROMPT,
           config: DetectConfig | None = None, on_event: OnEvent | None = None) -> DetectionResult:
    """Find massive activations and super weight candidates; with several prompts, keep in how many
    prompts each appeared. `on_event` hears each prompt ("prompt", ended with its result).

    >>> result = detect(load_model("smollm2-135m"))
    >>> [sw.coord for sw in result.early]
    [(11, 507, 1229), (11, 507, 1487)]
    >>> [(a.channel, a.first_layer, a.origin.kind) for a in result.massive]
    [(507, 11, 'super weight')]
    """
    return over_prompts(lambda p: detect_prompt(lm, p, config), prompts, on_event)


def over_prompts(detect_one: Callable[[str], DetectionResult], prompts: str | Sequence[str],
                 on_event: OnEvent | None = None) -> DetectionResult:
    """Detection on each prompt (`detect_one`, whatever engine runs it), merged over the prompts
    (`prompts_found` counts them); `on_event` hears each prompt begin and end."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise SuperweightError("no prompt given")
    emit, results = emitter(on_event), []
    for i, prompt in enumerate(prompts, 1):
        emit(PROMPT, f"prompt {i}", i, len(prompts))
        results.append(detect_one(prompt))
        emit(PROMPT, f"prompt {i}", i, len(prompts), results[-1], ended=True)
    if len(results) == 1:
        for rec in [*results[0].super_weights, *results[0].massive]:
            rec.prompts_found = 1
        return results[0]
    return _merge(results)


def _merge(results: list[DetectionResult]) -> DetectionResult:
    """Union over prompts, each coordinate and massive activation with the count of prompts it
    appeared in (a massive activation is the same when its channel, first layer and origin — kind and
    weights — are; each prompt counts once)."""
    counts: dict[tuple, int] = {}
    first: dict[tuple, SuperWeight] = {}
    for r in results:
        for sw in r.super_weights:
            counts[sw.key] = counts.get(sw.key, 0) + 1
            first.setdefault(sw.key, sw)
    sws = sorted(first.values(), key=lambda s: (-counts[s.key], s.layer, s.row, s.col))
    for sw in sws:
        sw.prompts_found = counts[sw.key]
    seen: dict[tuple, MassiveActivation] = {}
    for r in results:
        keys = set()
        for act in r.massive:
            key = _massive_key(act)
            if key not in seen:
                act.prompts_found = 0
                seen[key] = act
            keys.add(key)
        for key in keys:  # each prompt counts once
            seen[key].prompts_found += 1
    massive = sorted(seen.values(), key=lambda a: (-(a.prompts_found or 0), a.first_layer, a.channel))
    _share_records(massive, sws)
    base = results[0]
    return DetectionResult(sws, massive, base.layer_stats, base.residual,
                           [p for r in results for p in r.prompts], base.config, base.tokens,
                           all(r.converged for r in results))


def _massive_key(act: MassiveActivation) -> tuple:
    """The same massive activation in two prompts: channel, first layer, what makes it (kind and weights)."""
    o = act.origin
    return (act.channel, act.first_layer, o.kind if o else None,
            tuple(sorted(w.key for w in o.weights)) if o else ())


def find_super_weights(lm: LoadedModel, prompt: str = DEFAULT_PROMPT,
                       config: DetectConfig | None = None) -> list[SuperWeight]:
    """The early super weight candidates of a model: what interventions and quantization protect."""
    return detect(lm, prompt, config).early


@dataclass
class DetectionRun:
    """What `superweight detect` reports: detection, its verification, the catalog comparison, and what
    made them (the model's description, the engine that ran it): `to_dict()` is the result file."""

    result: DetectionResult
    verification: object | None  # superweight.verify.Verification
    comparison: object  # superweight.catalog.Comparison
    experts: object | None = None  # superweight.moe.SuperExpertResult, for a mixture of experts
    model: dict | None = None  # `LoadedModel.describe()`, or the llama.cpp engine's description
    engine: dict | None = None  # which engine ran it and why (`runtime.detect.EngineChoice`), how long

    def to_dict(self) -> dict:
        from superweight._io import result_header

        out = {**result_header("detect", model=self.model, engine=self.engine),
               **self.result.to_dict(), "catalog": self.comparison.to_dict(),
               "verification": self.verification.to_dict() if self.verification else None}
        if self.experts is not None:
            out["moe"] = self.experts.to_dict()
        return out


def run_detection(lm: LoadedModel, prompts: str | Sequence[str] = DEFAULT_PROMPT,
                  config: DetectConfig | None = None, *, verify_threshold: float | None = None,
                  model_id: str | None = None, text: str | None = None,
                  experts: object | None = None, matters_threshold: float | None = None,
                  expert_draws: int = 3, choice=None, on_event: OnEvent | None = None) -> DetectionRun:
    """Detect; with `verify_threshold`, verify every candidate and massive activation causally and
    grade it (`verify.VerdictScale(verify_threshold, matters_threshold)`: needed / matters / not
    needed); compare the early super weights with the catalog entry for `model_id` (default: the model's).
    For a mixture of experts, also find the super experts (`experts`: a `SuperExpertConfig`) and,
    with `verify_threshold`, prune them against `expert_draws` sets of random experts (`superweight.moe`).
    `choice` (a `runtime.detect.EngineChoice`) says why PyTorch runs the model, for the record.
    `on_event` hears each prompt and each perplexity of the verification (`superweight.events`).

    >>> run = run_detection(load_model("smollm2-135m"), verify_threshold=3.0)
    >>> run.result.massive[0].verdict
    'needed'
    """
    from superweight import catalog
    from superweight.verify import verify

    config = config or DetectConfig()
    result = detect(lm, prompts, config, on_event)
    verification = None
    if verify_threshold is not None:
        verification = verify(lm, result.super_weights, text=text, threshold=verify_threshold,
                              massive=result.massive, criterion=config.criterion,
                              matters=matters_threshold, on_event=on_event)
    moe = None
    if lm.view.is_moe:
        from superweight.moe import SuperExpertConfig, super_experts, verify_super_experts

        moe = super_experts(lm, prompts, experts or SuperExpertConfig(
            massive_floor=config.massive_floor, massive_ratio=config.massive_ratio))
        if verify_threshold is not None and moe.super_experts:
            moe.verification = verify_super_experts(lm, moe.super_experts, text=text, draws=expert_draws)
    return DetectionRun(result, verification, catalog.compare(model_id or lm.model_id, result.early), moe,
                        lm.describe(), engine_record(choice))


def engine_record(choice=None, **run) -> dict:
    """The `engine` of a result file: the `EngineChoice` (anything with `to_dict()`, or a dict) that
    picked the engine, PyTorch when none is given, and what the run adds (e.g. llama.cpp's context)."""
    if choice is None:
        return {"engine": "torch", "reason": "a model loaded in PyTorch", "gguf": None, **run}
    return {**(choice if isinstance(choice, dict) else choice.to_dict()), **run}
