"""Edits of a loaded model as context managers that restore the exact original bits on exit.

Every edit saves the original values it touches (clones, so bit-identical) and writes them back in
`finally`, also when the body raises. Edits compose: nest them, or use `contextlib.ExitStack`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from superweight.errors import SuperweightError
from superweight.model.adapters import ModelView
from superweight.records import SuperWeight

Coord = tuple  # (layer, row, col) or (layer, row, col, expert)


def _as_key(c) -> tuple[int, int, int, int | None]:
    if isinstance(c, SuperWeight):
        return c.key
    c = tuple(None if v is None else int(v) for v in c)
    if None in c[:3]:
        raise SuperweightError(f"a coordinate needs a layer, a row and a column, got {c}")
    if len(c) == 3:
        return (*c, None)
    if len(c) == 4:
        return c  # type: ignore[return-value]
    raise SuperweightError(f"a coordinate is (layer, row, col) or (layer, row, col, expert), got {c}")


def check_coords(view: ModelView, coords: Iterable) -> list[tuple[int, int, int, int | None]]:
    """Validate coordinates against the model's shapes; a one-line error for any out of range."""
    keys = []
    for c in coords:
        layer, row, col, expert = _as_key(c)
        view.check_layer(layer)
        rows, cols = view.down_proj(layer, expert).shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise SuperweightError(f"coordinate ({layer}, {row}, {col}) outside the down projection of "
                                   f"layer {layer}, which is {rows} x {cols} (row = output, col = input)")
        keys.append((layer, row, col, expert))
    return keys


@contextmanager
def set_weights(view: ModelView, values: dict) -> Iterator[None]:
    """Set down-projection entries `{coord: new_value}` for the block; restore them exactly after."""
    keys = check_coords(view, values)
    saved = []
    try:
        with torch.no_grad():
            for key, new in zip(keys, values.values()):
                layer, row, col, expert = key
                w = view.down_proj(layer, expert).matrix()
                saved.append((w, row, col, w[row, col].clone()))
                w[row, col] = new
        yield
    finally:
        with torch.no_grad():
            for w, row, col, old in reversed(saved):
                w[row, col] = old


@contextmanager
def prune(view: ModelView, coords: Iterable) -> Iterator[None]:
    """Zero the given super weights (records or coordinates) for the block."""
    coords = list(coords)
    with set_weights(view, {_as_key(c): 0.0 for c in coords}):
        yield


@contextmanager
def scale(view: ModelView, coords: Iterable, factor: float) -> Iterator[None]:
    """Multiply the given super weights by `factor` for the block."""
    keys = check_coords(view, coords)
    vals = {k: view.down_proj(k[0], k[3]).matrix()[k[1], k[2]].item() * factor for k in keys}
    with set_weights(view, vals):
        yield
