"""`superweight eval`: perplexity and zero-shot accuracy of a model, as a table and optionally JSON."""

from __future__ import annotations

from superweight.commands._common import (add_eval_args, add_json_arg, add_model_args, eval_settings, load_from_args,
                                          show_tables, write_json_arg)


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity (wiki, c4, ptb, a file) and zero-shot accuracy (lm-eval)",
                       description="Evaluate a model: perplexity on text sets and zero-shot accuracy "
                                   "through lm-evaluation-harness. Offline data comes from "
                                   "`superweight data fetch`; --hub reads the standard sets instead.")
    add_model_args(p)
    add_eval_args(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.report.progress import RunProgress
    from superweight.report.tables import eval_tables

    settings = eval_settings(args)  # before the (slow) load
    lm = load_from_args(args)
    with RunProgress(f"{lm.ref}: evaluation", 1, settings.ppl + settings.tasks) as progress:
        result = settings.run(lm, on_event=progress.on_event)
    show_tables(args, eval_tables(result, lm.ref))
    write_json_arg(args.json, result.to_dict())
    return 0
