"""`superweight catalog`: the published super weight coordinates, and your own."""

from __future__ import annotations

from superweight.commands._common import console


def register(sub) -> None:
    p = sub.add_parser("catalog", help="list or extend the catalog of known super weights")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "add", "path"],
                   help="list (default), show MODEL_ID, add MODEL_ID COORD..., path of the local file")
    p.add_argument("model_id", nargs="?", help="exact hub id, e.g. meta-llama/Llama-2-7b-hf")
    p.add_argument("coords", nargs="*", metavar="L,R,C", help="coordinates to add: layer,row,col")
    p.add_argument("--source", default="added by hand", help="provenance of added coordinates")
    p.set_defaults(func=run)


def parse_coord(text: str) -> tuple[int, int, int]:
    from superweight.errors import SuperweightError

    parts = text.replace("(", "").replace(")", "").split(",")
    try:
        coord = tuple(int(p) for p in parts)
    except ValueError:
        coord = ()
    if len(coord) != 3 or min(coord) < 0:
        raise SuperweightError(f"a coordinate is layer,row,col with non-negative integers, got {text!r}")
    return coord  # type: ignore[return-value]


def run(args) -> int:
    from rich.table import Table

    from superweight import catalog
    from superweight.errors import SuperweightError

    out = console()
    if args.action == "path":
        out.print(str(catalog.local_path()))
        return 0
    if args.action == "add":
        if not args.model_id or not args.coords:
            raise SuperweightError("usage: superweight catalog add MODEL_ID L,R,C [L,R,C ...]")
        path = catalog.add(args.model_id, [parse_coord(c) for c in args.coords], args.source)
        out.print(f"Added {len(args.coords)} coordinate(s) for {args.model_id} to {path}")
        return 0
    entries = catalog.load()
    if args.action == "show" or args.model_id:
        entries = [e for e in entries if e.model == args.model_id]
        if not entries:
            raise SuperweightError(f"{args.model_id!r} is not in the catalog "
                                   "(model ids match exactly; see `superweight catalog`)")
    table = Table(title="Known super weights (layer, row, col) into down_proj.weight[row, col]",
                  title_justify="left")
    for c in ("model", "super weights", "source", "from"):
        table.add_column(c)
    for e in entries:
        coords = ", ".join(f"({l}, {r}, {c})" for l, r, c in e.super_weights)
        if e.alternatives:
            coords += " · alt " + ", ".join(f"({l}, {r}, {c})" for l, r, c in e.alternatives)
        note = f"{e.source}" + (f" — {e.notes}" if e.notes else "")
        table.add_row(e.model, coords, note, e.origin)
    out.print(table)
    return 0
