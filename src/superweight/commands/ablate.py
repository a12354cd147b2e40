"""`superweight ablate`: the paper's Table 1 on any model."""

from __future__ import annotations

from superweight.commands._ablation_args import (
    add_eval_args, add_out_arg, add_super_weight_args, load_with_super_weights, parse_coords, settings_from_args, write_outputs)
from superweight.commands._common import add_model_args


def register(sub) -> None:
    p = sub.add_parser("ablate", help="Table 1: prune the super weights vs 7,000 others vs restoring the SA",
                       description="Evaluate the model as it is, with its super weights pruned, with "
                                   "the K largest other weights pruned instead, and with the super "
                                   "weights pruned but their super activation restored (the paper's "
                                   "Table 1): seven zero-shot tasks, their average, Wiki-2 and C4 "
                                   "perplexity.")
    add_model_args(p)
    add_super_weight_args(p)
    add_eval_args(p)
    p.add_argument("-k", "--k", dest="k", type=int, default=7000, metavar="K",
                   help="how many of the largest other weights 'Prune Non-SW' zeroes (default 7000)")
    p.add_argument("--non-sw-modules", metavar="GLOB[,GLOB]",
                   help="restrict 'Prune Non-SW' to decoder linears matching these globs "
                        "(e.g. '*.mlp.down_proj'; default: every linear layer of the decoder)")
    add_out_arg(p, "ablation")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight._io import result_header
    from superweight.ablation import NO_SUPER_WEIGHT, ablation_table, make_evaluator
    from superweight.errors import SuperweightError
    from superweight.report.ablation_plots import plot_ablation

    settings = settings_from_args(args)  # validate before the (slow) load
    if args.coords:
        parse_coords(args.coords)
    if args.k < 1:
        raise SuperweightError(f"K must be a positive whole number of weights, got {args.k}")
    modules = [m.strip() for m in args.non_sw_modules.split(",") if m.strip()] if args.non_sw_modules else None
    out, err, lm, sws, source = load_with_super_weights(args)
    if not sws:
        err.print(f"{NO_SUPER_WEIGHT} in {lm.ref} by detection: the table shows Original and Prune "
                  "Non-SW only; give --coords L,R,C or --catalog to ablate known coordinates.")

    def on_row(condition, row):
        if row is None:
            err.print(f"[bold]{condition}[/bold]")
        elif row.summary is not None:
            err.print(f"{condition}: done in {row.seconds:.0f} s")

    result = ablation_table(lm, sws, make_evaluator(settings), k=args.k, modules=modules, on_row=on_row)
    markdown = result.markdown()
    print(markdown)
    payload = result_header("ablate", model=lm.describe(), super_weight_source=source,
                            evaluation=settings.to_dict(), quick=args.quick, **result.to_dict())
    title = f"{lm.ref}: super weight ablation (Table 1)"
    for path in write_outputs(args.out, "ablation", markdown, payload,
                              lambda p: plot_ablation(result, title, p)):
        out.print(f"Wrote {path}")
    return 0
