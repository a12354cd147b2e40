"""Figure 7 as a plot: a metric against the block size, one line per method and bit width."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from superweight.evaluate.metrics import Metric
from superweight.report.figures import new_figure, save_png

STYLES = {"rtn": ("o", "--"), "rtn-clip": ("x", ":"), "superweight": ("s", "-"), "hqq": ("^", "-.")}


def plot_sweep(rows: Sequence, metric: Metric, path: str | Path, title: str = "") -> Path:
    """`metric` of each row against its block size (log2 axis); perplexities on a log axis,
    accuracies (in percent) on a linear one; the unquantized model as a horizontal line."""
    fig, axes = new_figure(1, 1, (6.4, 4.2))
    ax = axes[0][0]
    scale = 100.0 if metric.is_accuracy else 1.0
    series: dict[tuple, list] = {}
    for r in rows:
        v = r.metrics.get(metric.name)
        if r.block is not None and isinstance(v, (int, float)):
            series.setdefault((r.method, r.bits), []).append((r.block, scale * v))
    for (method, bits), pts in sorted(series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        pts.sort()
        marker, ls = STYLES.get(method, ("d", "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=ls, label=f"{method} W{bits}")
    base = [r for r in rows if r.kind == "baseline" and isinstance(r.metrics.get(metric.name), (int, float))]
    if base:
        ax.axhline(scale * base[0].metrics[metric.name], color="gray", lw=1, label=base[0].label)
    ax.set_xscale("log", base=2)
    if metric.is_perplexity:
        ax.set_yscale("log")
    ax.set_xlabel("block size (entries of the flattened weight)")
    ax.set_ylabel(metric.label + (f" ({metric.unit})" if metric.unit else ""))
    ax.set_title(title or f"{metric.label} vs block size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_sweep_metrics(result, out_dir: str | Path, title: str) -> list[Path]:
    """One PNG per figure of a sweep (`quantize_sweep_<name>.png`)."""
    return [plot_sweep(result.rows, m, Path(out_dir) / f"quantize_sweep_{m.name}.png",
                       f"{title}: {m.label} vs block size") for m in result.metrics()]
