"""The census results store: one JSON file per (model reference + content hash, settings).

Why files and not a database: a census runs for hours and may be stopped at any moment; one file per
finished model, written atomically (temp file + rename), can never be half-written, needs no lock
(each model is written by the driver alone), survives a crash of anything, and a person can read,
copy or delete any entry by hand. A re-run looks each model up by its key and skips what is done;
a changed model (new weights, so a new content hash) or changed settings make a new key, so the old
entry stays and the new one is computed.

Layout: `DIR/results/<name>-<key>.json`, `key` = the first 20 hex digits of the sha256 of
{reference, fingerprint, settings}; the census table (`census.json`, `census.csv`, `index.html`)
is written beside it from the entries.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from superweight._io import write_json
from superweight.errors import SuperweightError

DONE, FAILED = "done", "failed"
ENTRY_KIND = "census-entry"


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def entry_key(ref: str, fingerprint: str | None, settings: dict) -> str:
    blob = json.dumps({"ref": ref, "fingerprint": fingerprint, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Store:
    """The census folder: `lookup` what is recorded for a model, `put` a finished one (atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise SuperweightError(f"{str(self.root)!r} exists and is not a folder")
        self.results = self.root / "results"

    def path(self, ref: str, fingerprint: str | None, settings: dict) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ref.rstrip("/")).name or ref)[:60].strip("._") or "model"
        return self.results / f"{name}-{entry_key(ref, fingerprint, settings)}.json"

    def lookup(self, ref: str, fingerprint: str | None, settings: dict) -> dict | None:
        """The recorded entry for this model and these settings, or None. A hub model recorded
        before it was downloaded (no fingerprint then) matches by the commit its worker resolved."""
        entry = self._read(self.path(ref, fingerprint, settings))
        if entry is not None or fingerprint is None:
            return entry
        key = settings_key(settings)
        return next((e for e in self.entries() if e.get("ref") == ref and e.get("settings_key") == key
                     and e.get("fingerprint") is None and e.get("resolved_fingerprint") == fingerprint), None)

    def put(self, entry: dict) -> Path:
        path = self.path(entry["ref"], entry["fingerprint"], entry["settings"])
        return write_json(path, entry)

    def entries(self) -> list[dict]:
        """Every entry in the folder (any settings, any census that used it)."""
        if not self.results.is_dir():
            return []
        return [e for p in sorted(self.results.glob("*.json")) if (e := self._read(p)) is not None]

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SuperweightError(f"unreadable census entry {path}: {e}") from None
        return entry if isinstance(entry, dict) and entry.get("kind") == ENTRY_KIND else None
