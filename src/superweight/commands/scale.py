"""`superweight scale`: the paper's Figure 6 — scale the super weights and evaluate."""

from __future__ import annotations

from superweight.commands._ablation_args import (
    add_eval_args, add_out_arg, add_super_weight_args, load_with_super_weights, parse_coords, settings_from_args, write_outputs)
from superweight.commands._common import add_model_args, parse_list

DEFAULT_FACTORS = "0,0.5,1,1.5,2,3"


def register(sub) -> None:
    p = sub.add_parser("scale", help="Figure 6: accuracy and perplexity with the super weights scaled",
                       description="Multiply the super weights by each factor and evaluate: average "
                                   "zero-shot accuracy and perplexity against the factor, best marked.")
    add_model_args(p)
    add_super_weight_args(p)
    p.add_argument("--factors", default=DEFAULT_FACTORS, metavar="F1,F2",
                   help=f"scaling factors, comma-separated (default {DEFAULT_FACTORS})")
    add_eval_args(p)
    add_out_arg(p, "scale")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight._io import result_header
    from superweight.ablation import NO_SUPER_WEIGHT, make_evaluator, parse_factors, scale_sweep
    from superweight.errors import SuperweightError
    from superweight.report.ablation_plots import plot_scale

    factors = parse_factors(parse_list(args.factors, float, "scaling factor"))  # before the load
    settings = settings_from_args(args)
    if args.coords:
        parse_coords(args.coords)
    out, err, lm, sws, source = load_with_super_weights(args)
    if not sws:
        raise SuperweightError(f"{NO_SUPER_WEIGHT} in {lm.ref}: nothing to scale; give --coords L,R,C "
                               "or --catalog")

    def on_factor(f, summary):
        if summary is None:
            err.print(f"[bold]Super weights × {f:g}[/bold]")

    result = scale_sweep(lm, sws, factors, make_evaluator(settings), on_factor=on_factor)
    markdown = result.markdown()
    print(markdown)
    out.print(f"Best factor by {result.best_by}: × {result.best:g}")
    payload = result_header("scale", model=lm.describe(), super_weight_source=source,
                            evaluation=settings.to_dict(), quick=args.quick, **result.to_dict())
    title = f"{lm.ref}: scaling the super weights (Figure 6)"
    for path in write_outputs(args.out, "scale", markdown, payload, lambda p: plot_scale(result, title, p)):
        out.print(f"Wrote {path}")
    return 0
