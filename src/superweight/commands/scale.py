"""`superweight scale`: the paper's Figure 6 — scale the super weights and evaluate."""

from __future__ import annotations

from superweight.commands._common import (add_coords_args, add_eval_args, add_json_arg, add_model_args,
                                          add_out_arg, coords_from_args, eval_settings, model_and_super_weights,
                                          parse_list, present)


def register(sub) -> None:
    from superweight.ablation import DEFAULT_FACTORS

    factors = ",".join(f"{f:g}" for f in DEFAULT_FACTORS)
    p = sub.add_parser("scale", help="Figure 6: accuracy and perplexity with the super weights scaled",
                       description="Multiply the super weights by each factor and evaluate: average "
                                   "zero-shot accuracy and perplexity against the factor, best marked.")
    add_model_args(p)
    add_coords_args(p)
    p.add_argument("--factors", default=factors, metavar="F1,F2",
                   help=f"scaling factors, comma-separated (default {factors})")
    add_eval_args(p)
    add_json_arg(p)
    add_out_arg(p, "scale")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.ablation import parse_factors, scale_sweep
    from superweight.report.ablation_plots import plot_scale
    from superweight.report.progress import RunProgress
    from superweight.report.tables import scale_tables

    factors = parse_factors(parse_list(args.factors, float, "scaling factor"))  # before the load
    settings = eval_settings(args)
    lm, selection = model_and_super_weights(args, coords_from_args(args), require="scale")
    title = f"{lm.ref}: scaling the super weights (Figure 6)"
    with RunProgress(title, len(factors), settings.ppl + settings.tasks) as progress:
        result = scale_sweep(lm, selection, factors, settings.evaluator(progress.on_event),
                             on_event=progress.on_event)
    present(scale_tables(result, title), result.to_dict(), args, "scale", lambda p: plot_scale(result, title, p))
    return 0
