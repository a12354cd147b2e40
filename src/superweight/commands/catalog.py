"""`superweight catalog`: the published super weight coordinates, and your own."""

from __future__ import annotations

from superweight.commands._common import add_json_arg, console, show_tables, write_json_arg


def register(sub) -> None:
    from superweight.selection import COORDS_GRAMMAR

    p = sub.add_parser("catalog", help="list or extend the catalog of known super weights")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "add", "path"],
                   help="list (default), show MODEL_ID, add MODEL_ID --coords ..., path of the local file")
    p.add_argument("model_id", nargs="?", help="exact hub id, e.g. meta-llama/Llama-2-7b-hf")
    p.add_argument("old_coords", nargs="*", metavar="L,R,C", help="(deprecated: use --coords)")
    p.add_argument("--coords", action="append", metavar="L,R,C",
                   help=f"coordinates to add, {COORDS_GRAMMAR}; repeatable")
    p.add_argument("--source", default="added by hand", help="provenance of added coordinates")
    p.add_argument("--from", dest="from_census", metavar="CENSUS_DIR",
                   help="`catalog add --from DIR`: add the verified super weights of a `superweight census`")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight import catalog
    from superweight.errors import SuperweightError
    from superweight.report.tables import catalog_tables
    from superweight.selection import parse_coords

    out = console()
    if args.action == "path":
        out.print(str(catalog.local_path()), markup=False)
        write_json_arg(args.json, catalog.CatalogResult("path"))
        return 0
    if args.action == "add" and args.from_census:
        return _add_from_census(args)
    if args.from_census:
        raise SuperweightError("--from is for `catalog add --from CENSUS_DIR`")
    if args.action == "add":
        texts = list(args.coords or []) + list(args.old_coords or [])
        if args.old_coords:
            console(stderr=True).print("note: coordinates after the model id are deprecated; use --coords "
                                       "L,R,C[;L,R,C...]", markup=False)
        if not args.model_id or not texts:
            raise SuperweightError("usage: superweight catalog add MODEL_ID --coords L,R,C[;L,R,C...]")
        sws = parse_coords(texts)
        if any(s.expert is not None for s in sws):
            raise SuperweightError("the catalog holds dense (layer, row, col) coordinates; drop the expert")
        path = catalog.add(args.model_id, [s.coord for s in sws], args.source)
        out.print(f"Added {len(sws)} coordinate(s) for {args.model_id} to {path}", markup=False)
        write_json_arg(args.json, catalog.CatalogResult("add", [catalog.lookup(args.model_id)]))
        return 0
    if args.coords or args.old_coords:
        raise SuperweightError(f"coordinates are only for `catalog add`, not `catalog {args.action}`")
    entries = catalog.load()
    if args.action == "show" or args.model_id:
        entries = [e for e in entries if e.model == args.model_id]
        if not entries:
            raise SuperweightError(f"{args.model_id!r} is not in the catalog "
                                   "(model ids match exactly; see `superweight catalog`)")
    show_tables(args, catalog_tables(entries))
    write_json_arg(args.json, catalog.CatalogResult(args.action, entries))
    return 0


def _add_from_census(args) -> int:
    from superweight import catalog
    from superweight.census import add_to_catalog
    from superweight.errors import SuperweightError

    if args.model_id or args.coords or args.old_coords:
        raise SuperweightError("`catalog add --from CENSUS_DIR` takes no model id or coordinates")
    added = add_to_catalog(args.from_census)
    out = console()
    for model_id, coords, path in added:
        out.print(f"Added {len(coords)} verified coordinate(s) for {model_id} to {path}", markup=False)
    if not added:
        out.print(f"No verified super weights in {args.from_census} (run the census with --verify)", markup=False)
    write_json_arg(args.json, catalog.CatalogResult("add", [catalog.lookup(m) for m, _, _ in added], added))
    return 0
