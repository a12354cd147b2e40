"""Known super weight coordinates, as a data file with provenance, keyed by exact model id.

The built-in catalog (`superweight/data/catalog.json`) holds the published coordinates; a user's own
findings go to a local catalog file (`$SUPERWEIGHT_CATALOG`, else
`$XDG_CONFIG_HOME/superweight/catalog.json`), which is read on top of it. Model ids are matched
exactly — never by substring.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from superweight._io import result_header, write_json
from superweight.errors import SuperweightError
from superweight.records import SuperWeight

Coord = tuple[int, int, int]


@dataclass
class CatalogEntry:
    model: str
    super_weights: list[Coord]
    source: str
    alternatives: list[Coord] = field(default_factory=list)
    notes: str = ""
    origin: str = "built-in"  # "built-in" or the path of the local catalog

    def records(self) -> list[SuperWeight]:
        return [SuperWeight(*c) for c in self.super_weights]

    def to_dict(self) -> dict:
        d = {"model": self.model, "super_weights": [list(c) for c in self.super_weights],
             "source": self.source}
        if self.alternatives:
            d["alternatives"] = [list(c) for c in self.alternatives]
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class Comparison:
    """How detected coordinates compare with a catalog entry."""

    entry: CatalogEntry | None
    agree: list[Coord] = field(default_factory=list)
    agree_alternative: list[Coord] = field(default_factory=list)
    missing: list[Coord] = field(default_factory=list)  # catalogued, not found
    new: list[Coord] = field(default_factory=list)  # found, not catalogued

    @property
    def verdict(self) -> str:
        if self.entry is None:
            return "not catalogued"
        if not self.missing and not self.new:
            return "agrees with the catalog"
        if self.agree or self.agree_alternative:
            return "partly agrees with the catalog"
        return "disagrees with the catalog"

    def to_dict(self) -> dict:
        return {"model": self.entry.model if self.entry else None,
                "source": self.entry.source if self.entry else None, "verdict": self.verdict,
                "agree": self.agree, "agree_alternative": self.agree_alternative,
                "missing": self.missing, "new": self.new}


@dataclass
class CatalogResult:
    """What `catalog` reports (`list`/`show`: the entries with where each comes from; `add`: the
    entry written; `path`: the local file); it owns its result-file header. `added`: what
    `add --from CENSUS_DIR` wrote, `(model id, coordinates, file)` per model."""

    action: str
    entries: list[CatalogEntry] = field(default_factory=list)
    added: list[tuple] | None = None

    def to_dict(self) -> dict:
        out = {**result_header(f"catalog-{self.action}", local_path=str(local_path())),
               "entries": [{**e.to_dict(), "origin": e.origin} for e in self.entries]}
        if self.added is not None:
            out["added"] = [{"model": m, "super_weights": c, "path": str(p)} for m, c, p in self.added]
        return out


def local_path() -> Path:
    env = os.environ.get("SUPERWEIGHT_CATALOG")
    if env:
        return Path(env)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config, "superweight", "catalog.json")


def _parse(payload: dict, origin: str) -> list[CatalogEntry]:
    try:
        return [CatalogEntry(model=e["model"], super_weights=[tuple(map(int, c)) for c in e["super_weights"]],
                             source=e.get("source", ""),
                             alternatives=[tuple(map(int, c)) for c in e.get("alternatives", [])],
                             notes=e.get("notes", ""), origin=origin)
                for e in payload["entries"]]
    except (KeyError, TypeError, ValueError) as e:
        raise SuperweightError(f"malformed catalog {origin}: {e!r}") from e


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SuperweightError(f"cannot read catalog {path}: {e}") from e


def builtin() -> list[CatalogEntry]:
    text = resources.files("superweight").joinpath("data/catalog.json").read_text()
    return _parse(json.loads(text), "built-in")


def load() -> list[CatalogEntry]:
    """Built-in entries, then local ones (a local entry for the same model replaces the built-in)."""
    entries = {e.model: e for e in builtin()}
    path = local_path()
    if path.is_file():
        entries.update((e.model, e) for e in _parse(_read(path), str(path)))
    return list(entries.values())


def lookup(model_id: str | None) -> CatalogEntry | None:
    if not model_id:
        return None
    return next((e for e in load() if e.model == model_id), None)


def compare(model_id: str | None, found: Iterable[SuperWeight | Coord]) -> Comparison:
    entry = lookup(model_id)
    coords = [f.coord if isinstance(f, SuperWeight) else tuple(f) for f in found]
    if entry is None:
        return Comparison(None, new=coords)
    known, alts = set(entry.super_weights), set(entry.alternatives)
    return Comparison(entry,
                      agree=[c for c in coords if c in known],
                      agree_alternative=[c for c in coords if c in alts and c not in known],
                      missing=[c for c in entry.super_weights if c not in coords
                               and not _has_alternative(c, coords, alts)],
                      new=[c for c in coords if c not in known and c not in alts])


def _has_alternative(c: Coord, coords: list[Coord], alts: set[Coord]) -> bool:
    """A catalogued coordinate counts as found when an alternative for the same (row, col) was."""
    return any(a in coords and a[1:] == c[1:] for a in alts)


def add(model_id: str, coords: Iterable[Coord], source: str) -> Path:
    """Add coordinates for a model to the local catalog file (merging with what is there)."""
    if not model_id.strip():
        raise SuperweightError("a model id is needed to add to the catalog")
    coords = [tuple(int(v) for v in c) for c in coords]
    if not coords:
        raise SuperweightError("no coordinates to add")
    path = local_path()
    payload = _read(path) if path.is_file() else {"schema_version": 1, "entries": []}
    entries = _parse(payload, str(path))
    entry = next((e for e in entries if e.model == model_id), None)
    if entry is None:
        entries.append(CatalogEntry(model_id, coords, source, origin=str(path)))
    else:
        entry.super_weights += [c for c in coords if c not in entry.super_weights]
        entry.source = source if source not in entry.source else entry.source
    write_json(path, {"schema_version": 1, "entries": [e.to_dict() for e in entries]})
    return path
