"""One progress event for every long operation: what the library tells `on_event`, and what
`RunProgress` prints from it (the lines a user reads in a log)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from superweight.ablation import ablation_table, scale_sweep, stopword_shift
from superweight.evaluate import Evaluator
from superweight.evaluate.metrics import perplexity_metric
from superweight.evaluate.perplexity import perplexity
from superweight.events import Event, emitter
from superweight.model import wrap_model
from superweight.quantize.sweep import run_sweep
from superweight.records import SuperWeight
from superweight.report.progress import RunProgress
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

SW = SuperWeight(2, 17, 45)
DOCS = ["The cat sat on the mat. It was a sunny day, and the birds sang in the trees."] * 4


@pytest.fixture(scope="module")
def lm():
    model = tiny_model("llama")
    plant_super_weight(model, SW.layer, SW.row, SW.col, weight=50.0)
    return wrap_model(model, tiny_tokenizer(), ref="planted-llama")


def evaluator(on_event) -> Evaluator:
    """A real perplexity on a few documents, told to `on_event` as `evaluate` tells it."""
    emit = emitter(on_event)

    def run(lm) -> dict:
        emit("ppl", "docs", 1, 1)
        result = perplexity(lm, DOCS, seqlen=16, batch_size=1, on_event=on_event)
        emit("ppl", "docs", 1, 1, result, ended=True)
        return {"docs_ppl": result.ppl}
    return Evaluator(run, [perplexity_metric("docs_ppl", "docs ppl")], steps=1)


def ticking():
    t = iter(range(0, 10_000, 2))  # every clock read: 2 s later
    return lambda: next(t)


def test_each_operation_tells_its_stages_and_steps_in_order(lm):
    heard: list[Event] = []
    ablation_table(lm, [SW], evaluator(heard.append), k=4, on_event=heard.append)
    stages = [(e.name, e.index, e.total, e.ended) for e in heard if e.kind == "stage"]
    assert stages[:2] == [("Original", 1, 4, False), ("Original", 1, 4, True)]
    assert [s[0] for s in stages[::2]] == ["Original", "Prune SW", "Prune Non-SW", "Prune SW + restore SA"]
    ended = [e for e in heard if e.kind == "stage" and e.ended]
    assert ended[1].result.condition == "Prune SW"  # a stage ends with what it made: its row
    batches = [e for e in heard if e.kind == "batch"]
    assert batches and all(0 < e.index <= e.total for e in batches)  # the windows, as they are scored

    heard.clear()
    scale_sweep(lm, [SW], [0, 1], evaluator(None), on_event=heard.append)
    assert [(e.name, e.ended, e.result is not None) for e in heard] == [
        ("× 0", False, False), ("× 0", True, True), ("× 1", False, False), ("× 1", True, True)]

    heard.clear()
    run_sweep(lm, evaluator(None), bits=[4], blocks=[64], methods=["rtn", "superweight"], super_weights=[SW],
              on_event=heard.append)
    assert [(e.name, e.index, e.total) for e in heard if not e.ended] == [
        ("as loaded", 1, 3), ("rtn W4 block 64", 2, 3), ("superweight W4 block 64", 3, 3)]
    assert [e.result.method for e in heard if e.ended] == ["fp32", "rtn", "superweight"]  # each its row


def test_run_progress_prints_one_line_per_step_with_the_time_left(lm):
    err = Console(file=io.StringIO(), width=200)
    with RunProgress("demo", 2, ["docs"], console=err, clock=ticking()) as progress:
        scale_sweep(lm, [SW], [0, 1], evaluator(progress.on_event), on_event=progress.on_event)
    lines = err.file.getvalue().strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] × 0 · docs: ppl ") and "tokens)" in lines[0]
    assert lines[1].startswith("[2/2] × 1 · docs: ppl ") and lines[1].endswith("about 0 s left")


def test_batches_as_steps_for_a_run_made_of_batches(lm):
    err = Console(file=io.StringIO(), width=200)
    passages = ["the cat sat on the mat today", "birds sang in the trees all day"] * 2
    with RunProgress("stopwords", 2, 2, console=err, clock=ticking(), batches=True) as progress:
        stopword_shift(lm, [SW], passages, top=3, batch_size=2, on_event=progress.on_event)
    lines = err.file.getvalue().strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["[1/4] original · batch 1", "[2/4] original · batch 2",
                                                      "[3/4] pruned · batch 1", "[4/4] pruned · batch 2"]
    assert "2/4 passages" in lines[0] and "4/4 passages" in lines[3]



def test_detection_tells_each_prompt_and_each_perplexity_of_its_verification(lm):
    from superweight.detect import run_detection
    from superweight.report.progress import StatusLine

    heard: list[Event] = []
    run = run_detection(lm, ["the cat sat", "birds sang"], verify_threshold=3.0, text="some plain text " * 8,
                        on_event=heard.append)
    prompts = [(e.name, e.ended) for e in heard if e.kind == "prompt"]
    assert prompts == [("prompt 1", False), ("prompt 1", True), ("prompt 2", False), ("prompt 2", True)]
    checks = [e for e in heard if e.kind == "verify" and e.ended]
    assert [e.index for e in checks] == list(range(1, checks[0].total + 1))  # the plan counted every one
    assert checks[0].name == "as loaded" and checks[0].result == run.verification.ppl
    assert any(e.name == f"{SW.label()} zeroed" for e in checks)
    err = Console(file=io.StringIO(), width=200)
    with StatusLine("Detecting", err) as line:  # what `detect` shows: the step running, from the same events
        for e in heard:
            line.on_event(e)
    assert line.text == f"Detecting: {checks[-1].name} ({checks[-1].index}/{checks[-1].total})…"


def test_steps_the_plan_does_not_name_only_move_the_description(lm):
    """A report detects (and verifies) before its evaluations: those steps are told too, but the bar
    and its lines count the evaluations the plan names."""
    from superweight.overview import OverviewConfig, gather

    err = Console(file=io.StringIO(), width=200)
    config = OverviewConfig(ablate=True, verify=True, verify_threshold=3.0)
    with RunProgress("report", 4, ["docs"], console=err, clock=ticking()) as progress:
        overview = gather(lm, config, evaluator=evaluator(progress.on_event), on_event=progress.on_event)
    lines = err.file.getvalue().strip().splitlines()
    ran = [r["condition"] for r in overview.results[0]["rows"] if r["summary"]]  # the rows evaluated
    assert [line.split(" · docs")[0] for line in lines] == [f"[{i}/4] {c}" for i, c in enumerate(ran, 1)]
    assert overview.detection.verification is not None and progress.completed == len(ran) >= 2
