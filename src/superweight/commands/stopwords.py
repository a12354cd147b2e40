"""`superweight stopwords`: the paper's Figure 5 — what pruning the super weights does to the
next-token distribution (stopwords and punctuation gain, meaningful tokens lose)."""

from __future__ import annotations

from superweight.commands._common import (add_coords_args, add_json_arg, add_model_args, add_out_arg,
                                          coords_from_args, model_and_super_weights, positive_int, present)

BATCH_SIZE = 8


def register(sub) -> None:
    from superweight.ablation import DEFAULT_PASSAGES, DEFAULT_TOP

    p = sub.add_parser("stopwords", help="Figure 5: next-token probabilities with the super weights pruned",
                       description="Over N LAMBADA passages with the last word removed, average the "
                                   "next-token distribution with the model as it is and with its super "
                                   "weights pruned; show the tokens that rise and fall most and the "
                                   "total for English stopwords and punctuation.")
    add_model_args(p)
    add_coords_args(p)
    p.add_argument("-n", "--passages", type=positive_int, default=DEFAULT_PASSAGES, metavar="N",
                   help=f"LAMBADA passages to average over (default {DEFAULT_PASSAGES})")
    p.add_argument("--top", type=positive_int, default=DEFAULT_TOP, metavar="N",
                   help=f"tokens to list rising and falling (default {DEFAULT_TOP})")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, metavar="N",
                   help=f"passages per forward pass (default {BATCH_SIZE})")
    add_json_arg(p)
    add_out_arg(p, "stopwords")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.ablation import stopword_shift
    from superweight.evaluate import lambada_passages
    from superweight.report.ablation_plots import plot_stopwords
    from superweight.report.progress import RunProgress
    from superweight.report.tables import stopword_tables

    coords = coords_from_args(args)
    passages = lambada_passages(args.passages)  # before the load: says how to fetch the data
    lm, selection = model_and_super_weights(args, coords, require="prune")
    batches = -(-len(passages) // args.batch_size)
    with RunProgress(f"{lm.ref}: next-token probabilities", 2, batches, batches=True) as progress:
        result = stopword_shift(lm, selection, passages, top=args.top, batch_size=args.batch_size,
                                data="lambada", on_event=progress.on_event)
    title = f"{lm.ref}: next-token probabilities with the super weights pruned (Figure 5)"
    present(stopword_tables(result), result.to_dict(), args, "stopwords", lambda p: plot_stopwords(result, title, p))
    return 0
