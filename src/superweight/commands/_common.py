"""Flags shared by the subcommands, and the one place each kind of flag becomes a library value.

- model flags → `load_model` (`add_model_args`, `load_from_args`; `check` takes two models);
- evaluation flags → `EvalSettings` (`add_eval_args`, `eval_settings`: the only such function);
- coordinate flags → `resolve_super_weights` (`add_coords_args`, `coords_from_args`,
  `select_super_weights`), one grammar for every command: `--coords L,R,C[,E]`, repeatable, `;`
  between several in one flag;
- `--json PATH` (`add_json_arg`, `write_json_arg`; `-` is stdout).

Defaults are the library's own constants. Everything is validated before the model loads, so a typo
costs no time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from superweight.errors import SuperweightError
from superweight.report.console import console  # noqa: F401  (re-exported for the commands)

NONE = "none"  # `--ppl none` / `--tasks none` skips that half


# --- small parsers ---------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    """argparse type for a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_list(text: str, kind=str, what: str = "value") -> list:
    """'a,b,c' → [a, b, c], converting each item; a clear error for a bad item."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise SuperweightError(f"{what} {item!r} is not a valid {kind.__name__}") from None
    if not out:
        raise SuperweightError(f"no {what} given")
    return out


def parse_names(text: str | None, what: str) -> tuple[str, ...] | None:
    """A comma list of names; 'none' is the empty tuple; None (flag not given) stays None."""
    if text is None:
        return None
    if text.strip().lower() == NONE:
        return ()
    return tuple(parse_list(text, str, what))


def eprint(*a) -> None:
    print(*a, file=sys.stderr)


# --- model -----------------------------------------------------------------------------------------

def without_transformers_hqq() -> None:
    """Tell transformers that hqq is absent, for this command's process only (never on importing the
    library). When hqq is installed (the `quant` extra), transformers imports it for an HQQ-quantized
    KV cache that no command uses, and hqq compiles functions with `torch.compile` while it is
    imported: ~2.5 s of CPU in every command that loads a model (measured: `import
    transformers.cache_utils` 4.9 s CPU with hqq, `import torch, hqq.core.quantize` 4.3 s against
    1.6 s for torch alone). `quantize --method hqq` imports hqq itself and is unaffected."""
    import importlib.util

    if "transformers.cache_utils" in sys.modules or importlib.util.find_spec("hqq") is None:
        return
    import transformers.utils
    from transformers.utils import import_utils

    def absent(*args, **kwargs) -> bool:
        return False

    import_utils.is_hqq_available = transformers.utils.is_hqq_available = absent


def add_model_args(parser: argparse.ArgumentParser, models: tuple[str, ...] = ("model",)) -> None:
    """The model reference(s) and how to load them (the same flags for every command; with two
    references, as for `check`, the flags apply to both)."""
    import inspect

    without_transformers_hqq()  # before anything imports transformers' models

    from superweight.model.gguf import CACHE_DTYPES
    from superweight.model.load import DEFAULT_MODEL, DTYPES, load_model

    if models == ("model",):
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                            help=f"hub id, local directory, .gguf file or built-in alias (default: {DEFAULT_MODEL})")
    else:
        for name in models:
            parser.add_argument(name, help="hub id, local directory, .gguf file or built-in alias")
    params = inspect.signature(load_model).parameters
    default_dtype = params["dtype"].default
    parser.add_argument("--dtype", default=default_dtype, choices=[*DTYPES, "auto"],
                        help=f"weights dtype (default {default_dtype}; auto: the checkpoint's own)")
    parser.add_argument("--device", default=params["device"].default,
                        help="cpu, cuda, cuda:N or auto (all GPUs, then RAM, then disk) (default cpu)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="RAM budget for the weights, e.g. 2GiB or 500MB: layers beyond it stay on disk "
                             "and are read when used (default: automatic when the model would not fit)"
                             + ("; split between the models" if len(models) > 1 else ""))
    parser.add_argument("--cache-dtype", default=params["cache_dtype"].default, choices=list(CACHE_DTYPES),
                        help="dtype of the cached safetensors copy of a .gguf or alias (default float32, "
                             "exact; bfloat16 halves the disk and rounds the weights)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub (off unless asked)")
    parser.add_argument("--layers", dest="layers_path", metavar="PATH",
                        help="override: dotted path of the decoder layer list (e.g. model.layers)")
    parser.add_argument("--down-proj", dest="down_proj_path", metavar="PATH",
                        help="override: dotted path of the MLP down projection within a layer")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared CPU)")


def load_from_args(args: argparse.Namespace, ref: str | None = None, share: int = 1, quiet: bool = False):
    """Load the model the flags name (`ref` for commands with several, each given 1/`share` of the
    memory budget), after setting torch's CPU threads if asked (`quiet`: no spinner, e.g. under a
    progress bar)."""
    from superweight.model import load_model

    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    budget = getattr(args, "max_memory", None)  # bytes (`superweight.cli.main` parsed it)
    if budget is not None and share > 1:
        budget //= share
    return load_model(ref or args.model, dtype=args.dtype, device=args.device,
                      trust_remote_code=args.trust_remote_code, layers=args.layers_path,
                      down_proj=args.down_proj_path, quiet=quiet,
                      cache_dtype=getattr(args, "cache_dtype", "float32"), max_memory=budget)


# --- evaluation ------------------------------------------------------------------------------------

def add_eval_args(p: argparse.ArgumentParser) -> None:
    """What to evaluate: the same flags for eval, ablate, scale and quantize."""
    from superweight.evaluate import QUICK, TASKS
    from superweight.evaluate.perplexity import DEFAULT_SEQLEN
    from superweight.evaluate.suite import DEFAULT_PPL
    from superweight.evaluate.zeroshot import DEFAULT_BATCH_SIZE

    p.add_argument("--quick", action="store_true",
                   help=f"the quick preset: every task on its first {QUICK['limit']} items, "
                        f"{QUICK['max_tokens']:,} tokens of each text")
    p.add_argument("--tasks", metavar="T1,T2",
                   help=f"zero-shot tasks, comma-separated, or 'none' (default: all {len(TASKS)}: "
                        f"{','.join(TASKS)}; none when only --ppl is given)")
    p.add_argument("--ppl", metavar="S1,S2",
                   help=f"perplexity texts (wiki, c4, ptb, or a .txt/.jsonl/.parquet file), comma-separated, "
                        f"or 'none' (default: {','.join(DEFAULT_PPL)}; none when only --tasks is given)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="items per zero-shot task (default: all)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help="tokens of each perplexity text (default: all)")
    p.add_argument("--seqlen", type=positive_int, metavar="N",
                   help=f"perplexity window (default {DEFAULT_SEQLEN}, capped by the model's context)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"zero-shot batch size (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--hub", action="store_true",
                   help="read WikiText-2, C4, PTB and lm-eval's tasks from the Hugging Face hub")


EVAL_FLAGS = ("quick", "tasks", "ppl", "limit", "max_tokens", "seqlen", "batch_size", "hub")


def eval_flags_given(args) -> list[str]:
    return ["--" + k.replace("_", "-") for k in EVAL_FLAGS if getattr(args, k, None) not in (None, False)]


def eval_settings(args):
    """The evaluation settings the flags ask for, checked (names, fetched data) before any load."""
    from superweight.evaluate import EvalSettings

    return EvalSettings.from_options(
        quick=args.quick, tasks=parse_names(args.tasks, "task"), ppl=parse_names(args.ppl, "text"),
        limit=args.limit, max_tokens=args.max_tokens, seqlen=args.seqlen, batch_size=args.batch_size,
        hub=args.hub).checked()


# --- super weights -----------------------------------------------------------------------------------

def add_coords_args(p: argparse.ArgumentParser, catalog: bool = True, default: str = "detect them") -> None:
    """`--coords L,R,C[,E]` (repeatable, `;` between several), or `--catalog` with `--model-id`."""
    from superweight.selection import COORDS_GRAMMAR

    g = p.add_mutually_exclusive_group()
    g.add_argument("--coords", action="append", metavar="L,R,C[,E]",
                   help=f"super weights as {COORDS_GRAMMAR}; repeatable (default: {default})")
    if catalog:
        g.add_argument("--catalog", action="store_true",
                       help="use the catalog's coordinates for this model (see --model-id)")
        p.add_argument("--model-id", help="hub id to look up in the catalog (default: from the reference)")
    p.add_argument("--keep", action="append", dest="coords_deprecated", help=argparse.SUPPRESS)


def coords_from_args(args) -> list | None:
    """The parsed `--coords` (None when not given); the old `--keep` spelling still works."""
    from superweight.selection import parse_coords

    given = list(args.coords or []) + list(getattr(args, "coords_deprecated", None) or [])
    if getattr(args, "coords_deprecated", None):
        eprint("note: --keep is deprecated; use --coords L,R,C[,E]")
    if given and getattr(args, "catalog", False):
        raise SuperweightError("give --coords or --catalog, not both")
    return parse_coords(given) if given else None


def select_super_weights(lm, args, coords: list | None, include_late: bool = False):
    """`resolve_super_weights` with what the flags say (`coords`: from `coords_from_args`, parsed
    before the load); detection shows a spinner on stderr."""
    from superweight.selection import resolve_super_weights

    catalog_id = None
    if getattr(args, "catalog", False):
        catalog_id = args.model_id or lm.model_id or lm.ref
    if coords is None and catalog_id is None:
        with console(stderr=True).status("Detecting super weights…"):
            return resolve_super_weights(lm, include_late=include_late)
    return resolve_super_weights(lm, coords, catalog_id, include_late)


def model_and_super_weights(args, coords: list | None, require: str | None = None):
    """The start of the ablation commands: load the model, select its super weights and say which.
    `require` names what the command does with them ("scale"): finding none is then an error."""
    from superweight.report.tables import super_weight_line

    lm = load_from_args(args)
    selection = select_super_weights(lm, args, coords)
    console().print(super_weight_line(selection), markup=False)
    if require and not selection.super_weights:
        raise SuperweightError(f"no super weight found in {lm.ref}: nothing to {require}; give --coords L,R,C "
                               "or --catalog")
    return lm, selection


# --- output --------------------------------------------------------------------------------------------

def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=output_file, metavar="PATH",
                   help="write the full result as JSON (schema and tool versions, model hash, settings; - for stdout)")


def write_json_arg(path: Path | None, payload) -> None:
    """Write the result where `--json` says (atomically; `-` prints it), and say so on stderr."""
    if path is None:
        return
    from superweight.report.output import save_json

    where = save_json(path, payload)
    if where is not None:
        console(stderr=True).print(f"Wrote {where}")


def show_tables(args, tables) -> None:
    """Print the tables on stdout, unless stdout carries the JSON (`--json -`)."""
    from superweight.report.tables import show

    if str(getattr(args, "json", None)) != "-":
        show(console(), tables)


def present(tables, payload: dict, args, what: str, plot=None) -> None:
    """Show the tables, then write `--json` and the `--out` folder (markdown, JSON, PNG via `plot`)."""
    from superweight.report.output import write_bundle

    out = console()
    show_tables(args, tables)
    write_json_arg(args.json, payload)
    for path in write_bundle(getattr(args, "out", None), what, tables, payload, plot):
        out.print(f"Wrote {path}", markup=False)


def folder(text: str) -> Path:
    """argparse type for an output folder: refused at once (exit 2) when a file is in the way, so a
    long run never ends in an error at its last step."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


def output_file(text: str) -> Path:
    """argparse type for a file to write (`-` is stdout): refused at once when it cannot be written."""
    from superweight._io import output_path_problem

    problem = None if text == "-" else output_path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def add_out_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", type=folder, metavar="DIR",
                   help=f"write {what}.md, {what}.json and {what}.png into this folder")
