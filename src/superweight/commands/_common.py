"""Arguments and rendering helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys

from superweight.errors import SuperweightError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model reference and how to load it (the same flags for every command)."""
    parser.add_argument("model", nargs="?", default="smollm2-135m",
                        help="hub id, local directory, .gguf file or built-in alias (default: smollm2-135m)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="weights dtype (default float32; auto: the checkpoint's own)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N or auto (all GPUs, then RAM, then disk) (default cpu)")
    add_memory_arg(parser)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub (off unless asked)")
    parser.add_argument("--layers", dest="layers_path", metavar="PATH",
                        help="override: dotted path of the decoder layer list (e.g. model.layers)")
    parser.add_argument("--down-proj", dest="down_proj_path", metavar="PATH",
                        help="override: dotted path of the MLP down projection within a layer")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared CPU)")
    parser.add_argument("--cache-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the cached safetensors copy of a .gguf or alias (default float32, "
                             "exact; bfloat16 halves the disk and rounds the weights)")


def add_memory_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="RAM budget for the weights, e.g. 2GiB or 500MB: layers beyond it stay on disk "
                             "and are read when used (default: automatic when the model would not fit)" + note)


def positive_int(text: str) -> int:
    """argparse type for a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_from_args(args: argparse.Namespace):
    """Load the model the flags name (after setting torch's CPU threads if asked)."""
    from superweight.model import load_model

    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)

    return load_model(args.model, dtype=args.dtype, device=args.device,
                      trust_remote_code=args.trust_remote_code, layers=args.layers_path,
                      down_proj=args.down_proj_path, quiet=False,
                      cache_dtype=getattr(args, "cache_dtype", "float32"),
                      max_memory=getattr(args, "max_memory", None))


WIDE = 160  # columns when output is not a terminal (files, pipes, CI logs)


def console(stderr: bool = False):
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else WIDE)


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


def eprint(*a) -> None:
    print(*a, file=sys.stderr)
