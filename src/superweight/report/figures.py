"""Shared matplotlib set-up: a headless backend and an atomic PNG save."""

from __future__ import annotations

from pathlib import Path


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return fig, axes


def save_png(fig, path: str | Path) -> Path:
    """Write the figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    from superweight._io import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return Path(path)
