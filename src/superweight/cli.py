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


def docs_page(command: str) -> str:
    """The documentation page of a command, named without a URL (the site is built from docs/)."""
    return f"docs/commands/{command}.md"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only the command it names is registered (each command's
    module imports what it needs, so `superweight detect` does not import fine-tuning or quantization)."""
    parser = argparse.ArgumentParser(
        prog="superweight",
        description="Find, check, ablate and protect the super weights of causal language models.")
    parser.add_argument("--version", action="version", version=f"superweight {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    first = next((a for a in argv or [] if not a.startswith("-")), None)
    for name in ([first] if first in COMMANDS else COMMANDS):
        importlib.import_module(f"superweight.commands.{name}").register(sub)
        _end_help_with(sub.choices[name], f"Docs: {docs_page(name)}")
    return parser


def _end_help_with(parser: argparse.ArgumentParser, line: str) -> None:
    """Every --help of a command, and of its actions (`data fetch`, `catalog add`), ends with `line`."""
    parser.epilog = f"{parser.epilog}\n\n{line}" if parser.epilog else line
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _end_help_with(child, line)


def main(argv: list[str] | None = None) -> int:
    from superweight._io import set_command

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    set_command(argv)
    try:
        if getattr(args, "max_memory", None) is not None:  # the budget in bytes, once, at the edge
            from superweight.model.budget import parse_size

            args.max_memory = parse_size(args.max_memory)
        return int(args.func(args) or 0)
    except SuperweightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        set_command(None)


if __name__ == "__main__":
    sys.exit(main())
