"""Result files: JSON (atomically, or on stdout), and a folder of markdown + JSON + PNG per run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable

from superweight._io import _json_default, atomic_write, write_json
from superweight.errors import SuperweightError
from superweight.report.tables import Table, to_markdown


def save_json(path: str | Path, payload) -> Path | None:
    """Write `payload` as JSON to `path` atomically; `-` prints it on stdout (returns None)."""
    if str(path) == "-":
        sys.stdout.write(json.dumps(payload, indent=2, default=_json_default) + "\n")
        return None
    return write_json(path, payload)


def write_bundle(out_dir: str | Path | None, what: str, tables: Iterable[Table], payload: dict,
                 plot: Callable[[Path], Path] | None = None) -> list[Path]:
    """`what.md`, `what.json` and (via `plot(path)`) `what.png` in `out_dir`, each written atomically;
    nothing when `out_dir` is None."""
    if out_dir is None:
        return []
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SuperweightError(f"--out {str(out_dir)!r} exists and is not a folder")
    markdown = to_markdown(tables)
    paths = [atomic_write(out_dir / f"{what}.md", lambda tmp: tmp.write_text(markdown + "\n")),
             write_json(out_dir / f"{what}.json", payload)]
    if plot is not None:
        paths.append(plot(out_dir / f"{what}.png"))
    return paths
