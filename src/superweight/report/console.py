"""The rich consoles everything a person sees is printed on: stdout for results, stderr for progress."""

from __future__ import annotations

WIDE = 160  # columns when output is not a terminal (files, pipes, CI logs)


def console(stderr: bool = False):
    """A console on the stream as it is now (held, so that output a library redirects for a while,
    such as lm-eval's own bars, never takes this console's output with it)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    probe = Console(file=stream)
    return Console(file=stream, highlight=False, width=None if probe.is_terminal else WIDE)
