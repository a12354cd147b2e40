"""The paper's Figure 7 and Table 3 as data: evaluate each method at each setting, on one loaded model.

Every row is one (method, bits, block) or one W8A8 method, with the evaluation summary next to the
quantization summary, so the table shows where restoring the super weights pays (large blocks) and
where it does not (small groups, where each super weight is its own group's maximum anyway).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from superweight.errors import SuperweightError
from superweight.model.load import LoadedModel
from superweight.quantize.w8a8 import W8A8_METHODS, fake_w8a8
from superweight.quantize.rtn_clip import DEFAULT_Z
from superweight.quantize.weights import quantized
from superweight.records import SuperWeight

Evaluator = Callable[[LoadedModel], dict]  # lm -> {"wiki_ppl": ..., "average": ..., ...}
SWEEP_METHODS = ("rtn", "rtn-clip", "superweight")


@dataclass
class Row:
    method: str
    bits: int | None
    block: int | None
    metrics: dict
    quant: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "block": self.block, "metrics": self.metrics,
                "quant": self.quant, "seconds": round(self.seconds, 2)}


def baseline(lm: LoadedModel, evaluate: Evaluator) -> Row:
    start = time.perf_counter()
    return Row("fp32" if str(lm.dtype).endswith("float32") else str(lm.dtype).removeprefix("torch."),
               None, None, evaluate(lm), seconds=time.perf_counter() - start)


def weight_sweep(lm: LoadedModel, evaluate: Evaluator, bits: Sequence[int], blocks: Sequence[int],
                 methods: Sequence[str] = SWEEP_METHODS, z: float = DEFAULT_Z, granularity: str = "block",
                 tail: str = "ragged", super_weights: Sequence[SuperWeight] | None = None,
                 on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Evaluate every method × bits × block size; the model is restored after each."""
    from superweight.quantize import weight_config

    configs = [weight_config(m, bits=b, block=s, z=z, granularity=granularity, tail=tail)
               for b in bits for s in blocks for m in methods]  # validate all before any work
    rows = []
    for cfg in configs:
        start = time.perf_counter()
        try:
            with quantized(lm, cfg, super_weights) as report:
                metrics = evaluate(lm)
        except SuperweightError as e:
            if cfg.method != "hqq":
                raise
            metrics, report = {"error": str(e)}, None  # e.g. HQQ's divisibility rule
        row = Row(cfg.method, cfg.bits, cfg.block, metrics, report.summary() if report else {},
                  time.perf_counter() - start)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def w8a8_table(lm: LoadedModel, evaluate: Evaluator, methods: Sequence[str] = tuple(W8A8_METHODS),
               on_row: Callable[[Row], None] | None = None, **config) -> list[Row]:
    """Evaluate each W8A8 method (naive, superact, smoothquant) with the same bit widths."""
    rows = []
    for name in methods:
        cls = W8A8_METHODS[name]
        fields = {k: v for k, v in config.items() if k in cls.__dataclass_fields__}
        cfg = cls(**fields)
        start = time.perf_counter()
        with fake_w8a8(lm, cfg) as plan:
            metrics = evaluate(lm)
        row = Row(f"W{cfg.w_bits}A{cfg.a_bits} {name}", cfg.w_bits, None, metrics,
                  {"config": cfg.to_dict(), "plan": plan.summary()}, time.perf_counter() - start)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def share_kept(naive: float, smooth: float, ours: float) -> float | None:
    """Share of SmoothQuant's improvement over naive that ours keeps (the paper's Table 3 column):
    (naive − ours) / (naive − smoothquant), the same for lower-better perplexity and higher-better
    accuracy.

    >>> round(share_kept(5.83, 5.71, 5.74), 2)  # the paper's Llama-7B Wiki-2 numbers
    0.75
    """
    gain = naive - smooth
    return None if gain == 0 else (naive - ours) / gain


def plot_sweep(rows: Sequence[Row], metric: str, path, title: str = "") -> None:
    """Figure 7: the metric against block size, one line per method and bit width.

    Block sizes on a log2 axis; perplexities on a log axis, accuracies on a linear one.
    """
    from superweight.report.figures import new_figure, save_png

    fig, axes = new_figure(1, 1, (6.4, 4.2))
    ax = axes[0][0]
    series: dict[tuple, list] = {}
    for r in rows:
        if r.block is not None and metric in r.metrics:
            series.setdefault((r.method, r.bits), []).append((r.block, r.metrics[metric]))
    styles = {"rtn": ("o", "--"), "rtn-clip": ("x", ":"), "superweight": ("s", "-"), "hqq": ("^", "-.")}
    for (method, bits), pts in sorted(series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        pts.sort()
        marker, ls = styles.get(method, ("d", "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=ls,
                label=f"{method} W{bits}")
    base = [r for r in rows if r.block is None and r.bits is None and metric in r.metrics]
    if base:
        ax.axhline(base[0].metrics[metric], color="gray", lw=1, label=base[0].method)
    ax.set_xscale("log", base=2)
    if "ppl" in metric or "perplexity" in metric:
        ax.set_yscale("log")
    ax.set_xlabel("block size (entries of the flattened weight)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs block size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)
