"""Which super weights a feature should use: given coordinates, the catalog's, or detection's.

Every feature that acts on super weights (the ablations, quantization, the check) starts with the
same question, answered here once: coordinates given by the user win, then a catalog entry, else
detection runs on the loaded model. Coordinates are written one way everywhere, `L,R,C` or
`L,R,C,E` (layer, row = output channel, col = input channel, expert), several joined with `;`.

>>> [s.label() for s in parse_coords("11,507,1229; 11,507,1487")]
['(11, 507, 1229)', '(11, 507, 1487)']
>>> parse_coords(["(2, 3968, 7003)", "1,2,3,0"])[1].expert
0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from superweight.errors import SuperweightError
from superweight.records import SuperWeight

COORDS_GRAMMAR = "L,R,C[,E] (layer, row = output channel, col = input channel, expert), ';' between several"
DETECTION, GIVEN, CATALOG = "detection", "given coordinates", "catalog"


@dataclass
class Selection:
    """The super weights to use and where they came from (for result files and messages)."""

    super_weights: list[SuperWeight]
    source: str  # "given coordinates", "catalog (<its provenance>)" or "detection"
    catalog_id: str | None = None


def as_selection(super_weights: "Selection | Iterable | None", source: str = GIVEN) -> Selection:
    """What a feature records about the super weights it was handed: a `Selection` as it is (its
    `source` goes into the result file), or records given directly, whose source is `source`
    ("given coordinates" unless the caller says where they came from). None: an empty selection.

    >>> as_selection([SuperWeight(2, 3, 4)]).source
    'given coordinates'
    """
    if isinstance(super_weights, Selection):
        return super_weights
    return Selection(list(super_weights or []), source)


def parse_coords(texts: str | Iterable[str]) -> list[SuperWeight]:
    """Coordinates from text: each `L,R,C` or `L,R,C,E`, parentheses allowed, `;` between several;
    a list of such texts (a repeated flag) is read in order. Duplicates are dropped."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    out: dict[tuple, SuperWeight] = {}
    for text in texts:
        for part in (p.strip() for p in str(text).split(";")):
            if not part:
                continue
            nums = [n.strip() for n in part.strip("()[] ").split(",")]
            try:
                values = [int(n) for n in nums]
            except ValueError:
                values = []
            if len(values) not in (3, 4) or min(values) < 0:
                raise SuperweightError(f"coordinate {part!r} is not {COORDS_GRAMMAR.split(' (')[0]} "
                                       "(three or four whole numbers ≥ 0)")
            sw = SuperWeight(*values[:3], expert=values[3] if len(values) == 4 else None)
            out.setdefault(sw.key, sw)
    if not out:
        raise SuperweightError(f"no coordinates given; write them as {COORDS_GRAMMAR}")
    return list(out.values())


def resolve_super_weights(lm, coords: Sequence | str | None = None, catalog_id: str | None = None,
                          include_late: bool = False) -> Selection:
    """The super weights of `lm` to act on: `coords` (records, tuples or text) if given, else the
    catalog entry of `catalog_id`, else detection's early super weights (and its late-layer spikes
    with `include_late`). Coordinates are checked against the model's shapes. Detection may find
    none: the selection is then empty, and the caller decides whether that is an error.
    """
    if coords is not None and catalog_id is not None:
        raise SuperweightError("give coordinates or a catalog id, not both")
    if include_late and (coords is not None or catalog_id is not None):
        raise SuperweightError("late-layer spikes come from detection; they cannot be added to "
                               "given or catalogued coordinates")
    if coords is not None:
        return Selection(lm.view.check(_records(coords)), GIVEN)
    if catalog_id is not None:
        from superweight import catalog

        entry = catalog.lookup(catalog_id)
        if entry is None:
            raise SuperweightError(f"the catalog has no entry for {catalog_id!r} (model ids match exactly; "
                                   "`superweight catalog` lists them)")
        sws = lm.view.check(entry.records())
        return Selection(sws, f"{CATALOG} ({entry.source})", catalog_id=catalog_id)
    from superweight.detect import detect

    result = detect(lm)
    sws = list(result.early) + (list(result.late) if include_late else [])
    return Selection(sws, DETECTION + (" (late-layer spikes included)" if include_late else ""))


def _records(coords: Sequence | str) -> list[SuperWeight]:
    if isinstance(coords, str):
        return parse_coords(coords)
    return [sw for c in coords for sw in (parse_coords(c) if isinstance(c, str) else [SuperWeight.of(c)])]
