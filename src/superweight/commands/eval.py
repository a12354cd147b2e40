"""`superweight eval`: perplexity and zero-shot accuracy of a model, as a table and optionally JSON."""

from __future__ import annotations

from superweight.commands._common import add_model_args, console, load_from_args, parse_list

NONE = "none"  # `--ppl none` / `--tasks none` skips that half


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity (wiki, c4, ptb, a file) and zero-shot accuracy (lm-eval)",
                       description="Evaluate a model: perplexity on text sets and zero-shot accuracy "
                                   "through lm-evaluation-harness. Offline data comes from "
                                   "`superweight data fetch`; --hub reads the standard sets instead.")
    add_model_args(p)
    p.add_argument("--ppl", metavar="SETS",
                   help="comma-separated perplexity sets or .txt/.jsonl/.parquet files, or 'none' "
                        "(default: wiki,c4)")
    p.add_argument("--tasks", metavar="TASKS",
                   help="comma-separated zero-shot tasks, or 'none' (default: all seven: arc_challenge,"
                        "arc_easy,hellaswag,lambada,piqa,sciq,winogrande)")
    p.add_argument("--limit", type=int, metavar="N", help="items per task (default: all)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens per perplexity set (default: all)")
    p.add_argument("--seqlen", type=int, metavar="N",
                   help="perplexity window (default 2048, capped by the model's context)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="batch size (default 4)")
    p.add_argument("--quick", action="store_true",
                   help="the quick preset: every task on its first 20 items, 4,096 tokens per text")
    p.add_argument("--hub", action="store_true",
                   help="read WikiText-2, C4, PTB and lm-eval's tasks from the Hugging Face hub")
    p.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    p.set_defaults(func=run)


def settings(args) -> dict:
    """Keyword arguments for `evaluate`: the quick preset (if asked), then explicit flags on top."""
    from superweight.errors import SuperweightError
    from superweight.evaluate import DEFAULT_PPL, QUICK, TASKS

    kw = dict(QUICK) if args.quick else {"ppl": DEFAULT_PPL, "tasks": TASKS}
    for key, text in (("ppl", args.ppl), ("tasks", args.tasks)):
        if text is not None:
            kw[key] = () if text.strip() == NONE else tuple(parse_list(text, str, key))
    for key in ("limit", "max_tokens", "seqlen", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise SuperweightError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
            kw[key] = value
    return kw


def run(args) -> int:
    from superweight._io import write_json
    from superweight.evaluate import evaluate
    from superweight.evaluate.suite import preflight

    kw = settings(args)
    preflight(kw["ppl"], kw["tasks"], args.hub)  # before the (slow) load
    lm = load_from_args(args)
    err = console(stderr=True)
    result = evaluate(lm, hub=args.hub, on_event=_reporter(err), **kw)
    console().print(render(result, lm.ref))
    if args.json:
        err.print(f"Wrote {write_json(args.json, result.to_dict())}")
    return 0


def _reporter(err):
    def report(kind, name, i, total, result):
        what = "perplexity" if kind == "ppl" else "task"
        if result is None:
            err.print(f"[{i + 1}/{total}] {what} [bold]{name}[/bold]…")
        elif kind == "ppl":
            err.print(f"[{i + 1}/{total}] {name}: ppl {result.ppl:.3f} ({result.tokens:,} tokens, "
                      f"{result.seconds:.1f} s)")
        else:
            err.print(f"[{i + 1}/{total}] {name}: acc {result.acc:.4f} ({result.items} items, "
                      f"{result.seconds:.1f} s)")
    return report


def render(result, ref: str):
    """A rich table: one row per task (acc, acc_norm with stderrs), the average, one per text."""
    from rich.table import Table

    table = Table(title=f"{ref}: evaluation{' (hub data)' if result.config['hub'] else ''}")
    for col, justify in (("set", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right"),
                         ("n", "right")):
        table.add_column(col, justify=justify)
    for name, r in result.zero_shot.items():
        for metric, value in r.metrics.items():
            se = r.stderr.get(metric)
            table.add_row(name, metric, f"{value:.4f}", f"{se:.4f}" if se is not None else "", str(r.items))
    summary = result.summary()
    if "average" in summary:
        table.add_row("[bold]average[/bold]", "acc", f"[bold]{summary['average']:.4f}[/bold]", "",
                      str(len(result.zero_shot)), end_section=True)
    for name, r in result.perplexity.items():
        table.add_row(name, "perplexity", f"{r.ppl:.3f}", "", f"{r.tokens:,} tok")
    return table
