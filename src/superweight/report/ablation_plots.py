"""Plots for the ablations: Table 1 as bars, Figure 5 (stopword shift), Figure 6 (scaling)."""

from __future__ import annotations

from pathlib import Path

from superweight.report.figures import new_figure, save_png

COLORS = {"Original": "#4c72b0", "Prune SW": "#c44e52", "Prune Non-SW": "#8c8c8c",
          "Prune SW + restore SA": "#55a868"}


def _times(ratio) -> str:
    return "" if ratio is None else f"×{ratio:.2g}"


def plot_ablation(result, title: str, path: str | Path) -> Path:
    """Table 1 as bars: average zero-shot accuracy (left) and perplexities on a log scale (right)."""
    rows = [r for r in result.rows if r.summary is not None]
    ppl = [m for m in result.columns() if m.is_perplexity]
    panels = (["average"] if any("average" in r.summary for r in rows) else []) + (["ppl"] if ppl else [])
    fig, axes = new_figure(1, max(1, len(panels)), size=(5.0 * max(1, len(panels)), 4.0))
    for ax, panel in zip(axes[0], panels):
        if panel == "average":
            vals = [100 * r.summary.get("average", float("nan")) for r in rows]
            bars = ax.bar(range(len(rows)), vals, color=[COLORS.get(r.condition, "#999") for r in rows])
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
            ax.set_xticks(range(len(rows)), [r.condition for r in rows], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("average zero-shot accuracy (%)")
        else:
            width = 0.8 / len(ppl)
            for j, m in enumerate(ppl):
                xs = [i + (j - (len(ppl) - 1) / 2) * width for i in range(len(rows))]
                vals = [r.summary.get(m.name, float("nan")) for r in rows]
                bars = ax.bar(xs, vals, width, label=m.label)
                ax.bar_label(bars, fmt="%.3g", fontsize=7)
            ax.set_yscale("log")
            ax.set_xticks(range(len(rows)), [r.condition for r in rows], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("perplexity (log scale)")
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def _original_vs_pruned(ax, labels: list[str], original: list[float], pruned: list[float]):
    """Side-by-side bars, original and super weights pruned; returns the pruned bars."""
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], original, 0.4, label="original", color=COLORS["Original"])
    bars = ax.bar([x + 0.2 for x in xs], pruned, 0.4, label="SW pruned", color=COLORS["Prune SW"])
    ax.legend(fontsize=8)
    return bars


def plot_stopwords(result, title: str, path: str | Path) -> Path:
    """Figure 5: named tokens and the tokens rising most, original vs pruned; group ratios."""
    fig, axes = new_figure(1, 2, size=(11.0, 4.0))
    shifts = result.named + [t for t in result.rising if t.token_id not in {n.token_id for n in result.named}]
    shifts = shifts[:10]
    ax = axes[0][0]
    _original_vs_pruned(ax, [repr(t.token) for t in shifts], [t.original for t in shifts],
                        [t.pruned for t in shifts])
    ax.set_xticks(range(len(shifts)), [repr(t.token) for t in shifts], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("average next-token probability")
    ax.set_title("tokens (paper's examples, then rising most)", fontsize=9)
    ax = axes[0][1]
    names = list(result.groups)
    bars = _original_vs_pruned(ax, names, [result.groups[n]["original"] for n in names],
                               [result.groups[n]["pruned"] for n in names])
    ax.bar_label(bars, labels=[_times(result.groups[n]["ratio"]) for n in names], fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("total probability of the group")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def plot_scale(result, title: str, path: str | Path) -> Path:
    """Figure 6: average accuracy (or perplexity) against the scaling factor, best factor marked."""
    fig, axes = new_figure(1, 1, size=(6.5, 4.0))
    ax = axes[0][0]
    f = result.factors
    order = sorted(range(len(f)), key=lambda i: f[i])
    xs = [f[i] for i in order]
    ppl = [m for m in result.columns() if m.is_perplexity]
    has_avg = any("average" in s for s in result.summaries)
    if has_avg:
        ys = [100 * result.summaries[i].get("average", float("nan")) for i in order]
        ax.plot(xs, ys, "o-", color=COLORS["Original"], label="average zero-shot accuracy")
        ax.set_ylabel("average zero-shot accuracy (%)")
    twin = ax.twinx() if has_avg and ppl else ax
    for m in ppl:
        ys = [result.summaries[i].get(m.name, float("nan")) for i in order]
        twin.plot(xs, ys, "s--", label=m.label, alpha=0.8)
    if ppl:
        twin.set_yscale("log")
        twin.set_ylabel("perplexity (log scale)")
    best = result.best
    ax.axvline(best, color=COLORS["Prune Non-SW"], linestyle=":", linewidth=1)
    ax.annotate(f"best: ×{best:g}", xy=(best, 0.95), xycoords=("data", "axes fraction"), ha="center",
                fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="#999"))
    ax.set_xlabel("super weight scaling factor")
    handles = ax.get_legend_handles_labels()
    if twin is not ax:
        h2 = twin.get_legend_handles_labels()
        handles = (handles[0] + h2[0], handles[1] + h2[1])
    ax.legend(*handles, fontsize=8, loc="center right")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
