"""`superweight stopwords`: the paper's Figure 5 — what pruning the super weights does to the
next-token distribution (stopwords and punctuation gain, meaningful tokens lose)."""

from __future__ import annotations

from superweight.commands._ablation_args import (
    add_out_arg, add_super_weight_args, load_with_super_weights, parse_coords, positive_int, write_outputs)
from superweight.commands._common import add_model_args


def register(sub) -> None:
    p = sub.add_parser("stopwords", help="Figure 5: next-token probabilities with the super weights pruned",
                       description="Over N LAMBADA passages with the last word removed, average the "
                                   "next-token distribution with the model as it is and with its super "
                                   "weights pruned; show the tokens that rise and fall most and the "
                                   "total for English stopwords and punctuation.")
    add_model_args(p)
    add_super_weight_args(p)
    p.add_argument("-n", "--passages", type=positive_int, default=500, metavar="N",
                   help="LAMBADA passages to average over (default 500)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N",
                   help="tokens to list rising and falling (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    add_out_arg(p, "stopwords")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight._io import result_header
    from superweight.ablation import NO_SUPER_WEIGHT, stopword_shift
    from superweight.errors import SuperweightError
    from superweight.evaluate import lambada_passages
    from superweight.report.ablation_plots import plot_stopwords

    if args.coords:
        parse_coords(args.coords)
    passages = lambada_passages(args.passages)  # before the load: says how to fetch the data
    out, err, lm, sws, source = load_with_super_weights(args)
    if not sws:
        raise SuperweightError(f"{NO_SUPER_WEIGHT} in {lm.ref}: nothing to prune; give --coords L,R,C "
                               "or --catalog")
    with err.status(f"Scoring {len(passages)} passages, as it is and pruned…"):
        result = stopword_shift(lm, sws, passages, top=args.top, batch_size=args.batch_size)
    markdown = result.markdown()
    print(markdown)
    payload = result_header("stopwords", model=lm.describe(), super_weight_source=source,
                            data="lambada", **result.to_dict())
    title = f"{lm.ref}: next-token probabilities with the super weights pruned (Figure 5)"
    for path in write_outputs(args.out, "stopwords", markdown, payload,
                              lambda p: plot_stopwords(result, title, p)):
        out.print(f"Wrote {path}")
    return 0
