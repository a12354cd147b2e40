"""The paper's Figures 3 and 4 for any model: down projection spikes and the residual stream."""

from __future__ import annotations

from pathlib import Path

from superweight.report.figures import new_figure, save_png


def plot_down_proj(stats, title: str, path: str | Path, marked: list[int] | None = None) -> Path:
    """Figure 3: max |input| and max |output| of each layer's down projection (log scale)."""
    fig, axes = new_figure(1, 2, (11, 3.8))
    layers = [s.layer for s in stats]
    for ax, key, name in ((axes[0][0], "in_value", "input"), (axes[0][1], "out_value", "output")):
        ax.plot(layers, [abs(getattr(s, key)) for s in stats], marker="o", ms=3)
        for layer in marked or []:
            ax.axvline(layer, color="tab:red", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"max |down_proj {name}|")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_png(fig, path)


def plot_residual(original, pruned, title: str, path: str | Path, channel: int | None = None,
                  zeroed: str = "its weights zeroed") -> Path:
    """Figure 4: the residual stream's max |value| per layer, original vs with `zeroed` (what the
    second pass zeroed, in words; `pruned` may be None), and the massive activation's own value."""
    fig, axes = new_figure(1, 1, (7, 4))
    ax = axes[0][0]
    ax.plot([r.layer for r in original], [abs(r.value) for r in original], marker="o", ms=3,
            label="max |h|")
    if pruned is not None:
        ax.plot([r.layer for r in pruned], [abs(r.value) for r in pruned], marker="s", ms=3,
                label=f"max |h|, {zeroed}")
    if channel is not None and original and original[0].at is not None:
        ax.plot([r.layer for r in original], [abs(r.at) for r in original], ls=":",
                label=f"|h| at the massive activation (channel {channel})")
    ax.plot([r.layer for r in original], [r.median for r in original], ls="--", lw=0.8,
            label="median |h|")
    ax.set_yscale("log")
    ax.set_xlabel("layer (-1: embedding output)")
    ax.set_ylabel("|residual stream|")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return save_png(fig, path)
