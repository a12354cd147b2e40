"""`superweight ablate`: the paper's Table 1 on any model."""

from __future__ import annotations

from superweight.commands._common import (add_coords_args, add_eval_args, add_json_arg, add_model_args,
                                          add_out_arg, console, coords_from_args, eval_settings,
                                          model_and_super_weights, parse_list, positive_int, present)


def register(sub) -> None:
    from superweight.ablation import DEFAULT_K

    p = sub.add_parser("ablate", help=f"Table 1: prune the super weights vs {DEFAULT_K:,} others vs restoring the SA",
                       description="Evaluate the model as it is, with its super weights pruned, with "
                                   "the K largest other weights pruned instead, and with the super "
                                   "weights pruned but their super activation restored (the paper's "
                                   "Table 1): seven zero-shot tasks, their average, and perplexity.")
    add_model_args(p)
    add_coords_args(p)
    add_eval_args(p)
    p.add_argument("-k", "--k", dest="k", type=positive_int, default=DEFAULT_K, metavar="K",
                   help=f"how many of the largest other weights 'Prune Non-SW' zeroes (default {DEFAULT_K})")
    p.add_argument("--non-sw-modules", metavar="GLOB[,GLOB]",
                   help="restrict 'Prune Non-SW' to decoder linears matching these globs "
                        "(e.g. '*.mlp.down_proj'; default: every linear layer of the decoder)")
    add_json_arg(p)
    add_out_arg(p, "ablation")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.ablation import CONDITIONS, NO_SUPER_WEIGHT, ablation_table
    from superweight.report.ablation_plots import plot_ablation
    from superweight.report.progress import RunProgress
    from superweight.report.tables import ablation_tables

    settings = eval_settings(args)  # validate before the (slow) load
    coords = coords_from_args(args)
    modules = parse_list(args.non_sw_modules, str, "module glob") if args.non_sw_modules else None
    lm, selection = model_and_super_weights(args, coords)
    if not selection.super_weights:
        console(stderr=True).print(f"{NO_SUPER_WEIGHT} in {lm.ref} by detection: the table shows Original and "
                                   "Prune Non-SW only; give --coords L,R,C or --catalog to ablate known "
                                   "coordinates.", markup=False)
    title = f"{lm.ref}: super weight ablation (Table 1)"
    runs = len(CONDITIONS) if selection.super_weights else 2
    with RunProgress(title, runs, settings.ppl + settings.tasks) as progress:
        result = ablation_table(lm, selection, settings.evaluator(progress.on_event), k=args.k,
                                modules=modules, on_event=progress.on_event)
    present(ablation_tables(result, title), result.to_dict(), args, "ablation",
            lambda p: plot_ablation(result, title, p))
    return 0
