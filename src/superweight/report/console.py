"""The rich consoles everything a person sees is printed on: stdout for results, stderr for progress."""

from __future__ import annotations

WIDE = 160  # columns when output is not a terminal (files, pipes, CI logs)


def console(stderr: bool = False):
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else WIDE)
