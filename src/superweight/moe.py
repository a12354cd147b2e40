"""Super experts: the super weights of mixture-of-experts models.

In a MoE the phenomenon lives in whole experts. Su et al. 2025 ("Unveiling Super Experts in
Mixture-of-Experts Large Language Models", arXiv 2507.23279) find that a handful of experts (3 of
6,144 in Qwen3-30B-A3B) produce the massive activations, that pruning them collapses the model while
pruning as many random experts does not, and that they make the attention sinks. This module asks
the same three questions of any model an adapter describes (fused or unfused experts, shared
experts, dense first layers):

1. **Profile** (`profile_experts`): one forward pass per prompt with routing exactly as the model
   does it; per (layer, expert) — and per shared expert, and per dense MLP of a MoE model — how many
   tokens were routed to it and its largest |down projection output| with channel and token. Reduced
   inside the hooks (a few numbers and one input row per expert; no activation is kept), with the
   fused experts observed as they run (`observe_down_projs(inline=True)`), so it costs about one
   plain forward pass and works on offloaded models.
2. **Super experts** (`super_experts`): the paper's rule — an expert whose output maximum is above the
   99.5th percentile of all experts' maxima and above a tenth of the largest, in the first three
   quarters of the layers — plus one guard of ours (above `min_ratio` × the median expert's maximum,
   because a relative rule always elects the largest expert of a model that has none). Experts the
   rule picks in the last quarter are "outlier experts", reported apart. Each super expert is then
   explained: the massive activation it makes in the residual stream (channel, token, first layer),
   and the weight(s) of its down projection that make it (the products X[pos, k]·W[row, k], as the
   dense search reads a super weight).
3. **Verification** (`verify_super_experts`): prune the super experts — their output is zeroed (down
   projection and its bias set to 0) while the router still scores and selects them and keeps their
   routing weight (no renormalisation over the other experts) — against the same number of random
   experts drawn from the same layers (several seeded draws; mean and spread): perplexity, zero-shot
   accuracy when asked, and the attention-sink share (how much attention goes to the first token).
   Every edit restores the exact bits on exit, offloaded or not, also on error.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from superweight.errors import SuperweightError, check_fields
from superweight.massive import MASSIVE_FLOOR, MASSIVE_RATIO, MassiveCriterion, residual_scan, runs
from superweight.model.adapters import DownProj, ModelView, get_path
from superweight.model.hooks import observe_down_projs
from superweight.model.offload import Overrides
from superweight.records import Record, SuperWeight
from superweight.tensor.stats import dominance, rank_by_magnitude

ROUTED, SHARED, DENSE = "routed", "shared", "dense"
PRUNE_VARIANT = ("output zeroed, as Su et al. prune: the expert's down projection (and its bias) set to 0; "
                 "the router still scores and selects it and its routing weight is kept (the other "
                 "experts' weights are not renormalised, no other expert takes its place)")


@dataclass
class SuperExpertConfig:
    """The rule and the explanation's thresholds; written into every result."""

    percentile: float = 99.5  # an expert's max |output| above this percentile of all experts' maxima ...
    fraction: float = 0.1  # ... and above this fraction of the largest one (Su et al. 2025)
    depth: float = 0.75  # super experts sit in the first `depth` of the layers; later: outlier experts
    min_ratio: float = 10.0  # ours: ... and this many times the median expert's maximum
    include_shared: bool = True  # shared experts join the population (reported as shared)
    weight_share: float = 0.5  # a few weights make the output when their products make this share ...
    min_product_share: float = 0.1  # ... each at least this share
    max_weights: int = 4  # ... and at most this many
    massive_floor: float = MASSIVE_FLOOR  # a massive activation in the residual stream: |h| above this
    massive_ratio: float = MASSIVE_RATIO  # ... and this many times its hidden state's median |h|

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise SuperweightError(f"percentile must be in (0, 100], got {self.percentile}")
        check_fields(self, positive=("min_ratio", "massive_floor", "massive_ratio"),
                     fractions=("fraction", "depth", "weight_share", "min_product_share"), counts=("max_weights",))

    def to_dict(self) -> dict:
        return asdict(self)

    def late_from(self, num_layers: int) -> int:
        """The first layer past the first `depth` of the layers."""
        return math.ceil(self.depth * num_layers)


@dataclass
class ExpertStat(Record):
    """What one forward pass (or several) showed at one expert's down projection."""

    layer: int
    expert: int | None  # None: the layer's shared expert (kind "shared") or dense MLP (kind "dense")
    kind: str = ROUTED
    routed: int = 0  # tokens that went through it (all tokens for shared experts and dense MLPs)
    value: float = 0.0  # signed value of its largest |output|
    channel: int | None = None  # ... on this hidden channel
    position: int | None = None  # ... at this token position of prompt `prompt`
    prompt: int | None = None
    token: str | None = None

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.layer, self.expert)

    def label(self) -> str:
        what = f"expert {self.expert}" if self.kind == ROUTED else f"{self.kind} {'expert' if self.kind == SHARED else 'MLP'}"
        return f"layer {self.layer}, {what}"


@dataclass
class ExpertProfile:
    """Per (layer, expert) routing counts and output maxima over the profiled tokens."""

    stats: list[ExpertStat]
    num_layers: int
    experts: list[int]  # routed experts per layer (0: a dense layer)
    prompts: list[str]
    tokens: list[list[str]]  # per prompt
    seconds: float = 0.0
    rows: dict = field(default_factory=dict, repr=False)  # key -> X row [intermediate] at the max

    def get(self, layer: int, expert: int | None, kind: str = ROUTED) -> ExpertStat | None:
        return next((s for s in self.stats if s.key == (layer, expert) and s.kind == kind), None)

    def population(self, include_shared: bool = True) -> list[ExpertStat]:
        """The experts the rule compares: every routed expert of a MoE layer (and shared ones)."""
        kinds = (ROUTED, SHARED) if include_shared else (ROUTED,)
        return [s for s in self.stats if s.kind in kinds]

    def maxima(self) -> tuple[torch.Tensor, bool]:
        """[layers, experts (+1 shared column)] of max |output| (NaN where a layer has none or the
        expert was never routed) — the
        paper's heatmap — and whether the last column is the shared expert."""
        width = max(self.experts) if self.experts else 0
        shared = any(s.kind == SHARED for s in self.stats)
        grid = torch.full((self.num_layers, width + int(shared)), float("nan"))
        for s in self.stats:
            if s.kind == ROUTED and s.routed:  # never routed: no maximum (left blank)
                grid[s.layer, s.expert] = abs(s.value)
            elif s.kind == SHARED:
                grid[s.layer, width] = abs(s.value)
        return grid, shared

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "tokens": sum(len(t) for t in self.tokens),
                "num_layers": self.num_layers, "experts": self.experts, "seconds": self.seconds,
                "stats": [s.to_dict() for s in self.stats]}


def _check_routers(view: ModelView) -> list[int]:
    """The MoE layers, with a one-line error when a router cannot be read."""
    a = view.adapter
    moe = [i for i in range(view.num_layers) if view.is_moe_layer(i)]
    if not moe:
        raise SuperweightError(f"{a.model_types[0]} is not a mixture of experts (no routed experts)")
    for i in moe:
        if a.router is None:
            raise SuperweightError(f"the {a.model_types[0]} adapter names no router")
        try:
            w = getattr(get_path(view.layers[i], a.router), "weight", None)
        except SuperweightError as e:
            raise SuperweightError(f"cannot read the router of layer {i}: {e}") from None
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[0] != view.num_experts(i):
            raise SuperweightError(f"cannot read the router of layer {i} ({a.router}): expected a weight "
                                   f"[{view.num_experts(i)} experts, hidden], found "
                                   f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    return moe


class _Maxima:
    """The profile's hook callback: a few numbers and one input row per down projection."""

    def __init__(self, view: ModelView):
        self.view = view
        self.stats: dict[tuple, ExpertStat] = {}
        self.rows: dict[tuple, torch.Tensor] = {}
        self.prompt = 0

    def on_down(self, proj: DownProj, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor) -> None:
        # x: [tokens_e, intermediate], y: [tokens_e, hidden]
        kind = ROUTED if proj.expert is not None else SHARED if proj.shared else DENSE
        key = (proj.layer, proj.expert, kind)
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = ExpertStat(proj.layer, proj.expert, kind)
        s.routed += y.shape[0]
        if y.numel() == 0:
            return
        flat = int(y.abs().argmax())
        t, c = divmod(flat, y.shape[-1])
        v = float(y[t, c])
        if abs(v) > abs(s.value):
            s.value, s.channel, s.position, s.prompt = v, c, int(positions[t]), self.prompt
            self.rows[key] = x[t].detach().float().cpu().clone()


def _encode(lm, prompt: str) -> torch.Tensor:
    from superweight.detect import encode

    return encode(lm, prompt)


def profile_experts(lm, prompts: str | Sequence[str] | None = None) -> ExpertProfile:
    """One forward pass per prompt (default: detection's prompt), routing as the model does it.

    >>> from superweight.model import wrap_model
    >>> from superweight.testing import plant_super_expert, tiny_model, tiny_tokenizer
    >>> model = tiny_model("qwen3_moe")
    >>> _ = plant_super_expert(model, 2, 7, 11, expert=1)  # expert 1 of layer 2, W[7, 11] = 50
    >>> p = profile_experts(wrap_model(model, tiny_tokenizer()))
    >>> s = max(p.population(), key=lambda s: abs(s.value))
    >>> (s.layer, s.expert, s.channel, s.token)  # the largest expert output: where, which channel, token
    (2, 1, 7, '<s>')
    """
    from superweight.detect import DEFAULT_PROMPT

    view = lm.view
    _check_routers(view)
    prompts = [DEFAULT_PROMPT] if prompts is None else [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise SuperweightError("no prompt given")
    ids = [_encode(lm, p) for p in prompts]
    maxima = _Maxima(view)
    start = time.perf_counter()
    with torch.no_grad(), observe_down_projs(view, maxima.on_down, inline=True):
        for i, x in enumerate(ids):
            maxima.prompt = i
            lm.model(input_ids=x)
    seconds = time.perf_counter() - start
    tokens = [[lm.tokenizer.decode([int(t)]) for t in x[0]] for x in ids]
    experts = [view.num_experts(i) for i in range(view.num_layers)]
    for (layer, e, kind) in [(i, e, ROUTED) for i in range(view.num_layers) for e in range(experts[i])]:
        maxima.stats.setdefault((layer, e, kind), ExpertStat(layer, e, kind))  # never routed: 0
    stats = sorted(maxima.stats.values(), key=lambda s: (s.layer, s.kind != ROUTED, s.expert or 0))
    for s in stats:
        if s.position is not None:
            s.token = tokens[s.prompt][s.position] if s.position < len(tokens[s.prompt]) else None
    rows = {(k[0], k[1], k[2]): v for k, v in maxima.rows.items()}
    return ExpertProfile(stats, view.num_layers, experts, prompts, tokens, seconds, rows)


# --- the rule ----------------------------------------------------------------------------------------

@dataclass
class RuleThresholds:
    """The numbers the rule compared each expert's max |output| with."""

    percentile_value: float
    largest: float
    median: float
    threshold: float  # max(percentile_value, fraction × largest, min_ratio × median)
    population: int
    late_from: int  # first layer of the last quarter (outlier experts)

    def to_dict(self) -> dict:
        return asdict(self)


def rule(profile: ExpertProfile, config: SuperExpertConfig) -> tuple[list[ExpertStat], list[ExpertStat],
                                                                      RuleThresholds]:
    """(super experts, late-layer outlier experts, thresholds) by the paper's rule and our guard."""
    pop = [s for s in profile.population(config.include_shared) if s.routed]  # experts never routed have no maximum
    values = torch.tensor([abs(s.value) for s in pop], dtype=torch.float64)
    if values.numel() == 0:
        raise SuperweightError("no experts were profiled")
    pct = float(torch.quantile(values, config.percentile / 100))
    largest, median = float(values.max()), float(values.median())
    threshold = max(pct, config.fraction * largest, config.min_ratio * median)
    late_from = config.late_from(profile.num_layers)
    picked = [s for s in pop if abs(s.value) >= threshold and abs(s.value) > 0]
    picked.sort(key=lambda s: -abs(s.value))
    th = RuleThresholds(pct, largest, median, threshold, len(pop), late_from)
    return [s for s in picked if s.layer < late_from], [s for s in picked if s.layer >= late_from], th


# --- the explanation ---------------------------------------------------------------------------------

@dataclass
class SuperExpert:
    """An expert the rule picked, and what makes its massive output."""

    layer: int
    expert: int | None  # None: the layer's shared expert
    shared: bool
    value: float  # its largest output (signed)
    channel: int
    position: int
    token: str | None
    routed: int  # tokens routed to it in the profile
    ratio: float  # |value| / the median expert's maximum
    late: bool = False  # in the last quarter of the layers: an outlier expert
    weights: list[SuperWeight] = field(default_factory=list)  # the down projection weights making it
    weight_share: float | None = None  # the share of the output those weights make
    massive_first_layer: int | None = None  # the massive activation on (position, channel), if any
    massive_value: float | None = None  # ... its value after this expert's layer
    makes_massive: bool = False  # True when that activation first appears at this expert's layer

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.layer, self.expert)

    def label(self) -> str:
        return f"layer {self.layer}, {'shared expert' if self.shared else f'expert {self.expert}'}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = [w.to_dict() for w in self.weights]
        return d


def _weights(lm, s: ExpertStat, x: torch.Tensor | None, config: SuperExpertConfig, late: bool
             ) -> tuple[list[SuperWeight], float | None]:
    """The few weights W[channel, k] whose products X[pos, k]·W[channel, k] make the expert's output."""
    if x is None or s.channel is None:
        return [], None
    proj = lm.view.down_proj(s.layer, s.expert)
    w = proj.matrix().detach()  # [hidden, intermediate]
    w_row = w[s.channel].float().cpu()
    products = x * w_row * math.copysign(1.0, s.value)  # toward the output's sign
    top = products.topk(min(config.max_weights, products.numel()))
    taken = [(float(v), int(k)) for v, k in zip(top.values, top.indices)
             if float(v) >= config.min_product_share * abs(s.value)]
    share = sum(v for v, _ in taken) / abs(s.value) if s.value else 0.0
    if not taken or share < config.weight_share:
        return [], float(sum(top.values.tolist()) / abs(s.value)) if s.value else None
    out = []
    for _, k in taken:
        out.append(SuperWeight(
            layer=s.layer, row=s.channel, col=k, expert=s.expert, value=float(w[s.channel, k]),
            input_value=float(x[k]), output_value=s.value, position=s.position, token=s.token,
            dominance=dominance(x, w_row, k), output_without=s.value - float(x[k] * w_row[k]),
            rank=rank_by_magnitude(w, s.channel, k), round=1, late=late))
    return out, share


def _massive_at(lm, profile: ExpertProfile, picked: list[ExpertStat], config: SuperExpertConfig) -> dict:
    """For each picked expert: the residual stream's massive run on its (position, channel), if any."""
    out = {}
    for i in sorted({s.prompt for s in picked if s.prompt is not None}):
        ids = _encode(lm, profile.prompts[i])
        found = {(r.position, r.channel): r for r in runs(residual_scan(lm, ids, MassiveCriterion(config.massive_floor,
                                                                                         config.massive_ratio)))}
        for s in picked:
            if s.prompt == i:
                out[(s.layer, s.expert, s.kind)] = found.get((s.position, s.channel))
    return out


def explain(lm, profile: ExpertProfile, picked: list[ExpertStat], thresholds: RuleThresholds,
            config: SuperExpertConfig) -> list[SuperExpert]:
    """Super expert records with the massive activation and the weights that make each output."""
    massive = _massive_at(lm, profile, picked, config)
    out = []
    for s in picked:
        late = s.layer >= thresholds.late_from
        row = profile.rows.get((s.layer, s.expert, s.kind))
        weights, share = _weights(lm, s, row, config, late)
        run = massive.get((s.layer, s.expert, s.kind))
        rec = SuperExpert(s.layer, s.expert, s.kind == SHARED, s.value, s.channel, s.position, s.token,
                          s.routed, abs(s.value) / thresholds.median if thresholds.median > 0 else float("inf"),
                          late, weights, share)
        if run is not None and run.first <= s.layer <= run.last:
            rec.massive_first_layer, rec.massive_value = run.first, run.value
            rec.makes_massive = run.first == s.layer
        out.append(rec)
    return out


@dataclass
class SuperExpertResult:
    """The profile, the rule's thresholds, the super experts and the late outlier experts."""

    profile: ExpertProfile
    thresholds: RuleThresholds
    super_experts: list[SuperExpert]
    outliers: list[SuperExpert]
    config: SuperExpertConfig
    verification: "ExpertVerification | None" = None

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "rule": RULE_TEXT, "thresholds": self.thresholds.to_dict(),
                "super_experts": [s.to_dict() for s in self.super_experts],
                "outlier_experts": [s.to_dict() for s in self.outliers],
                "profile": self.profile.to_dict(),
                "verification": self.verification.to_dict() if self.verification else None}


RULE_TEXT = ("max |down projection output| above the percentile of all experts' maxima, above "
             "fraction x the largest (Su et al. 2025), and above min_ratio x the median (ours); "
             "in the first `depth` of the layers (later: outlier experts)")


def super_experts(lm, prompts: str | Sequence[str] | None = None,
                  config: SuperExpertConfig | None = None) -> SuperExpertResult:
    """Profile the experts, apply the rule, explain each super expert.

    >>> result = super_experts(load_model("/tmp/demo-moe"))  # doctest: +SKIP
    >>> [(s.layer, s.expert, s.channel, s.weights[0].coord) for s in result.super_experts]  # doctest: +SKIP
    [(2, 1, 7, (2, 7, 11))]
    """
    config = config or SuperExpertConfig()
    profile = profile_experts(lm, prompts)
    early, late, th = rule(profile, config)
    explained = explain(lm, profile, early + late, th, config)
    return SuperExpertResult(profile, th, [e for e in explained if not e.late],
                             [e for e in explained if e.late], config)


# --- verification ------------------------------------------------------------------------------------

def check_experts(view: ModelView, experts: Iterable) -> list[tuple[int, int | None]]:
    """(layer, expert) pairs (expert None: the shared expert), validated against the model."""
    keys = []
    for item in experts:
        layer, expert = (item.layer, item.expert) if hasattr(item, "layer") else item
        proj = view.down_proj(int(layer), None if expert is None else int(expert))
        if proj.expert is None and not proj.shared:
            raise SuperweightError(f"layer {layer} has no shared expert (its MLP is dense)")
        keys.append((proj.layer, proj.expert))
    return keys


@contextmanager
def prune_experts(view: ModelView, experts: Iterable) -> Iterator[list[tuple[int, int | None]]]:
    """Zero the given experts' outputs for the block: each one's down projection (and bias) is 0,
    the router is untouched. Exact bits restored on exit (also offloaded, also on error)."""
    keys = check_experts(view, experts)
    with Overrides() as edits:
        for layer, expert in keys:
            proj = view.down_proj(layer, expert)
            edits.set_entries(proj.module, proj.param, proj.whole(), 0.0)
            bias = proj.bias_param or ("bias" if isinstance(getattr(proj.module, "bias", None), torch.Tensor)
                                       else None)
            if bias:
                edits.set_entries(proj.module, bias, proj.whole() if proj.bias_param else (Ellipsis,), 0.0)
        yield keys


@contextmanager
def _eager_attention(model) -> Iterator[None]:
    """Attention weights need the eager implementation; switch to it for the block."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def sink_share(lm, ids: torch.Tensor) -> float:
    """The attention-sink share: the mean attention weight on the first token, over layers, heads
    and every query after the first. The eager attention's weights are reduced in scoped hooks on
    the attention modules (`output_attentions` would leave transformers' capturing hooks behind)."""
    from superweight.model.hooks import hooked

    view = lm.view
    shares: list[float] = []

    def hook(module, inputs, output):
        w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[-2] > 1:  # [batch, heads, q, k]
            shares.append(float(w[:, :, 1:, 0].float().mean()))

    pairs = [(get_path(layer, view.adapter.attention), hook) for layer in view.layers]
    with torch.no_grad(), _eager_attention(lm.model), hooked(pairs):
        lm.model(input_ids=ids)
    if not shares:
        raise SuperweightError("the attention modules returned no attention weights")
    return sum(shares) / len(shares)


@dataclass
class Condition:
    """One model state of the verification: perplexity, attention-sink share, zero-shot accuracy."""

    name: str
    experts: list[list]  # [[layer, expert], ...] pruned (expert None: shared)
    ppl: float
    sink: float
    acc: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExpertVerification:
    """Baseline, super experts pruned, and random experts from the same layers pruned (per draw)."""

    variant: str
    text_source: str
    tokens: int
    base: Condition
    pruned: Condition
    random: list[Condition]

    def spread(self, what: str) -> tuple[float, float]:
        """(mean, standard deviation) of a figure ("ppl", "sink") over the random draws."""
        vals = [getattr(c, what) for c in self.random]
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else (math.nan, math.nan)

    def acc_spread(self, task: str) -> tuple[float, float]:
        vals = [c.acc[task] for c in self.random if task in c.acc]
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else (math.nan, math.nan)

    def to_dict(self) -> dict:
        ppl, sink = self.spread("ppl"), self.spread("sink")
        return {"variant": self.variant, "text_source": self.text_source, "tokens": self.tokens,
                "base": self.base.to_dict(), "pruned": self.pruned.to_dict(),
                "random": [c.to_dict() for c in self.random],
                "random_ppl_mean": ppl[0], "random_ppl_std": ppl[1],
                "random_sink_mean": sink[0], "random_sink_std": sink[1]}


def random_experts(view: ModelView, experts: Sequence[tuple[int, int | None]], seed: int) -> list[tuple[int, int]]:
    """As many routed experts as `experts`, each from the same layer, none of them in `experts`."""
    rng = random.Random(seed)
    taken = set(experts)
    out = []
    for layer, _ in experts:
        pool = [(layer, e) for e in range(view.num_experts(layer)) if (layer, e) not in taken]
        if not pool:
            raise SuperweightError(f"layer {layer} has no other expert to draw as a control")
        pick = rng.choice(pool)
        taken.add(pick)
        out.append(pick)
    return out


def verify_super_experts(lm, experts: Sequence, *, text: str | None = None, draws: int = 3,
                         seed: int = 0, max_tokens: int = 256, tasks: Sequence[str] = (),
                         limit: int | None = None, data_files: dict | None = None) -> ExpertVerification:
    """Prune the super experts, then `draws` seeded sets of random experts from the same layers.
    With `tasks` (lm-eval tasks; `limit` items each, `data_files` local copies), zero-shot accuracy too.

    >>> v = verify_super_experts(lm, result.super_experts, draws=5)  # doctest: +SKIP
    >>> v.pruned.sink < 0.5 * v.spread("sink")[0]  # doctest: +SKIP
    True
    """
    from superweight.verify import text_perplexity, verification_text

    if draws < 1:
        raise SuperweightError(f"draws must be at least 1, got {draws}")
    keys = check_experts(lm.view, experts)
    if not keys:
        raise SuperweightError("no super experts to verify")
    source = "given text"
    if text is None:
        text, source = verification_text()
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens].to(lm.device)
    if ids.shape[1] < 2:
        raise SuperweightError("the verification text is too short (fewer than 2 tokens)")

    def measure(name: str, pruned: list) -> Condition:
        with prune_experts(lm.view, pruned):
            c = Condition(name, [list(k) for k in pruned], text_perplexity(lm, ids), sink_share(lm, ids))
            if tasks:
                from superweight.evaluate.zeroshot import zero_shot

                c.acc = {t: r.acc for t, r in zero_shot(lm, tasks, limit=limit, data_files=data_files,
                                                        progress=False).items()}
        return c

    base = measure("unedited", [])
    pruned = measure("super experts pruned", keys)
    rand = [measure(f"random draw {d}", random_experts(lm.view, keys, seed + d)) for d in range(draws)]
    return ExpertVerification(PRUNE_VARIANT, source, int(ids.shape[1]), base, pruned, rand)


# --- check: did a copy keep the super experts? ---------------------------------------------------

@dataclass
class ExpertCheckRow(Record):
    """One super expert of the original, and the same expert in the other copy."""

    layer: int
    expert: int | None
    channel: int
    position: int
    token: str | None
    original: float  # the super expert's largest output (signed), on `channel`
    other: float  # the same expert's output on `channel` at the same token in the other copy
    ratio: float  # other / original (negative: the sign flipped; NaN: not routed there)
    survives: bool


def check_super_experts(a, b, prompt: str | None = None, config: SuperExpertConfig | None = None,
                        survive_ratio: float = 0.5) -> tuple[SuperExpertResult, list[ExpertCheckRow]]:
    """For each super expert of `a`: does `b` (quantized, fine-tuned) still make its massive output?
    The same expert's output on the same channel and token in `b`, same prompt; it survives when it
    keeps at least `survive_ratio` of the original's, with the same sign."""
    result = super_experts(a, prompt, config)
    found = result.super_experts
    if not found:
        return result, []
    ids = _encode(b, result.profile.prompts[0])
    seen: dict[tuple, float] = {}
    want = {(s.layer, s.expert): s for s in found}

    def on_down(proj, x, y, positions):
        s = want.get((proj.layer, proj.expert))
        if s is None or (proj.expert is None and not proj.shared):
            return
        hit = (positions == s.position).nonzero()
        if hit.numel():
            seen[(proj.layer, proj.expert)] = float(y[int(hit[0]), s.channel])

    layers = sorted({s.layer for s in found})
    with torch.no_grad(), observe_down_projs(b.view, on_down, layers, inline=True):
        b.model(input_ids=ids)
    rows = []
    for s in found:
        other = seen.get(s.key, math.nan)
        ratio = other / s.value if s.value and not math.isnan(other) else math.nan
        rows.append(ExpertCheckRow(s.layer, s.expert, s.channel, s.position, s.token, s.value, other, ratio,
                                   not math.isnan(ratio) and ratio >= survive_ratio))
    return result, rows


__all__ = ["ExpertCheckRow", "check_super_experts", "SuperExpertConfig", "ExpertStat", "ExpertProfile", "profile_experts", "rule", "explain",
           "SuperExpert", "SuperExpertResult", "super_experts", "prune_experts", "check_experts",
           "sink_share", "verify_super_experts", "random_experts", "ExpertVerification", "Condition",
           "PRUNE_VARIANT", "RULE_TEXT"]
