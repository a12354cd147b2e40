"""Super experts as people see them: the layer × expert heatmap of output maxima (Su et al. 2025's
figure), the super expert table, the verification table, and the `check` rows for super experts."""

from __future__ import annotations

import math
from pathlib import Path

from superweight.report.figures import new_figure, save_png
from superweight.report.tables import Column, Table

_LEFT = ("expert", "token@pos", "made by weight(s)", "massive activation", "condition", "pruned")


def _table(title: str, cols: list[str]) -> Table:
    return Table(title, [Column(c, "left" if c in _LEFT else "right") for c in cols])


def _who(s) -> str:
    return "shared" if s.shared else str(s.expert)


def _massive(s) -> str:
    if s.massive_first_layer is None:
        return "none in the residual stream"
    if s.makes_massive:
        return f"makes it (first after layer {s.massive_first_layer}, {s.massive_value:.4g})"
    return f"adds to one from layer {s.massive_first_layer}"


def _weights(s) -> str:
    if not s.weights:
        share = "–" if s.weight_share is None else f"{100 * s.weight_share:.0f}%"
        return f"many (top few make {share})"
    return ", ".join(f"({w.layer}, {w.row}, {w.col}) = {w.value:.3g}" for w in s.weights) + \
        f" [{100 * (s.weight_share or 0):.0f}%]"


def super_expert_table(title: str, experts) -> Table:
    t = _table(title, ["layer", "expert", "max |output|", "× median", "channel", "token@pos", "routed",
                       "massive activation", "made by weight(s)"])
    for s in experts:
        t.rows.append([str(s.layer), _who(s), f"{abs(s.value):.4g}", f"{s.ratio:.3g}", str(s.channel),
                       f"{s.token!r}@{s.position}", str(s.routed), _massive(s), _weights(s)])
    return t


def verification_table(v) -> Table:
    t = _table(f"Verification: super experts pruned vs random experts from the same layers "
               f"({len(v.random)} seeded draw(s); {v.tokens} tokens of the {v.text_source})",
               ["condition", "pruned", "perplexity", "ppl ×", "sink share"]
               + [f"{task} acc" for task in sorted(v.base.acc)])
    pruned = lambda c: ", ".join(f"{l}:{'shared' if e is None else e}" for l, e in c.experts) or "–"  # noqa: E731
    for c in [v.base, v.pruned, *v.random]:
        t.rows.append([c.name, pruned(c), f"{c.ppl:.4g}", f"{c.ppl / v.base.ppl:.3g}", f"{c.sink:.3f}"]
                      + [f"{c.acc[k]:.3f}" for k in sorted(v.base.acc)])
    mp, sp = v.spread("ppl")
    ms, ss = v.spread("sink")
    t.rows.append(["random experts, mean ± sd", "", f"{mp:.4g} ± {sp:.2g}", f"{mp / v.base.ppl:.3g}",
                   f"{ms:.3f} ± {ss:.2g}"] + [f"{a:.3f} ± {b:.2g}" for a, b in map(v.acc_spread, sorted(v.base.acc))])
    t.sections = {0, 1}
    t.notes.append(f"Pruning: {v.variant}.")
    t.notes.append("Sink share: the mean attention weight on the first token (layers, heads, every query "
                   "after the first).")
    return t


def moe_tables(result) -> list[Table]:
    """The super expert report for a `SuperExpertResult`."""
    th, c = result.thresholds, result.config
    head = Table("", [], notes=[
        f"Mixture of experts: {sum(1 for n in result.profile.experts if n)} MoE layer(s), "
        f"{max(result.profile.experts)} routed experts each; profiled "
        f"{sum(len(t) for t in result.profile.tokens)} token(s) in {result.profile.seconds:.3g} s.",
        f"Rule: max |output| ≥ {th.threshold:.4g} = max(P{c.percentile:g} of {th.population} experts' maxima "
        f"{th.percentile_value:.4g}, {c.fraction:g} × the largest {th.largest:.4g}, {c.min_ratio:g} × the "
        f"median {th.median:.3g}); super experts in layers < {th.late_from}, outlier experts after."])
    tables = [head]
    if result.super_experts:
        tables.append(super_expert_table("Super experts", result.super_experts))
    else:
        head.notes.append("No super expert: no expert's output stands out by the rule.")
    if result.outliers:
        tables.append(super_expert_table(f"Late-layer outlier experts (layer ≥ {th.late_from}; reported apart)",
                                         result.outliers))
    if result.verification is not None:
        tables.append(verification_table(result.verification))
    return tables


def plot_expert_heatmap(profile, title: str, path: str | Path, marked=()) -> Path:
    """Layer × expert heatmap of each expert's max |down projection output| (log10), the shared
    expert in its own last column, super experts (`marked`: (layer, expert|None) keys) boxed."""
    import matplotlib.patches as patches
    import numpy as np

    grid, shared = profile.maxima()
    data = np.log10(np.clip(grid.numpy(), 1e-6, None))
    data[np.isnan(grid.numpy())] = np.nan
    width = data.shape[1]
    fig, axes = new_figure(1, 1, (min(14.0, 3.0 + 0.12 * width), 1.5 + 0.3 * data.shape[0]))
    ax = axes[0][0]
    im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log10 max |down_proj output|")
    for layer, expert in marked:
        x = width - 1 if expert is None else expert
        ax.add_patch(patches.Rectangle((x - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xlabel("expert" + (" (last column: shared expert)" if shared else ""))
    ax.set_ylabel("layer")
    ax.set_title(title)
    if width <= 64:
        ax.set_xticks(range(width))
        ax.set_xticklabels([str(i) for i in range(width - int(shared))] + (["S"] if shared else []),
                           fontsize=6)
    return save_png(fig, path)


def expert_check_table(rows, original: str, other: str) -> Table:
    t = _table(f"Super experts: {original} → {other}",
               ["layer", "expert", "channel", "token@pos", "max |output| original", "other", "ratio", "survives"])
    for r in rows:
        t.rows.append([str(r.layer), "shared" if r.expert is None else str(r.expert), str(r.channel),
                       f"{r.token!r}@{r.position}", f"{r.original:.4g}", f"{r.other:.4g}",
                       "–" if math.isnan(r.ratio) else f"{r.ratio:.3g}", "yes" if r.survives else "NO"])
    return t


def expert_heatmap_section(result, ref: str, how: str, png):
    """The report page's section with the heatmap (the tables are in the detection section);
    `png(draw, caption)` embeds a figure."""
    from superweight.report.html import Section

    marked = [s.key for s in result.super_experts + result.outliers]
    fig = png(lambda p: plot_expert_heatmap(result.profile, f"{ref}: max |expert output| per layer and expert",
                                            p, marked),
              "Each expert's largest |down projection output| over the profiled tokens (log10; blank: "
              "a dense layer, or never routed); red boxes: super experts and outlier experts.")
    return Section("Super experts: output maxima per layer and expert", [fig], how)
