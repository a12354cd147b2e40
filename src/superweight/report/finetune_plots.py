"""Fine-tuning figures: where SMT's blocks went (the SMT paper's module × layer picture), and the
super weights' drift over training."""

from __future__ import annotations

from pathlib import Path

from superweight.report.figures import new_figure, save_png


def plot_smt_placement(placement: dict, path: str | Path, title: str = "SMT: chosen blocks",
                       value: str = "blocks") -> Path:
    """Heatmap of chosen blocks per module kind (rows) × layer (columns), from `SMTPlan.placement()`.

    `value` is "blocks" (counts) or "params" (trainable parameters)."""
    import numpy as np

    grid = np.array(placement[value], dtype=float)  # [kinds, layers]
    kinds, layers = placement["kinds"], placement["layers"]
    fig, axes = new_figure(1, 1, (max(6.0, 0.32 * len(layers) + 2), 0.45 * len(kinds) + 1.6))
    ax = axes[0][0]
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds)
    step = max(1, len(layers) // 15)
    ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    ax.set_xlabel("layer")
    ax.set_ylabel("module")
    if grid.size and grid.max() > 0 and len(layers) <= 40:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if grid[i, j]:
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title(title)
    return save_png(fig, path)


def plot_drift(report_dict: dict, path: str | Path, title: str = "super weights during fine-tuning") -> Path:
    """Signed relative change, (value − original) / |original|, of each super weight (left) and each
    super activation on the probe (right) at every recorded step, from `DriftReport.to_dict()`."""
    snaps = report_dict["snapshots"]
    weight_names = [f"({w['layer']}, {w['row']}, {w['col']})" for w in report_dict["super_weights"]]
    site_names = [f"layer {s['layer']}, channel {s['row']}, position {s['position']}" for s in report_dict["sites"]]
    fig, axes = new_figure(1, 2, (11, 3.8))
    steps = [s["step"] for s in snaps]
    for ax, key, names, what in ((axes[0][0], "weights", weight_names, "super weight"),
                                 (axes[0][1], "activations", site_names, "super activation")):
        for i, name in enumerate(names):
            orig = snaps[0][key][i]
            ax.plot(steps, [(s[key][i] - orig) / abs(orig) if orig else 0.0 for s in snaps], marker="o", ms=3,
                    label=name)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("step")
        ax.set_ylabel(f"relative change of the {what}")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_png(fig, path)


def plot_finetune(result, folder: str | Path, ref: str) -> list[Path]:
    """The figures of one `finetune` run in `folder`: the drift over training (when super weights
    were watched) and, for SMT, where the blocks went."""
    folder = Path(folder)
    paths = []
    if result.super_weights and result.drift.snapshots:
        paths.append(plot_drift(result.drift.to_dict(), folder / "finetune-drift.png",
                                f"{ref}: super weights during fine-tuning ({result.config.method}, "
                                f"guard {result.config.guard})"))
    if result.smt is not None:
        paths.append(plot_smt_placement(result.smt.placement(), folder / "finetune-smt-placement.png",
                                        f"{ref}: SMT's chosen blocks ({len(result.smt.blocks)})"))
    return paths
