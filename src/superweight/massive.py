"""Massive activations: found in the residual stream, then explained at the layer that makes them.

Why start from the residual stream: a super weight matters because of the huge value it writes into
the residual stream, and a huge value there can come from other things too — a post-MLP norm with a
huge gain on one channel (Gemma 2/3), the attention branch, the token embedding, or one huge input
feature feeding several rows of a down projection. Comparing each layer's down projection with the
median layer (the paper's search, `superweight.detect`) misses an activation that persists through
most layers; comparing a value with the typical magnitude *of its own hidden state* does not.

One forward pass, reduced inside the hooks (no whole activation is kept past its own layer):
- per layer, the residual stream after it (and the embedding output entering layer 0): its largest
  |value| with channel and position, its median |value|, and every entry that is *massive*:
  |h| > `floor` and > `ratio` × that median (the literature's working definition: over 100 and
  about 1,000× the median magnitude; Sun et al. 2024, "Massive Activations in Large Language
  Models", arXiv 2402.17762);
- where an entry first becomes massive, the layer's increment on it, split into the attention
  branch and the MLP branch (their outputs are hooked; `Adapter.branches`), the MLP output before
  any post-MLP norm, and the down projection's input row X[pos, :] (per expert for MoE, with the
  routing weight).
After the pass the origin is read from those numbers and the weights (`DownProj.row/column/rank`):
the branch that adds most of the increment; within the MLP, the post-MLP norm when an ordinary
gain would leave the value below the massive threshold; else the few products X[pos, k]·W[row, k]
that make it — one row's weights (a super weight candidate), or one huge input feature's column
feeding several rows (reported together, found at once); else "MLP" (many weights).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch

from superweight.model.adapters import DownProj, ModelView
from superweight.model.hooks import (observe_down_projs, observe_inputs, observe_io, observe_outputs,
                                     observe_routing)
from superweight.records import (ATTENTION, EMBEDDING, EMBEDDING_LAYER, INPUT_FEATURE, MLP, NORM_GAIN,
                                 SUPER_WEIGHT, MassiveActivation, Origin, SuperWeight)
from superweight.tensor.stats import dominance

MAX_SITES = 256  # massive entries kept per layer (the largest); real models have a handful
MASSIVE_FLOOR = 100.0  # a massive activation: |h| above this ...
MASSIVE_RATIO = 1000.0  # ... and this many times the median |h| of its own hidden state


@dataclass
class ResidualLayer:
    """The residual stream after one layer (`layer` -1: the embedding output entering layer 0)."""

    layer: int
    value: float  # signed value of the largest |h|
    channel: int
    position: int
    median: float  # median |h| over the whole hidden state [tokens, hidden]
    threshold: float  # |h| above this is massive here: max(floor, ratio × median)
    massive: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)  # (pos, ch) → h
    at: float | None = None  # h at a watched (position, channel), when asked

    @property
    def ratio(self) -> float:
        return abs(self.value) / self.median if self.median > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["massive"] = [[p, c, v] for (p, c), v in sorted(self.massive.items())]
        return d


@dataclass
class Site:
    """What the layer that first makes (position, channel) massive adds there."""

    layer: int
    position: int
    channel: int
    value: float  # h after the layer
    before: float  # h entering the layer
    threshold: float  # the massive threshold of this layer
    attention: float | None = None  # the attention branch's output there
    mlp: float | None = None  # the MLP branch's output (after any post-MLP norm)
    mlp_raw: float | None = None  # the MLP output before the post-MLP norm


@dataclass
class DownInput:
    """A down projection's input row X[pos, :] at a site's position, and its routing weight."""

    proj: DownProj
    x: torch.Tensor  # [intermediate], float32 on the CPU
    scale: float | None = None  # routing weight (routed experts); None for dense projections


@dataclass(frozen=True)
class MassiveCriterion:
    """The one definition of a massive activation, used by detection (the residual scan) and by
    verification (`interventions.ablate_massive`), so the two cannot drift apart: an entry of a
    hidden state h is massive when |h| > max(`floor`, `ratio` × the median |h| of that hidden state).

    >>> criterion = MassiveCriterion(floor=100, ratio=1000)
    >>> h = torch.full((4, 8), 0.5); h[0, 3] = 2000.0   # [tokens, hidden]
    >>> criterion.threshold(h), criterion.mask(h).nonzero().tolist()
    (500.0, [[0, 3]])
    """

    floor: float = MASSIVE_FLOOR
    ratio: float = MASSIVE_RATIO

    def median(self, h: torch.Tensor) -> float:
        """The typical magnitude: the median |h| over every entry of the hidden state."""
        return float(h.abs().float().median())

    def threshold(self, h: torch.Tensor, median: float | None = None) -> float:
        """|h| above this is massive: over the absolute floor and `ratio` times the typical magnitude."""
        return max(self.floor, self.ratio * (self.median(h) if median is None else median))

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        """Where h is massive (a bool tensor of h's shape)."""
        return h.abs().float() > self.threshold(h)


def massive_entries(h: torch.Tensor, criterion: MassiveCriterion,
                    limit: int = MAX_SITES) -> tuple[float, float, dict[tuple[int, int], float]]:
    """(median |h|, threshold, {(pos, channel): value}) of a hidden state h [tokens, hidden];
    at most `limit` entries, the largest."""
    a = h.abs().float()
    median = criterion.median(h)
    threshold = criterion.threshold(h, median)
    mask = a > threshold
    if not bool(mask.any()):
        return median, threshold, {}
    idx = mask.nonzero()  # [n, 2]
    if idx.shape[0] > limit:
        keep = a[idx[:, 0], idx[:, 1]].topk(limit).indices
        idx = idx[keep]
    values = h[idx[:, 0], idx[:, 1]].float().tolist()
    return median, threshold, {(int(p), int(c)): v for (p, c), v in zip(idx.tolist(), values)}


def _stat(layer: int, h: torch.Tensor, criterion: MassiveCriterion) -> ResidualLayer:
    median, threshold, entries = massive_entries(h, criterion)
    flat = int(h.abs().argmax())
    pos, ch = divmod(flat, h.shape[-1])
    return ResidualLayer(layer, float(h[pos, ch]), ch, pos, median, threshold, entries)


class ResidualProbe:
    """Scoped hooks for one forward pass: residual statistics per layer and, where an entry first
    becomes massive, the numbers that explain it. Use `with probe.hooks(): model(...)`."""

    def __init__(self, view: ModelView, layers: Sequence[int], criterion: MassiveCriterion,
                 explain: bool = True, watch: tuple[int, int] | None = None):
        self.view, self.layers = view, sorted(layers)
        self.criterion, self.explain, self.watch = criterion, explain, watch
        self.rows: list[ResidualLayer] = []
        self.sites: dict[tuple[int, int, int], Site] = {}
        self.inputs: dict[tuple[int, int], list[DownInput]] = {}
        self._prev: set[tuple[int, int]] = set()
        self._normed: set[int] = set()  # layers whose MLP branch is a post-MLP norm
        self._cur: dict = {}  # this layer's tensors, dropped when the layer's output is seen

    def _row(self, layer: int, h: torch.Tensor) -> ResidualLayer:
        row = _stat(layer, h, self.criterion)
        if self.watch is not None:
            p, c = self.watch
            row.at = float(h[p, c]) if p < h.shape[0] and c < h.shape[1] else None
        self.rows.append(row)
        return row

    # --- hooks ---------------------------------------------------------------------------------
    def _on_input(self, layer: int, h: torch.Tensor) -> None:
        self._cur = {"in": h}
        if layer == 0:  # the embedding output: massive here means the embedding made it
            row = self._row(EMBEDDING_LAYER, h)
            for (p, c), v in row.massive.items():
                self.sites[(EMBEDDING_LAYER, p, c)] = Site(EMBEDDING_LAYER, p, c, v, 0.0, row.threshold)
            self._prev = set(row.massive)

    def _on_attention(self, layer: int, out: torch.Tensor) -> None:
        self._cur["attn"] = out

    def _on_mlp(self, layer: int, inp: torch.Tensor, out: torch.Tensor) -> None:
        self._cur["mlp"] = out
        self._cur["raw"] = inp if layer in self._normed else out

    def on_down(self, proj: DownProj, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor) -> None:
        """The down projection callback (`observe_down_projs`); share it when another observer
        hooks the down projections in the same pass (`hooks(down=False)`)."""
        if self.explain:
            self._cur.setdefault("down", []).append((proj, x, positions))

    def _on_routing(self, layer: int, weights: torch.Tensor) -> None:
        self._cur["routing"] = weights  # [tokens, experts]

    def _on_output(self, layer: int, h: torch.Tensor) -> None:
        row = self._row(layer, h)
        cur, self._cur = self._cur, {}
        new = [pc for pc in row.massive if pc not in self._prev]
        self._prev = set(row.massive)
        if not (self.explain and new):
            return
        for p, c in new:
            at = {key: float(t[p, c]) for key, t in cur.items()
                  if key in ("in", "attn", "mlp", "raw") and t.shape[0] > p}
            self.sites[(layer, p, c)] = Site(layer, p, c, row.massive[(p, c)], at.get("in", 0.0),
                                             row.threshold, at.get("attn"), at.get("mlp"), at.get("raw"))
        for p in sorted({p for p, _ in new}):
            self.inputs[(layer, p)] = self._down_inputs(cur, p)

    def _down_inputs(self, cur: dict, p: int) -> list[DownInput]:
        out = []
        routing = cur.get("routing")
        for proj, x, positions in cur.get("down", []):
            hit = (positions == p).nonzero()
            if hit.numel() == 0:
                continue
            scale = None
            if proj.expert is not None and routing is not None:
                scale = float(routing[p, proj.expert])
            out.append(DownInput(proj, x[int(hit[0])].float().cpu().clone(), scale))
        return out

    def hooks(self, down: bool = True):
        """The scoped hooks (a context manager); nothing is left registered after the block.
        `down=False`: the caller routes the down projections to `on_down` itself."""
        @contextmanager
        def scope() -> Iterator[None]:
            view, layers = self.view, self.layers
            with ExitStack() as stack:
                stack.enter_context(observe_inputs({i: view.layers[i] for i in layers}, self._on_input))
                if self.explain:
                    attn, mlp = {}, {}
                    for i in layers:
                        a, m = view.branches(i)
                        if a is not None:
                            attn[i] = a
                        if m is not None:
                            mlp[i] = m
                    self._normed = {i for i in layers if view.post_mlp_norm(i) is not None}
                    stack.enter_context(observe_outputs(attn, self._on_attention))
                    stack.enter_context(observe_io(mlp, self._on_mlp))
                    if down:
                        stack.enter_context(observe_down_projs(view, self.on_down, layers))
                    stack.enter_context(observe_routing(view, self._on_routing, layers))
                stack.enter_context(observe_outputs({i: view.layers[i] for i in layers}, self._on_output))
                yield
        return scope()


def residual_scan(lm, input_ids: torch.Tensor, criterion: MassiveCriterion,
                  layers: Sequence[int] | None = None, watch: tuple[int, int] | None = None
                  ) -> list[ResidualLayer]:
    """One forward pass: the residual stream's statistics per layer (embedding output first)."""
    layers = list(range(lm.view.num_layers)) if layers is None else list(layers)
    probe = ResidualProbe(lm.view, layers, criterion, explain=False, watch=watch)
    with torch.no_grad(), probe.hooks():
        lm.model(input_ids=input_ids)
    return probe.rows


# --- from per-layer entries to massive activations ---------------------------------------------

@dataclass
class Run:
    """One (position, channel) massive over an unbroken run of scanned layers."""

    position: int
    channel: int
    first: int
    last: int
    value: float  # at the first layer
    peak: float
    peak_layer: int
    median: float  # the first layer's median |h|


def runs(rows: Sequence[ResidualLayer]) -> list[Run]:
    """Unbroken runs of massive (position, channel) entries over the scanned layers, in order."""
    active: dict[tuple[int, int], Run] = {}
    done: list[Run] = []
    for row in rows:
        for key in [k for k in active if k not in row.massive]:
            done.append(active.pop(key))
        for (p, c), v in row.massive.items():
            run = active.get((p, c))
            if run is None:
                active[(p, c)] = Run(p, c, row.layer, row.layer, v, v, row.layer, row.median)
                continue
            run.last = row.layer
            if abs(v) > abs(run.peak):
                run.peak, run.peak_layer = v, row.layer
    return sorted(done + list(active.values()), key=lambda r: (r.first, r.channel, r.position))


@dataclass
class OriginConfig:
    """How an origin is read from the measured numbers (the defaults of `DetectConfig`)."""

    weight_share: float = 0.5  # a few weights make the MLP output when they make this share of it
    min_product_share: float = 0.1  # ... each making at least this share
    max_weights: int = 4  # ... and at most this many
    row_threshold: float = float("inf")  # |X·W| from which a row of one column counts as fed by it


def explain(view: ModelView, site: Site, inputs: Sequence[DownInput], config: OriginConfig,
            tokens: Sequence[str], late_from: int) -> Origin:
    """The origin of the massive activation first seen at `site` (see the module docstring)."""
    if site.layer == EMBEDDING_LAYER:
        return Origin(EMBEDDING)
    inc = site.value - site.before
    a, m = site.attention, site.mlp
    if a is None and m is not None:
        a = inc - m
    if m is None and a is not None:
        m = inc - a
    origin = Origin(MLP, increment=inc, mlp_raw=site.mlp_raw)
    if inc != 0 and a is not None:
        origin.attention_share, origin.mlp_share = a / inc, m / inc
    sign = math.copysign(1.0, inc or site.value)
    if a is not None and m is not None and a * sign > m * sign:
        origin.kind = ATTENTION
        return origin
    gain = view.norm_gain(site.layer)
    if gain is not None and m is not None:
        g, med = abs(float(gain[site.channel])), float(gain.abs().median())
        origin.gain, origin.gain_ratio = float(gain[site.channel]), (g / med if med > 0 else None)
        ordinary = site.value - m + (m * med / g if g > 0 else 0.0)  # the same layer with a median gain
        if abs(ordinary) <= site.threshold:
            origin.kind = NORM_GAIN
            return origin
    raw = site.mlp_raw if site.mlp_raw is not None else m if m is not None else inc
    if raw == 0 or not inputs:
        return origin
    _weights_origin(view, site, inputs, config, origin, raw, tokens, late_from)
    return origin


def _contributions(site: Site, inputs: Sequence[DownInput], raw: float, top: int
                   ) -> list[tuple[float, DownInput, int, float]]:
    """(signed contribution toward `raw`, input, column, scale) of every product X[pos,k]·W[row,k]."""
    c = site.channel
    routed = [d for d in inputs if d.scale is not None]
    shared = [d for d in inputs if d.scale is None and d.proj.expert is None and routed]
    scales = {id(d): d.scale if d.scale is not None else 1.0 for d in inputs}
    if shared:  # e.g. Qwen2-MoE's gated shared expert: its gate is what the routed experts leave
        routed_sum = sum(float(d.x @ d.proj.row(c)) * d.scale for d in routed)
        for d in shared:
            y = float(d.x @ d.proj.row(c))
            scales[id(d)] = min(1.0, max(0.0, (raw - routed_sum) / y)) if y else 0.0
    sign = math.copysign(1.0, raw)
    out = []
    for d in inputs:
        w_row = d.proj.row(c)  # [intermediate]
        s = scales[id(d)]
        products = d.x * w_row * s * sign  # [intermediate], toward the sign of raw
        best = products.topk(min(top, products.numel()))
        out += [(float(v), d, int(k), s) for v, k in zip(best.values, best.indices)]
    return sorted(out, key=lambda t: -t[0])


def _weights_origin(view: ModelView, site: Site, inputs: Sequence[DownInput], config: OriginConfig,
                    origin: Origin, raw: float, tokens: Sequence[str], late_from: int) -> None:
    ranked = _contributions(site, inputs, raw, config.max_weights)[:config.max_weights]
    taken = [t for t in ranked if t[0] >= config.min_product_share * abs(raw)]
    share = sum(v for v, *_ in taken) / abs(raw)
    if not taken or share < config.weight_share:  # many weights: say how little the largest few make
        origin.weight_share = sum(v for v, *_ in ranked) / abs(raw)
        return
    origin.weight_share = share
    _, top, col, scale = taken[0]
    column = (top.x[col] * top.proj.column(col) * scale).abs()  # [hidden]: what the input feeds
    rows = sorted({site.channel} | set((column >= config.row_threshold).nonzero().flatten().tolist()))
    record = lambda d, r, k, s: _weight_record(d, r, k, s, site, raw, tokens, late_from)  # noqa: E731
    row_weights = [record(d, site.channel, k, s) for _, d, k, s in taken]
    origin.input_value = float(top.x[col])
    if len(rows) >= 2:
        origin.kind, origin.column, origin.rows = INPUT_FEATURE, col, rows
        others = [record(top, r, col, scale) for r in rows if r != site.channel]
        origin.weights = sorted(row_weights + others, key=lambda s: (s.row, s.col))
    else:
        origin.kind, origin.weights = SUPER_WEIGHT, row_weights


def _weight_record(d: DownInput, row: int, col: int, scale: float, site: Site, raw: float,
                   tokens: Sequence[str], late_from: int) -> SuperWeight:
    """A super weight candidate with what was measured at the site's position."""
    w_row = d.proj.row(row)  # [intermediate]
    x = d.x
    out = raw if row == site.channel else float(x @ w_row) * scale
    p = site.position
    return SuperWeight(
        layer=site.layer, row=row, col=col, expert=d.proj.expert, value=float(w_row[col]),
        input_value=float(x[col]), output_value=out, position=p,
        token=tokens[p] if p < len(tokens) else None, dominance=dominance(x, w_row, col),
        output_without=out - float(x[col] * w_row[col]) * scale, rank=d.proj.rank(row, col),
        round=1, late=site.layer >= late_from)


def massive_activations(view: ModelView, probe: ResidualProbe, config: OriginConfig,
                        tokens: Sequence[str], late_from: int) -> list[MassiveActivation]:
    """Group the probe's runs by channel, first layer and origin into `MassiveActivation` records."""
    groups: dict[tuple, list[tuple[Run, Origin]]] = {}
    for run in runs(probe.rows):
        site = probe.sites.get((run.first, run.position, run.channel))
        origin = None if site is None else explain(  # None: the probe did not record the layer's parts
            view, site, probe.inputs.get((run.first, run.position), []), config, tokens, late_from)
        key = (run.channel, run.first) + ((origin.kind, origin.column, tuple(sorted(
            w.key for w in origin.weights if w.row == run.channel))) if origin else ())
        groups.setdefault(key, []).append((run, origin))
    out = []
    for members in groups.values():
        run, origin = max(members, key=lambda ro: abs(ro[0].value))
        out.append(MassiveActivation(
            channel=run.channel, position=run.position, first_layer=run.first,
            last_layer=max(r.last for r, _ in members), value=run.value, median=run.median,
            peak=run.peak, peak_layer=run.peak_layer,
            token=tokens[run.position] if run.position < len(tokens) else None,
            positions=sorted(r.position for r, _ in members), origin=origin,
            late=run.first >= late_from))
    return sorted(out, key=lambda a: (a.first_layer, -abs(a.value)))


__all__ = ["ResidualLayer", "ResidualProbe", "Site", "DownInput", "Run", "OriginConfig",
           "massive_entries", "MassiveCriterion", "residual_scan", "runs", "explain",
           "massive_activations", "MAX_SITES"]
