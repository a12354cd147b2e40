"""The examples in the docstrings run (they are documentation a reader copies).

Listed here are the modules whose examples are cheap (pure math, tiny models, no data); examples
that need the real model or fetched data are marked `# doctest: +SKIP` in place, with the reason.
Add a module to MODULES once its examples run in well under a second or two.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "superweight.evaluate.metrics",
    "superweight.evaluate.settings",
    "superweight.quantize",
    "superweight.quantize.sweep",
    "superweight.quantize.w8a8.core",
    "superweight.report.html",
    "superweight.report.progress",
    "superweight.report.tables",
    "superweight.selection",
    "superweight.tensor.quant",
    "superweight.tensor.stats",
    "superweight.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0, f"{result.failed} example(s) in {name} failed (run python -m doctest -v)"
