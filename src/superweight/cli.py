"""The `superweight` command line: parse, call the library, render. Nothing is parsed at import.

Each subcommand lives in `superweight/commands/<name>.py` and exposes `register(subparsers)`, which
adds its parser and sets `func`. Errors meant for the user (`SuperweightError`) become one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from superweight import __version__
from superweight.errors import SuperweightError

COMMANDS = ["detect", "trace", "catalog", "ablate", "stopwords", "scale", "quantize", "check", "finetune", "eval",
            "data", "report", "census"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="superweight",
        description="Find, check, ablate and protect the super weights of causal language models.")
    parser.add_argument("--version", action="version", version=f"superweight {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"superweight.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from superweight._io import set_command

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    set_command(argv)
    try:
        return int(args.func(args) or 0)
    except SuperweightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
