"""`superweight finetune`: fine-tune a model with its super weights guarded (full, LoRA or SMT),
write the checkpoint, and show the drift report, SMT's placement and `check` ORIGINAL vs TUNED."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from superweight.commands._common import (add_coords_args, add_json_arg, add_model_args, console, coords_from_args,
                                          folder, load_from_args, parse_list, select_super_weights, show_tables,
                                          write_json_arg)
from superweight.errors import SuperweightError

FLAG = "flag"  # a switch (store_true)
KINDS = "kinds"  # a comma list of module kinds

# Each flag: (dataclass field, flag, type, help). Defaults are the dataclasses' own, shown in --help.
CONFIG_FLAGS = [
    ("steps", "--steps", int, "optimizer steps"),
    ("lr", "--lr", float, "learning rate"),
    ("weight_decay", "--weight-decay", float, "AdamW's decoupled weight decay (it shrinks every weight, "
                                              "a super weight too, unless guarded)"),
    ("batch_size", "--batch-size", int, "token blocks per micro-batch"),
    ("seqlen", "--seqlen", int, "tokens per block"),
    ("grad_accum", "--grad-accum", int, "micro-batches accumulated per optimizer step"),
    ("lr_scheduler", "--scheduler", str, "learning-rate schedule (any transformers name: linear, cosine, ...)"),
    ("max_grad_norm", "--max-grad-norm", float, "gradient clipping norm (0: off)"),
    ("max_tokens", "--max-tokens", int, "corpus tokens used (default: as many as the run reads once)"),
    ("seed", "--seed", int, "seed of the Trainer and LoRA's initialisation"),
    ("guard_every", "--every", int, "record the super weights and the super activation every N steps"),
    ("weight_drift", "--weight-drift", float, "flag a super weight whose relative change exceeds this"),
    ("activation_drift", "--activation-drift", float, "flag a super activation whose relative change exceeds this"),
    ("probe", "--probe", str, "prompt the super activation is read on (default: detection's)"),
]
CLIP_FLAGS = [
    ("max_step_rel", "--max-step-rel", float,
     "clip: largest change of a super weight per step, relative to |original|"),
    ("max_total_rel", "--max-total-rel", float, "clip: largest total change, relative to |original|"),
]
LORA_FLAGS = [
    ("r", "--lora-r", int, "LoRA rank"),
    ("alpha", "--lora-alpha", float, "LoRA alpha (scale alpha / r)"),
    ("dropout", "--lora-dropout", float, "LoRA dropout"),
    ("kinds", "--lora-kinds", KINDS, "module kinds that get adapters, e.g. q,v (default: every decoder linear)"),
]
SMT_FLAGS = [
    ("block", "--smt-block", int, "block size: square blocks of N × N"),
    ("warmup_steps", "--smt-warmup", int, "warm-up batches whose gradients choose the blocks"),
    ("budget", "--smt-budget", float, "share of the eligible parameters trained, in (0, 1]"),
    ("kinds", "--smt-kinds", KINDS, "module kinds blocks may come from, e.g. q,k,v,o (default: every decoder linear)"),
    ("exclude_super", "--smt-exclude-super", FLAG, "never choose a block that holds a super weight"),
]


def _default(cls, name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _add(p, cls, table) -> None:
    for name, flag, kind, text in table:
        default = _default(cls, name)
        if kind == FLAG:
            p.add_argument(flag, action="store_true", default=None, help=text)
            continue
        shown = f" (default {default:g})" if isinstance(default, float) else \
            f" (default {default})" if default is not None and name != "kinds" else ""
        p.add_argument(flag, metavar={int: "N", float: "X"}.get(kind, "TEXT"), help=text + shown)


def register(sub) -> None:
    from superweight.finetune import GUARDS, METHODS, FinetuneConfig, LoRASettings, SMTConfig, training_sources

    p = sub.add_parser("finetune", help="fine-tune with the super weights guarded (full, LoRA, SMT), then check",
                       description="Causal-LM fine-tuning through the transformers Trainer on a text corpus, "
                                   "with the super weights frozen, clipped or only watched; writes a safetensors "
                                   "checkpoint to --out, then shows the super weights' drift, the super "
                                   "activation before and after, SMT's chosen blocks, and `check` ORIGINAL vs "
                                   "TUNED. Exit status 1 when a super activation does not survive.")
    add_model_args(p)
    p.add_argument("--data", metavar="TEXT",
                   help=f"training text: {', '.join(training_sources())} (fetched with `superweight data "
                        f"fetch`), or a .txt/.jsonl/.parquet file (required)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write the tuned checkpoint (required)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--method", metavar="|".join(METHODS),
                   help=f"full, lora (peft, merged before saving) or smt (sparse matrix tuning) "
                        f"(default {_default(FinetuneConfig, 'method')})")
    p.add_argument("--guard", metavar="|".join(GUARDS),
                   help=f"freeze the super weights (exact values), clip their change, or none (only watch) "
                        f"(default {_default(FinetuneConfig, 'guard')})")
    add_coords_args(p, default="detect them")
    _add(p, FinetuneConfig, CONFIG_FLAGS)
    _add(p, FinetuneConfig, CLIP_FLAGS)
    _add(p, LoRASettings, LORA_FLAGS)
    _add(p, SMTConfig, SMT_FLAGS)
    add_json_arg(p)
    p.add_argument("--plot", type=folder, metavar="DIR", help="write the PNGs here (default: into --out)")
    p.set_defaults(func=run)


# --- parsing ---------------------------------------------------------------------------------------

def _value(text: str, kind, flag: str):
    if kind == FLAG:
        return True
    if kind == KINDS:
        return tuple(parse_list(text, str, f"{flag} module kind"))
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SuperweightError(f"{flag} must be {what}, got {text!r}") from None


def _given(args, table) -> dict:
    return {name: _value(getattr(args, _dest(flag)), kind, flag) for name, flag, kind, _ in table
            if getattr(args, _dest(flag)) is not None}


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _refuse(args, table, why: str) -> None:
    flags = [flag for _, flag, _, _ in table if getattr(args, _dest(flag)) is not None]
    if flags:
        raise SuperweightError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply {why}")


def config_from_args(args):
    """The validated `FinetuneConfig` the flags ask for; flags that would be ignored are errors."""
    from superweight.finetune import FinetuneConfig, LoRASettings, SMTConfig

    method = args.method or _default(FinetuneConfig, "method")
    guard = args.guard or _default(FinetuneConfig, "guard")
    if method != "lora":
        _refuse(args, LORA_FLAGS, "without --method lora")
    if method != "smt":
        _refuse(args, SMT_FLAGS, "without --method smt")
    if guard != "clip":
        _refuse(args, CLIP_FLAGS, "without --guard clip")
    return FinetuneConfig(method=method, guard=guard, **_given(args, CONFIG_FLAGS), **_given(args, CLIP_FLAGS),
                          lora=LoRASettings(**_given(args, LORA_FLAGS)), smt=SMTConfig(**_given(args, SMT_FLAGS)))


# --- running ---------------------------------------------------------------------------------------

def run(args) -> int:
    from superweight.finetune import finetune, training_documents
    from superweight.finetune.train import preflight
    from superweight.model.checkpoint import check_output_dir
    from superweight.report.finetune_plots import plot_finetune
    from superweight.report.progress import TrainProgress
    from superweight.report.tables import finetune_tables, super_weight_line

    config = config_from_args(args)
    if args.data is None:
        raise SuperweightError("--data TEXT is required: the text to fine-tune on (e.g. ptb-train or a .txt file)")
    if args.out is None:
        raise SuperweightError("--out DIR is required: where to write the tuned checkpoint")
    coords = coords_from_args(args)
    out = check_output_dir(args.out, args.force, sources=(args.model,), what="--out directory")
    if args.plot is not None:  # a folder that may hold other files, but never the model's own
        check_output_dir(args.plot, True, sources=(args.model,), what="--plot folder")
    texts = training_documents(args.data)  # unknown, unfetched, missing or empty: before the model loads
    lm = load_from_args(args)
    preflight(lm, config, texts, out, args.force)  # module kinds, offloaded weights: before detection
    if args.plot is not None:
        check_output_dir(args.plot, True, lm, what="--plot folder")
    selection = select_super_weights(lm, args, coords)
    console(stderr=str(args.json) == "-").print(super_weight_line(selection), markup=False)  # stdout: the JSON
    if config.guard != "none" and not selection.super_weights:
        raise SuperweightError(f"no super weight found in {lm.ref} to {config.guard}; give --coords L,R,C or "
                               "--catalog, or train unguarded with --guard none")
    warmup = config.smt.warmup_steps if config.method == "smt" else 0
    with TrainProgress(f"{lm.ref}: fine-tuning ({config.method}, guard {config.guard})", config.steps, warmup,
                       check=bool(selection.super_weights)) as progress:
        result = finetune(lm, config, texts, out=out, force=args.force, super_weights=selection,
                          original=lambda: load_from_args(args, quiet=True), data=args.data,
                          on_event=progress.on_event)
    show_tables(args, finetune_tables(result, lm.ref))
    plots = plot_finetune(result, args.plot or out, lm.ref)
    write_json_arg(args.json, result.to_dict())
    for path in plots:
        console(stderr=True).print(f"Wrote {path}", markup=False)
    return 0 if result.survives else 1
