"""The paper's Figure 7 and Table 3 as data: evaluate each method at each setting, on one loaded model.

Every row is one (method, bits, block) or one W8A8 method, with the evaluation summary next to the
quantization summary, so the table shows where restoring the super weights pays (large blocks) and
where it does not (small groups, where each super weight is its own group's maximum anyway). The
Table 3 arithmetic (how much of SmoothQuant's gain the data-free method keeps) lives here too, read
from the rows' methods and the metrics' kinds — never from display labels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.evaluate.metrics import AVERAGE_KEY, Metric
from superweight.evaluate.settings import Evaluator, as_evaluator
from superweight.events import STAGE, OnEvent, emitter
from superweight.model.load import LoadedModel
from superweight.quantize.w8a8 import W8A8_METHODS
from superweight.records import SuperWeight
from superweight.selection import Selection, as_selection

SWEEP_METHODS = ("rtn", "rtn-clip", "superweight")
BASELINE, WEIGHT, W8A8 = "baseline", "weight", "w8a8"
TABLE3 = ("naive", "smoothquant", "superact")  # (baseline, calibrated reference, ours)
AS_LOADED = "as loaded"  # the stage that evaluates the model before any quantization


@dataclass
class Row:
    """One evaluated setting. `kind`: "baseline" (the model as loaded), "weight" or "w8a8"."""

    method: str
    bits: int | None
    block: int | None
    metrics: dict
    quant: dict = field(default_factory=dict)
    seconds: float = 0.0
    kind: str = WEIGHT
    a_bits: int | None = None

    @property
    def label(self) -> str:
        return f"W{self.bits}A{self.a_bits} {self.method}" if self.kind == W8A8 else self.method

    def to_dict(self) -> dict:
        return {"method": self.method, "kind": self.kind, "label": self.label, "bits": self.bits,
                "a_bits": self.a_bits, "block": self.block, "metrics": self.metrics, "quant": self.quant,
                "seconds": round(self.seconds, 2)}

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        return cls(d["method"], d["bits"], d["block"], d["metrics"], d.get("quant", {}), d.get("seconds", 0.0),
                   d.get("kind", WEIGHT), d.get("a_bits"))


@dataclass
class QuantResult:
    """Rows of one quantization run, the metrics that describe their figures, and its settings; and
    what made it (the model, the evaluation settings, the super weights kept and where they came
    from; for one config, its quantization report), so that `to_dict()` is the whole result file.
    `QuantResult.of` records them."""

    rows: list[Row]
    known_metrics: list[Metric] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    model: dict | None = None  # `LoadedModel.describe()`
    evaluation: dict | None = None  # the evaluator's settings (`EvalSettings.to_dict()`)
    super_weight_source: str | None = None  # `Selection.source`; None: no super weight was kept
    super_weights: list[SuperWeight] = field(default_factory=list)
    report: object | None = None  # one config's `QuantReport` (what was quantized and kept)

    @classmethod
    def of(cls, lm: LoadedModel, rows: list[Row], evaluate: Evaluator | Callable | None, config: dict,
           super_weights: Selection | Sequence[SuperWeight] | None = None, report=None) -> "QuantResult":
        """A result that records what made it: `lm`'s description, `evaluate`'s settings and metrics
        (None: nothing was evaluated) and the super weights kept (a `Selection` or records)."""
        evaluate = as_evaluator(evaluate) if evaluate is not None else None
        selection = as_selection(super_weights) if super_weights is not None else None
        return cls(rows, evaluate.metrics if evaluate else [], config, lm.describe(),
                   evaluate.settings if evaluate else None, selection.source if selection else None,
                   list(selection.super_weights) if selection else [], report)

    def metrics(self) -> list[Metric]:
        """The numeric figures of the rows, described and in table order."""
        from superweight.evaluate.metrics import describe

        keys: list[str] = []
        for r in self.rows:
            keys += [k for k, v in r.metrics.items() if isinstance(v, (int, float)) and k not in keys]
        return describe(keys, self.known_metrics)

    def share_kept(self) -> dict[str, float | None]:
        """Table 3: for the average accuracy and each perplexity, the share of SmoothQuant's
        improvement over naive W8A8 that the data-free method keeps; for perplexities also on their
        logarithm (`"log:<name>"`), which stays readable when naive W8A8 explodes. Per-task accuracies
        on a few items are too noisy for a ratio. Empty unless all three W8A8 rows are there."""
        by = {r.method: r.metrics for r in self.rows if r.kind == W8A8}
        if not all(m in by for m in TABLE3):
            return {}
        out: dict[str, float | None] = {}
        for m in self.metrics():
            if not (m.is_perplexity or m.name == AVERAGE_KEY):
                continue
            vals = [by[k].get(m.name) for k in TABLE3]
            if any(not isinstance(v, (int, float)) for v in vals):
                continue
            out[m.name] = share_kept(*vals)
            if m.is_perplexity and min(vals) > 0:
                out[f"log:{m.name}"] = share_kept(*(math.log(v) for v in vals))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "QuantResult":
        """A result read back from its JSON (`to_dict()`), e.g. to draw it again."""
        return cls([Row.from_dict(r) for r in d["rows"]], [Metric.from_dict(m) for m in d.get("metrics", [])],
                   d.get("config", {}), d.get("model"), d.get("evaluation"), d.get("super_weight_source"),
                   [SuperWeight.from_dict(s) for s in d.get("super_weights", [])])

    def to_dict(self) -> dict:
        out = {**result_header("quantize", model=self.model, evaluation=self.evaluation,
                               super_weight_source=self.super_weight_source,
                               super_weights=[s.to_dict() for s in self.super_weights])}
        if self.report is not None:
            out["report"] = self.report.to_dict()
        out.update({"config": self.config, "metrics": [m.to_dict() for m in self.metrics()],
                    "rows": [r.to_dict() for r in self.rows]})
        share = self.share_kept()
        if share:
            out["share_kept"] = share
        return out


def baseline(lm: LoadedModel, evaluate: Callable) -> Row:
    start = time.perf_counter()
    name = "fp32" if str(lm.dtype).endswith("float32") else str(lm.dtype).removeprefix("torch.")
    return Row(name, None, None, dict(evaluate(lm)), seconds=time.perf_counter() - start, kind=BASELINE)


def sweep_configs(bits: Sequence[int], blocks: Sequence[int], methods: Sequence[str] = SWEEP_METHODS,
                  z: float | None = None, granularity: str = "block", tail: str = "ragged") -> list:
    """Every method × bits × block size as validated configs. `z` goes to the methods that clip; a
    `z` that none of the methods uses is an error rather than a setting silently dropped."""
    from superweight.quantize import WEIGHT_METHODS, weight_config

    unknown = [m for m in methods if m not in WEIGHT_METHODS]
    if unknown:
        raise SuperweightError(f"unknown method {unknown[0]!r}; choose from {', '.join(WEIGHT_METHODS)}")
    clips = [m for m in methods if "z" in WEIGHT_METHODS[m].__dataclass_fields__]
    if z is not None and not clips:
        weight_config(methods[0], bits=bits[0], z=z)  # raises: names the methods that take z
    return [weight_config(m, bits=b, block=s, granularity=granularity, tail=tail,
                          **({"z": z} if z is not None and m in clips else {}))
            for b in bits for s in blocks for m in methods]


def evaluate_configs(lm: LoadedModel, evaluate: Callable, configs: Sequence,
                     super_weights: Sequence[SuperWeight] | None = None,
                     on_event: OnEvent | None = None, *, with_baseline: bool = False) -> list[Row]:
    """Evaluate the model under each config in turn (any registered method; restored after each),
    after the model as loaded with `with_baseline`. `on_event` hears each as a "stage" (its `Row`
    when it ends; `superweight.events`)."""
    from superweight.quantize.api import applied, handler_for

    emit, total = emitter(on_event), len(configs) + with_baseline
    rows = []
    if with_baseline:
        emit(STAGE, AS_LOADED, 1, total)
        rows.append(baseline(lm, evaluate))
        emit(STAGE, AS_LOADED, 1, total, rows[-1], ended=True)
    for cfg in configs:
        index = len(rows) + 1
        emit(STAGE, cfg.label(), index, total)
        start = time.perf_counter()
        try:
            with applied(lm, cfg, super_weights) as report:
                metrics = dict(evaluate(lm))
        except SuperweightError as e:
            if not cfg.refusal_is_result:
                raise
            metrics, report = {"error": str(e)}, None  # e.g. HQQ's divisibility rule
        kind = handler_for(cfg).kind
        quant = (report.summary() if report else {}) if kind == WEIGHT else {"config": cfg.to_dict(),
                                                                             "plan": report.summary()}
        rows.append(Row(**cfg.row_key(), metrics=metrics, quant=quant, seconds=time.perf_counter() - start,
                        kind=kind))
        emit(STAGE, cfg.label(), index, total, rows[-1], ended=True)
    return rows


def weight_sweep(lm: LoadedModel, evaluate: Callable, bits: Sequence[int], blocks: Sequence[int],
                 methods: Sequence[str] = SWEEP_METHODS, z: float | None = None, granularity: str = "block",
                 tail: str = "ragged", super_weights: Sequence[SuperWeight] | None = None,
                 on_event: OnEvent | None = None) -> list[Row]:
    """Evaluate every method × bits × block size; the model is restored after each."""
    configs = sweep_configs(bits, blocks, methods, z, granularity, tail)  # validate all before any work
    return evaluate_configs(lm, evaluate, configs, super_weights, on_event)


def w8a8_configs(methods: Sequence[str] = tuple(W8A8_METHODS), **settings) -> list:
    """One validated config per W8A8 method; a setting no method takes is an error."""
    unknown_methods = [m for m in methods if m not in W8A8_METHODS]
    if unknown_methods:
        raise SuperweightError(f"unknown W8A8 method {unknown_methods[0]!r}; choose from {', '.join(W8A8_METHODS)}")
    taken = {k for m in methods for k in W8A8_METHODS[m].__dataclass_fields__}
    unused = sorted(set(settings) - taken)
    if unused:
        raise SuperweightError(f"W8A8 setting {unused[0]!r} applies to none of {', '.join(methods)}")
    return [W8A8_METHODS[m](**{k: v for k, v in settings.items() if k in W8A8_METHODS[m].__dataclass_fields__})
            for m in methods]


def w8a8_table(lm: LoadedModel, evaluate: Callable, methods: Sequence[str] = tuple(W8A8_METHODS),
               on_event: OnEvent | None = None, **settings) -> list[Row]:
    """Evaluate each W8A8 method (naive, superact, smoothquant) with the same bit widths."""
    return evaluate_configs(lm, evaluate, w8a8_configs(methods, **settings), None, on_event)


def share_kept(naive: float, smooth: float, ours: float) -> float | None:
    """Share of SmoothQuant's improvement over naive that ours keeps (the paper's Table 3 column):
    (naive − ours) / (naive − smoothquant), the same for lower-better perplexity and higher-better
    accuracy.

    >>> round(share_kept(5.83, 5.71, 5.74), 2)  # the paper's Llama-7B Wiki-2 numbers
    0.75
    """
    gain = naive - smooth
    return None if gain == 0 else (naive - ours) / gain


def run_sweep(lm: LoadedModel, evaluate: Evaluator | Callable, bits: Sequence[int], blocks: Sequence[int],
              methods: Sequence[str] = SWEEP_METHODS, z: float | None = None, granularity: str = "block",
              tail: str = "ragged", super_weights: Selection | Sequence[SuperWeight] | None = None,
              on_event: OnEvent | None = None) -> QuantResult:
    """Figure 7: the model as loaded, then every method × bits × block size, as one result.
    `super_weights` (kept by the methods that keep them): a `Selection`, or records."""
    evaluate = as_evaluator(evaluate)
    configs = sweep_configs(bits, blocks, methods, z, granularity, tail)
    sws = as_selection(super_weights).super_weights if super_weights is not None else None
    rows = evaluate_configs(lm, evaluate, configs, sws, on_event, with_baseline=True)
    config = {"bits": list(bits), "blocks": list(blocks), "methods": list(methods), "z": z,
              "granularity": granularity, "tail": tail}
    return QuantResult.of(lm, rows, evaluate, config, super_weights)


def run_w8a8(lm: LoadedModel, evaluate: Evaluator | Callable, methods: Sequence[str] = tuple(W8A8_METHODS),
             on_event: OnEvent | None = None, **settings) -> QuantResult:
    """Table 3: the model as loaded, then each W8A8 method, as one result (with `share_kept()`)."""
    evaluate = as_evaluator(evaluate)
    rows = evaluate_configs(lm, evaluate, w8a8_configs(methods, **settings), None, on_event, with_baseline=True)
    return QuantResult.of(lm, rows, evaluate, {"methods": list(methods), **settings})


def run_single(lm: LoadedModel, config, evaluate: Evaluator | Callable | None = None,
               super_weights: Selection | Sequence[SuperWeight] | None = None, *, save=None, force: bool = False,
               on_event: OnEvent | None = None) -> QuantResult:
    """One weight config: the model as loaded and quantized, each evaluated (unless `evaluate` is
    None), the quantized weights saved to folder `save` when given (a checkpoint transformers loads,
    with its figures in the manifest); the model is restored after. `on_event` hears the two stages
    ("as loaded" only when evaluating).

    >>> r = run_single(lm, RTNConfig(bits=4), EvalSettings.from_options(quick=True).evaluator())  # doctest: +SKIP
    >>> r.rows[1].metrics["wiki_ppl"] / r.rows[0].metrics["wiki_ppl"]  # doctest: +SKIP
    """
    from superweight.quantize.export import quantization_manifest, save_checkpoint
    from superweight.quantize.weights import quantized

    selection = as_selection(super_weights) if super_weights is not None else None
    sws = selection.super_weights if selection else []
    evaluate = as_evaluator(evaluate) if evaluate is not None else None
    emit, total = emitter(on_event), 1 + (evaluate is not None)
    rows = []
    if evaluate is not None:
        emit(STAGE, AS_LOADED, 1, total)
        rows.append(baseline(lm, evaluate))
        emit(STAGE, AS_LOADED, 1, total, rows[-1], ended=True)
    emit(STAGE, config.label(), total, total)
    start = time.perf_counter()
    with quantized(lm, config, sws) as report:
        if evaluate is not None:
            rows.append(Row(config.method, config.bits, config.block, dict(evaluate(lm)), report.summary(),
                            seconds=time.perf_counter() - start))
        if save is not None:
            save_checkpoint(lm, save, quantization_manifest(lm, config, report, rows[-1].metrics if rows else None),
                            force=force)
    emit(STAGE, config.label(), total, total, rows[-1] if rows else report, ended=True)
    return QuantResult.of(lm, rows, evaluate, config.to_dict(), selection, report)
