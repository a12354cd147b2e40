"""The paper's ablations on any model: Table 1 (what pruning a super weight does, against pruning
7,000 other large weights and against restoring only its super activation), Figure 5 (which
next-token probabilities move when it is pruned) and Figure 6 (scaling it up or down).

Everything here is an intervention from `superweight.interventions` wrapped around an evaluation;
the evaluation is an `lm -> {"arc_easy": acc, ..., "average": x, "wiki_ppl": y}` callable — usually
`EvalSettings(...).evaluator()`, which also says what each figure is (`Metric`), so tests can pass a
cheap one. The super weights are a `Selection` (or records, "given coordinates"), so a result says
where they came from. Results are plain dataclasses whose `to_dict()` is the whole result file (header,
model, evaluation settings, figures); `superweight.report` presents them.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Callable, Iterable, Sequence

import torch

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.evaluate.metrics import AVERAGE_KEY, Metric, first_perplexity
from superweight.evaluate.settings import Evaluator, as_evaluator
from superweight.events import BATCH, STAGE, OnEvent, emitter
from superweight.interventions import (check_factor, measure_super_activations,
                                       prune, prune_top_k, restore_super_activation, scale)
from superweight.records import SuperWeight
from superweight.selection import Selection, as_selection

ORIGINAL, PRUNE_SW, PRUNE_NON_SW, RESTORE_SA = ("Original", "Prune SW", "Prune Non-SW",
                                                "Prune SW + restore SA")
CONDITIONS = (ORIGINAL, PRUNE_SW, PRUNE_NON_SW, RESTORE_SA)
DEFAULT_K = 7000  # the paper's "Prune Non-SW": the 7,000 largest-magnitude other weights
DEFAULT_FACTORS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # Figure 6's scaling factors
DEFAULT_PASSAGES = 500  # Figure 5: LAMBADA passages averaged over, as in the paper
DEFAULT_TOP = 10  # tokens listed rising and falling
NO_SUPER_WEIGHT = "no super weight found"


# --- Table 1 -----------------------------------------------------------------------------------

@dataclass
class Row:
    """One condition of the table: its figures (None when it could not run) and why not."""

    condition: str
    summary: dict | None = None
    seconds: float = 0.0
    note: str = ""
    detail: dict = field(default_factory=dict)  # e.g. what Prune Non-SW zeroed, what restore wrote

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        return cls(d["condition"], d.get("summary"), d.get("seconds", 0.0), d.get("note", ""), d.get("detail", {}))


@dataclass
class AblationResult:
    """The paper's Table 1 on one model."""

    rows: list[Row]
    super_weights: list[SuperWeight]
    k: int
    config: dict = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)  # what the evaluator's figures are
    model: dict | None = None  # `LoadedModel.describe()`
    super_weight_source: str | None = None  # `Selection.source`
    evaluation: dict | None = None  # the evaluator's settings (`EvalSettings.to_dict()`)

    def row(self, condition: str) -> Row:
        return next(r for r in self.rows if r.condition == condition)

    def columns(self) -> list[Metric]:
        """The figures of the rows, described and in table order (tasks, average, perplexities)."""
        return _columns([r.summary for r in self.rows], self.metrics)

    def to_dict(self) -> dict:
        return {**_header("ablate", self), "quick": _quick(self.evaluation),
                "rows": [r.to_dict() for r in self.rows], "k": self.k,
                "super_weights": [s.to_dict() for s in self.super_weights], "config": self.config,
                "metrics": [m.to_dict() for m in self.columns()]}

    @classmethod
    def from_dict(cls, d: dict) -> "AblationResult":
        """A result read back from its JSON (`to_dict()`), e.g. to draw it again."""
        return cls([Row.from_dict(r) for r in d["rows"]], _records(d), d["k"], d.get("config", {}),
                   [Metric.from_dict(m) for m in d.get("metrics", [])], **_made_by(d))


def _records(d: dict) -> list[SuperWeight]:
    return [SuperWeight.from_dict(s) for s in d.get("super_weights", [])]


def _header(kind: str, result) -> dict:
    """The result file's header: versions, command, and what made `result` (model, super weights'
    source, evaluation settings)."""
    return result_header(kind, model=result.model, super_weight_source=result.super_weight_source,
                         evaluation=result.evaluation)


def _quick(evaluation: dict | None) -> bool:
    return bool((evaluation or {}).get("quick"))


def _made_by(d: dict) -> dict:
    return {"model": d.get("model"), "super_weight_source": d.get("super_weight_source"),
            "evaluation": d.get("evaluation")}


def _columns(summaries: Iterable[dict | None], known: Sequence[Metric]) -> list[Metric]:
    from superweight.evaluate.metrics import describe

    keys: list[str] = []
    for s in summaries:
        keys += [k for k in (s or {}) if k not in keys]
    return describe(keys, known)


def with_activation_sizes(lm, super_weights: Sequence[SuperWeight]) -> list[SuperWeight]:
    """Records that carry their super activation's size, measured on a probe text when missing."""
    sws = list(super_weights)
    missing = [i for i, s in enumerate(sws) if not s.output_value]
    if missing:
        measured = measure_super_activations(lm, [sws[i] for i in missing])
        for i, m in zip(missing, measured):
            sws[i] = m
    return sws


def ablation_table(lm, super_weights: Selection | Sequence, evaluator: Evaluator | Callable, *, k: int = DEFAULT_K,
                   modules: Sequence[str] | None = None,
                   conditions: Sequence[str] = CONDITIONS, on_event: OnEvent | None = None) -> AblationResult:
    """Evaluate the model as it is, with its super weights pruned, with the `k` largest other
    weights pruned instead, and with the super weights pruned but their super activation restored.

    With no super weights, only Original (and Prune Non-SW, which needs none) runs; the other rows
    say why they are empty. Every edit is undone before the next row, bit for bit. `on_event` hears
    each condition run as a "stage" (its `Row` when it ends; `superweight.events`).

    An example with a real evaluation (minutes; a tiny one runs in `tests/test_ablation.py`):

    >>> settings = EvalSettings.from_options(quick=True)  # doctest: +SKIP
    >>> result = ablation_table(lm, resolve_super_weights(lm), settings.evaluator())  # doctest: +SKIP
    >>> result.row("Prune SW").summary["average"]  # doctest: +SKIP

    `super_weights`: a `Selection` (its source is recorded) or records ("given coordinates").
    """
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise SuperweightError(f"unknown condition {unknown[0]!r}; choose from {', '.join(CONDITIONS)}")
    if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SuperweightError(f"K must be a positive whole number of weights, got {k!r}")
    evaluator = as_evaluator(evaluator)
    selection = as_selection(super_weights)
    sws = lm.view.check(selection.super_weights)
    if PRUNE_NON_SW in conditions:  # validate K (and the module globs) before any evaluation is spent
        from superweight.interventions import top_k_weights
        top_k_weights(lm.view, k, sws, modules)
    if sws and RESTORE_SA in conditions:
        sws = with_activation_sizes(lm, sws)
    rows, emit = [], emitter(on_event)
    runs = [c for c in conditions if sws or c not in (PRUNE_SW, RESTORE_SA)]
    for condition in conditions:
        if condition not in runs:
            rows.append(Row(condition, note=NO_SUPER_WEIGHT))
            continue
        index = runs.index(condition) + 1
        emit(STAGE, condition, index, len(runs))
        rows.append(_run_row(lm, condition, sws, evaluator, k, modules))
        emit(STAGE, condition, index, len(runs), rows[-1], ended=True)
    return AblationResult(rows, sws, k, {"modules": list(modules) if modules else None}, evaluator.metrics,
                          lm.describe(), selection.source, evaluator.settings)


def _run_row(lm, condition: str, sws, evaluator: Evaluator, k: int, modules) -> Row:
    view = lm.view
    detail: dict = {}
    ctx = {ORIGINAL: lambda: nullcontext(),
           PRUNE_SW: lambda: prune(view, sws),
           PRUNE_NON_SW: lambda: prune_top_k(view, k, exclude=sws, modules=modules),
           RESTORE_SA: lambda: restore_super_activation(view, sws)}[condition]
    start = time.perf_counter()
    with ctx() as info:
        summary = dict(evaluator(lm))
    if info is not None:
        detail = info.to_dict()
    return Row(condition, summary, time.perf_counter() - start, detail=detail)


# --- Figure 6: scaling ---------------------------------------------------------------------------

@dataclass
class ScaleResult:
    """Figure 6: the model's figures with its super weights multiplied by each factor."""

    factors: list[float]
    summaries: list[dict]
    super_weights: list[SuperWeight]
    best_by: str  # the metric that picks the best factor
    seconds: list[float] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)  # what the evaluator's figures are
    model: dict | None = None  # `LoadedModel.describe()`
    super_weight_source: str | None = None  # `Selection.source`
    evaluation: dict | None = None  # the evaluator's settings (`EvalSettings.to_dict()`)

    @property
    def best(self) -> float:
        """The best factor by `best_by` (ties: the first perplexity, then closeness to 1)."""
        cols = {m.name: m for m in self.columns()}
        by, ppl = cols[self.best_by], first_perplexity(cols.values())

        def key(i: int) -> tuple:
            s = self.summaries[i]
            v = s.get(by.name, math.nan)
            primary = math.inf if math.isnan(v) else (-v if by.higher_is_better else v)
            tie = s.get(ppl.name, math.inf) if ppl else math.inf
            return (primary, tie, abs(self.factors[i] - 1.0))
        return self.factors[min(range(len(self.factors)), key=key)]

    def columns(self) -> list[Metric]:
        return _columns(self.summaries, self.metrics)

    def to_dict(self) -> dict:
        return {**_header("scale", self), "quick": _quick(self.evaluation),
                "factors": self.factors, "summaries": self.summaries, "best_factor": self.best,
                "best_by": self.best_by, "seconds": self.seconds,
                "super_weights": [s.to_dict() for s in self.super_weights],
                "metrics": [m.to_dict() for m in self.columns()]}

    @classmethod
    def from_dict(cls, d: dict) -> "ScaleResult":
        return cls(list(d["factors"]), list(d["summaries"]), _records(d), d["best_by"], list(d.get("seconds", [])),
                   [Metric.from_dict(m) for m in d.get("metrics", [])], **_made_by(d))


def parse_factors(factors: Iterable) -> list[float]:
    out = [check_factor(f) for f in factors]
    if not out:
        raise SuperweightError("no scaling factor given")
    return list(dict.fromkeys(out))


def scale_sweep(lm, super_weights: Selection | Sequence, factors: Iterable, evaluator: Evaluator | Callable,
                on_event: OnEvent | None = None) -> ScaleResult:
    """Evaluate the model with its super weights multiplied by each factor (1 = as it is). The best
    factor is the highest average accuracy, else the lowest perplexity, else the highest accuracy.
    `on_event` hears each factor as a "stage" named `× f` (its summary when it ends).

    >>> r = scale_sweep(lm, sws, [0, 1, 2], EvalSettings.from_options(quick=True).evaluator())  # doctest: +SKIP
    >>> r.best  # doctest: +SKIP

    `super_weights`: a `Selection` (its source is recorded) or records ("given coordinates").
    """
    factors = parse_factors(factors)
    evaluator = as_evaluator(evaluator)
    selection = as_selection(super_weights)
    sws = lm.view.check(selection.super_weights)
    if not sws:
        raise SuperweightError(NO_SUPER_WEIGHT + ": nothing to scale (give coordinates)")
    summaries, seconds, emit = [], [], emitter(on_event)
    for i, f in enumerate(factors, 1):
        emit(STAGE, f"× {f:g}", i, len(factors))
        start = time.perf_counter()
        with scale(lm.view, sws, f):
            summaries.append(dict(evaluator(lm)))
        seconds.append(time.perf_counter() - start)
        emit(STAGE, f"× {f:g}", i, len(factors), summaries[-1], ended=True)
    cols = _columns(summaries, evaluator.metrics)
    best = (next((m for m in cols if m.name == AVERAGE_KEY), None) or first_perplexity(cols)
            or next((m for m in cols if m.is_accuracy), None))
    if best is None:
        raise SuperweightError("the evaluation returned neither an accuracy nor a perplexity")
    return ScaleResult(factors, summaries, sws, best.name, seconds, evaluator.metrics, lm.describe(),
                       selection.source, evaluator.settings)


# --- Figure 5: stopwords -------------------------------------------------------------------------

PUNCTUATION = (".", ",", "!", "?", ";", ":", "'", '"', "-", "(", ")", "'s", "...", "--")


def stopword_list() -> list[str]:
    """The standard English stopword list (NLTK's 179 words), shipped as package data."""
    text = resources.files("superweight").joinpath("data/stopwords_en.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def strip_last_word(passage: str) -> str:
    """A LAMBADA passage without its last word (the prediction target): the prompt."""
    head, _, _ = passage.rstrip().rpartition(" ")
    return head


@dataclass
class TokenShift:
    token_id: int
    token: str
    original: float  # average next-token probability, model as it is
    pruned: float  # ... with the super weights pruned

    @property
    def ratio(self) -> float | None:
        return self.pruned / self.original if self.original > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenShift":
        return cls(d["token_id"], d["token"], d["original"], d["pruned"])


@dataclass
class StopwordResult:
    """Figure 5: how the average next-token distribution moves when the super weights are pruned."""

    passages: int
    super_weights: list[SuperWeight]
    rising: list[TokenShift]  # largest increase in average probability first
    falling: list[TokenShift]  # largest decrease first
    groups: dict[str, dict]  # "stopwords" / "punctuation" → {"original", "pruned", "ratio", "tokens"}
    named: list[TokenShift]  # the paper's examples: "the", ".", ","
    seconds: float = 0.0
    model: dict | None = None  # `LoadedModel.describe()`
    super_weight_source: str | None = None  # `Selection.source`
    data: str | None = None  # what the passages are, e.g. "lambada"

    def to_dict(self) -> dict:
        return {**result_header("stopwords", model=self.model, super_weight_source=self.super_weight_source,
                                data=self.data),
                "passages": self.passages, "super_weights": [s.to_dict() for s in self.super_weights],
                "rising": [t.to_dict() for t in self.rising], "falling": [t.to_dict() for t in self.falling],
                "groups": self.groups, "named": [t.to_dict() for t in self.named],
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "StopwordResult":
        shifts = {k: [TokenShift.from_dict(t) for t in d.get(k, [])] for k in ("rising", "falling", "named")}
        return cls(d["passages"], _records(d), shifts["rising"], shifts["falling"], d.get("groups", {}),
                   shifts["named"], d.get("seconds", 0.0), d.get("model"), d.get("super_weight_source"),
                   d.get("data"))


def next_token_distribution(lm, prompts: Sequence[str], batch_size: int = 8,
                            on_event: OnEvent | None = None, name: str = "prompts") -> torch.Tensor:
    """The average over prompts of the next-token probability distribution after each one, [vocab].

    Prompts are left-padded in batches, with position ids counted from each prompt's first real
    token and padding masked out, so every prompt is scored as if alone; only the last position's
    logits are computed. `on_event` hears a "batch" event named `name` (prompts done) after each batch.
    """
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    total, emit = None, emitter(on_event)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            enc = [tok(p)["input_ids"] for p in prompts[start:start + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for i, e in enumerate(enc):
                ids[i, width - len(e):] = torch.tensor(e)
                mask[i, width - len(e):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            inputs = dict(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                          position_ids=positions.to(lm.device))
            try:
                logits = lm.model(**inputs, logits_to_keep=1).logits[:, -1]  # [batch, vocab]
            except TypeError:  # a model without logits_to_keep
                logits = lm.model(**inputs).logits[:, -1]
            probs = logits.float().softmax(-1).sum(0)  # [vocab]
            total = probs if total is None else total + probs
            emit(BATCH, name, min(start + batch_size, len(prompts)), len(prompts), ended=True)
    return (total / len(prompts)).cpu()


def _single_tokens(tok, texts: Iterable[str]) -> dict[int, str]:
    out = {}
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.setdefault(ids[0], t)
    return out


def stopword_shift(lm, super_weights: Selection | Sequence, passages: Sequence[str], *, top: int = DEFAULT_TOP,
                   batch_size: int = 8, data: str | None = None, on_event: OnEvent | None = None) -> StopwordResult:
    """Figure 5: the average next-token distribution over `passages` (last word removed), with the
    model as it is and with its super weights pruned; tokens rising and falling most; and the total
    probability of standard English stopwords (" the", " of", … as single tokens after a space) and
    of punctuation, before and after. `on_event` hears two stages ("original", then "pruned") and
    the batches of prompts of each. `super_weights`: a `Selection` (its source is recorded) or
    records; `data` names the passages for the record (e.g. "lambada").

    >>> r = stopword_shift(lm, sws, lambada_passages(500))  # doctest: +SKIP
    >>> r.groups["stopwords"]["ratio"]  # doctest: +SKIP
    """
    selection = as_selection(super_weights)
    sws = lm.view.check(selection.super_weights)
    keys = [sw.key for sw in sws]
    if not keys:
        raise SuperweightError(NO_SUPER_WEIGHT + ": nothing to prune (give coordinates)")
    prompts = [p for p in (strip_last_word(x) for x in passages) if p]
    if not prompts:
        raise SuperweightError("no passages to score")
    start, emit = time.perf_counter(), emitter(on_event)
    emit(STAGE, "original", 1, 2)
    p_orig = next_token_distribution(lm, prompts, batch_size, on_event, "passages")
    emit(STAGE, "original", 1, 2, ended=True)
    emit(STAGE, "pruned", 2, 2)
    with prune(lm.view, keys):
        p_pruned = next_token_distribution(lm, prompts, batch_size, on_event, "passages")
    emit(STAGE, "pruned", 2, 2, ended=True)
    tok = lm.tokenizer

    def shift(i: int, label: str | None = None) -> TokenShift:
        return TokenShift(i, label if label is not None else tok.decode([i]),
                          float(p_orig[i]), float(p_pruned[i]))

    diff = p_pruned - p_orig
    rising = [shift(i) for i in torch.topk(diff, top).indices.tolist()]
    falling = [shift(i) for i in torch.topk(-diff, top).indices.tolist()]
    words = _single_tokens(tok, [" " + w for w in stopword_list()])
    punct = _single_tokens(tok, PUNCTUATION)
    groups = {}
    for name, ids in (("stopwords", words), ("punctuation", punct)):
        idx = torch.tensor(sorted(ids), dtype=torch.long)
        o = float(p_orig[idx].sum()) if len(idx) else 0.0
        p = float(p_pruned[idx].sum()) if len(idx) else 0.0
        groups[name] = {"tokens": len(idx), "original": o, "pruned": p,
                        "ratio": p / o if o > 0 else None}
    named = [shift(i, t) for i, t in _single_tokens(tok, [" the", ".", ","]).items()]
    return StopwordResult(len(prompts), sws, rising, falling, groups, named,
                          time.perf_counter() - start, lm.describe(), selection.source, data)
