"""`superweight eval`: perplexity and zero-shot accuracy of a model, as a table and optionally JSON."""

from __future__ import annotations

from superweight.commands._common import (add_eval_args, add_json_arg, add_model_args, eval_settings,
                                          load_from_args, parse_list, show_tables, write_json_arg)
from superweight.errors import SuperweightError


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity (wiki, c4, ptb, a file) and zero-shot accuracy (lm-eval)",
                       description="Evaluate a model: perplexity on text sets and zero-shot accuracy "
                                   "through lm-evaluation-harness. Offline data comes from "
                                   "`superweight data fetch`; --hub reads the standard sets instead.")
    add_model_args(p)
    add_eval_args(p)
    p.add_argument("--runtime", choices=["torch", "llama.cpp"], default="torch",
                   help="torch: the model in PyTorch (default); llama.cpp: a .gguf run by llama.cpp as it is "
                        "(perplexity scored as llama-perplexity scores; needs superweight[gguf])")
    p.add_argument("--reference", metavar="REF",
                   help="with --runtime llama.cpp: also the KL divergence from this model (a .gguf run by "
                        "llama.cpp, or any model reference, run in PyTorch), on the same windows")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.runtime == "llama.cpp":
        return _run_llamacpp(args)
    if args.reference:
        raise SuperweightError("--reference compares token distributions in llama.cpp: add --runtime llama.cpp")
    from superweight.report.progress import RunProgress
    from superweight.report.tables import eval_tables

    settings = eval_settings(args)  # before the (slow) load
    lm = load_from_args(args)
    with RunProgress(f"{lm.ref}: evaluation", 1, settings.ppl + settings.tasks) as progress:
        result = settings.run(lm, on_event=progress.on_event)
    show_tables(args, eval_tables(result, lm.ref))
    write_json_arg(args.json, result.to_dict())
    return 0


def _run_llamacpp(args) -> int:
    """A .gguf run by llama.cpp: perplexity per text, and the KL divergence from --reference."""
    from pathlib import Path

    from superweight.evaluate.llamacpp import DEFAULT_MAX_TOKENS, DEFAULT_SEQLEN, evaluate_gguf
    from superweight.evaluate.settings import EvalSettings
    from superweight.report.progress import RunProgress
    from superweight.report.tables import llamacpp_eval_tables

    if args.tasks and args.tasks.strip().lower() != "none":
        raise SuperweightError("zero-shot --tasks run in PyTorch (lm-eval drives the model); llama.cpp "
                               "evaluates perplexity (--ppl) and KL divergence (--reference)")
    from superweight.runtime.detect import gguf_of

    path, _ = gguf_of(str(args.model))  # a .gguf path, or the built-in alias's file
    if path is None:
        raise SuperweightError(f"--runtime llama.cpp runs a .gguf file; {args.model!r} is not one")
    texts = parse_list(args.ppl, str, "text") if args.ppl else ["wiki"]
    settings = EvalSettings(tasks=(), ppl=tuple(texts), max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
                            seqlen=args.seqlen or DEFAULT_SEQLEN, hub=args.hub).checked()
    reference = args.reference
    if reference and not reference.lower().endswith(".gguf"):
        reference = load_from_args(args, reference)  # the model flags (dtype, budget, ...) apply to it
    elif reference and not Path(reference).expanduser().is_file():
        raise SuperweightError(f"no GGUF file at {reference}")
    with RunProgress(f"{path.name}: llama.cpp", 1, list(settings.ppl)) as progress:
        result = evaluate_gguf(path, settings.ppl, reference=reference, seqlen=settings.seqlen,
                               max_tokens=settings.max_tokens, hub=settings.hub, n_threads=args.threads,
                               on_event=progress.on_event)
    show_tables(args, llamacpp_eval_tables(result))
    write_json_arg(args.json, result.to_dict())
    return 0
