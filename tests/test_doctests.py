"""The examples in the docstrings run: they are documentation a reader copies.

Every module with examples is in one of three lists, and a test checks that none is left out:
- `CHEAP`: pure math, tiny models, no data — run as unit tests;
- `WITH_MODEL`: examples on the real default model (`lm`, `load_model("smollm2-135m")`, the fetched
  Wikipedia text) — run as integration tests, with the session's loaded model;
- every other module marks each of its examples `# doctest: +SKIP` on purpose (they train, evaluate
  for minutes, or write files), which the last test checks.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import superweight

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
CHEAP = [
    "superweight.events",
    "superweight.evaluate.metrics",
    "superweight.evaluate.settings",
    "superweight.massive",
    "superweight.model.gguf_write",
    "superweight.moe",
    "superweight.quantize",
    "superweight.quantize.api",
    "superweight.quantize.gguf",
    "superweight.runtime.protect",
    "superweight.quantize.sweep",
    "superweight.quantize.w8a8.core",
    "superweight.report.html",
    "superweight.report.progress",
    "superweight.report.tables",
    "superweight.runtime.protect",
    "superweight.selection",
    "superweight.tensor.quant",
    "superweight.tensor.stats",
    "superweight.verify",
    "superweight.testing",
    "superweight.testing_gguf",
]
WITH_MODEL = [
    "superweight.activations",
    "superweight.detect",
    "superweight.finetune.guard",
    "superweight.interventions",
    "superweight.model.budget",
    "superweight.model.load",
    "superweight.model.offload",
    "superweight.overview",
]


def _run(name: str, globs: dict | None = None) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs=globs, optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0, f"{result.failed} example(s) in {name} failed (run python -m doctest -v)"


@pytest.mark.parametrize("name", CHEAP)
def test_docstring_examples_run(name):
    _run(name)


@pytest.mark.integration
@pytest.mark.parametrize("name", WITH_MODEL)
def test_docstring_examples_on_the_default_model_run(name, default_lm, fetched_data):
    from superweight.model import load_model

    def cached(ref: str = "smollm2-135m", **kwargs):  # the examples' load_model: the session's model
        return default_lm if ref == "smollm2-135m" and not kwargs else load_model(ref, **kwargs)

    _run(name, {"lm": default_lm, "load_model": cached})


def _modules_with_examples() -> dict[str, list[doctest.Example]]:
    found = {}
    for info in pkgutil.walk_packages(superweight.__path__, "superweight."):
        module = importlib.import_module(info.name)
        examples = [e for t in doctest.DocTestFinder().find(module) for e in t.examples]
        if examples:
            found[info.name] = examples
    return {"superweight": [], **found}


def test_every_example_runs_somewhere_or_is_skipped_on_purpose():
    for name, examples in _modules_with_examples().items():
        if name in CHEAP or name in WITH_MODEL:
            continue
        running = [e.source.strip() for e in examples if not e.options.get(doctest.SKIP)
                   and not e.source.lstrip().startswith(("from ", "import "))]
        assert not running, f"{name}: examples that never run: {running[:2]} (add it to a list or mark +SKIP)"
