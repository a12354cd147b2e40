"""One progress display for long runs: what is running, how far it is, and the time left (stderr).

The runs this tool makes are repeated evaluations — Table 1 is four, a Figure 7 sweep a dozen or
more — each made of the same steps (perplexity texts, then tasks). So the time left is estimated
from the steps already done: a step not yet timed costs what the same step cost in an earlier
stage, or the mean step time before any has run twice; stages still to come cost what finished
stages cost on average (their quantization or restore overhead included). Each finished step also
prints one line, so logs of non-interactive runs read the same story.

>>> import io
>>> from rich.console import Console
>>> err = Console(file=io.StringIO(), width=100)
>>> clock = iter([0, 0, 10, 10, 12, 12, 21, 21]).__next__  # a fake clock: seconds
>>> with RunProgress("demo", stages=2, steps=["wiki"], console=err, clock=clock) as p:
...     for stage in ("a", "b"):
...         p.stage(stage)
...         p.start("wiki")
...         p.done("wiki", "ppl 16.6")
>>> print(err.file.getvalue().strip())
[1/2] a · wiki: ppl 16.6 (10 s) · about 10 s left
[2/2] b · wiki: ppl 16.6 (9 s) · about 0 s left

Every long operation of the library reports through one `on_event` (`superweight.events`), which a
`RunProgress` takes as it is: `ablation_table(..., on_event=progress.on_event)`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from superweight.events import BATCH, STAGE, Event


def duration(seconds: float | None) -> str:
    """'45 s', '12 min', '1 h 05 min'; '?' when unknown."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    if s < 100:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {round(s % 3600 / 60):02d} min"


class _Left(ProgressColumn):
    """Counts down from the latest estimate between updates."""

    def __init__(self, owner: "RunProgress"):
        super().__init__()
        self.owner = owner

    def render(self, task) -> Text:
        return Text(f"about {duration(self.owner.remaining())} left", style="progress.remaining")


class RunProgress:
    """A progress bar over `stages` × `steps` on a rich console (stderr), with a time-left estimate.

    `steps` names the steps of one stage in order (or gives their number when unnamed). Give
    `on_event` to any long operation (`superweight.events`), or call `stage(name)` when a stage
    begins and `start(step)` / `done(step, figure)` around each step. With `batches`, each "batch"
    event is a step (for runs made of batches only); otherwise batches only move the description,
    as does a step that named `steps` do not name (e.g. detection's before a report's evaluations).
    """

    def __init__(self, title: str, stages: int, steps: Sequence[str] | int, console=None,
                 clock: Callable[[], float] = time.monotonic, batches: bool = False):
        from superweight.report.console import console as make_console

        self.title = title
        self.stages = max(1, stages)
        self.named = not isinstance(steps, int)
        self.plan = list(steps) if self.named else [f"step {i + 1}" for i in range(steps)]
        self.per_stage = max(1, len(self.plan))
        self.console = console or make_console(stderr=True)
        self.clock = clock
        self.batches = batches
        self.step_times: dict[str, list[float]] = {}
        self.stage_times: list[float] = []
        self.stage_name = ""
        self.stage_index = -1
        self.stage_start: float | None = None
        self.step_start: float | None = None
        self.step_name = ""
        self._mark: float | None = None  # the end of the last step (or the start of the stage)
        self.done_in_stage = 0
        self.completed = 0
        self._estimate: tuple[float, float] | None = None  # (at clock, seconds left)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), _Left(self), console=self.console, transient=True)
        self._task = None

    # --- context -------------------------------------------------------------------------------

    def __enter__(self) -> "RunProgress":
        self._live = self.console.is_terminal  # logs and pipes get the per-step lines only
        if self._live:
            self._progress.start()
        self._task = self._progress.add_task(self.title, total=self.stages * self.per_stage)
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._progress.stop()

    # --- reporting -------------------------------------------------------------------------------

    def stage(self, name: str) -> None:
        now = self.clock()
        if self.stage_start is not None:
            self.stage_times.append(now - self.stage_start)
        self.stage_index += 1
        self.stage_name, self.stage_start, self.done_in_stage = name, now, 0
        self._mark = now
        self._describe(name)
        self._update_estimate(now)

    def start(self, step: str) -> None:
        self.step_name, self.step_start = step, self.clock()
        self._describe(f"{self.stage_name} · {step}" if self.stage_name else step)

    def done(self, step: str, figure: str = "", log: bool = True) -> None:
        """A step finished: timed from its `start`, or from the end of the previous step; one line is
        printed unless `log` is False (the bar and the estimate move either way)."""
        now = self.clock()
        since = self.step_start if self.step_start is not None else self._mark
        took = now - (since if since is not None else now)
        self.step_start, self._mark = None, now
        self.step_times.setdefault(step, []).append(took)
        self.done_in_stage += 1
        self.completed += 1
        self._update_estimate(now)
        where = f"{self.stage_name} · {step}" if self.stage_name else step
        total = self.stages * self.per_stage
        if log:
            self.console.print(f"[{self.completed}/{total}] {where}: {figure} ({duration(took)}) · "
                               f"about {duration(self.remaining())} left", markup=False, highlight=False)
        if self._task is not None:
            self._progress.update(self._task, completed=self.completed)

    def log(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def on_event(self, event: Event) -> None:
        """The one callback of every long operation (`superweight.events`): a stage begins, a step
        begins or ends (a line with its figure), a batch is done."""
        if event.kind == STAGE:
            if not event.ended:
                self.stage(event.name)
        elif event.kind == BATCH:
            if self.batches:
                self.done(f"batch {self.done_in_stage + 1}", f"{event.index}/{event.total} {event.name}")
            else:
                where = f"{self.stage_name} · {self.step_name}" if self.stage_name else self.step_name
                self._describe(f"{where} ({event.index}/{event.total} {event.name})")
        elif self.named and event.name not in self.plan:  # not one of the steps counted
            if not event.ended:
                self._describe(f"{event.name} ({event.index}/{event.total})" if event.total > 1 else event.name)
        elif not event.ended:
            self.start(event.name)
        else:
            self.done(event.name, figure(event), log=self.logs(event))

    def logs(self, event: Event) -> bool:
        """Whether a finished step prints its line (every one, here)."""
        return True

    # --- estimate --------------------------------------------------------------------------------

    def _describe(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=f"{self.title}: {text}")

    def _step_estimate(self, step: str) -> float | None:
        times = self.step_times.get(step)
        if times:
            return sum(times) / len(times)
        every = [t for ts in self.step_times.values() for t in ts]
        return sum(every) / len(every) if every else None

    def _update_estimate(self, now: float) -> None:
        rest = self.plan[self.done_in_stage:] if self.done_in_stage < len(self.plan) else []
        current = [self._step_estimate(s) for s in rest]
        if any(c is None for c in current):
            self._estimate = None
            return
        later = self.stages - max(self.stage_index, 0) - 1  # no stage() call: one implicit stage
        if self.stage_times:
            per_stage = sum(self.stage_times) / len(self.stage_times)
        else:
            steps = [self._step_estimate(s) for s in self.plan]
            per_stage = sum(steps) if None not in steps else 0.0  # type: ignore[arg-type]
        self._estimate = (now, sum(current) + max(0, later) * per_stage)  # type: ignore[arg-type]

    def remaining(self) -> float | None:
        """Seconds left by the latest estimate, counted down since it was made; None before any."""
        if self._estimate is None:
            return None
        at, left = self._estimate
        return max(0.0, left - (self.clock() - at))


def _survivors(result: dict) -> str:
    rows = result.get("rows") or []
    return f"{sum(r.survives for r in rows)} of {len(rows)} super activation(s) survive"


# What a finished step's line says, by the event's kind; any other kind prints its result as it is.
FIGURES: dict[str, Callable[[Any], str]] = {
    "ppl": lambda r: f"ppl {r.ppl:.4g} ({r.tokens:,} tokens)",
    "task": lambda r: f"acc {r.acc:.4f} ({r.items} items)",
    "train": lambda r: f"loss {r['loss']:.4f}",
    "warmup": lambda r: "gradients accumulated",
    "save": lambda r: f"checkpoint written to {r['out']}",
    "check": _survivors,
    "prompt": lambda r: f"{len(r.massive)} massive activation(s), {len(r.super_weights)} candidate(s)",
    "verify": lambda r: f"ppl {r:.4g}",
    "score": lambda r: f"ppl {r['ppl']:.4g}" + (f", KLD {r['kld_mean']:.4f}" if "kld_mean" in r else "")
                       + f" ({r['tokens']:,} tokens)",
}


def figure(event: Event) -> str:
    """The figure a finished step's line shows."""
    fmt = FIGURES.get(event.kind)
    return fmt(event.result) if fmt else ("" if event.result is None else str(event.result))


class StatusLine:
    """For runs of seconds to minutes whose steps are not known in advance (detection, its
    verification): a spinner on stderr that names the step running, from the same events.

    >>> import io
    >>> from rich.console import Console
    >>> from superweight.events import Event
    >>> with StatusLine("Detecting", Console(file=io.StringIO())) as line:
    ...     line.on_event(Event("verify", "(11, 507, 1229) zeroed", 3, 6))
    ...     line.text
    'Detecting: (11, 507, 1229) zeroed (3/6)…'
    """

    def __init__(self, title: str, console=None):
        from superweight.report.console import console as make_console

        self.title, self.text = title, title + "…"
        self._status = (console or make_console(stderr=True)).status(self.text)

    def __enter__(self) -> "StatusLine":
        self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._status.__exit__(*exc)

    def on_event(self, event: Event) -> None:
        if event.ended or event.kind == BATCH:
            return
        count = f" ({event.index}/{event.total})" if event.total > 1 else ""
        self.text = f"{self.title}: {event.name}{count}…"
        self._status.update(self.text)


LOGGED_STEPS = 20  # a fine-tuning run prints about this many step lines, however long it is


class TrainProgress(RunProgress):
    """The progress of a fine-tuning run (`superweight.finetune.finetune`'s `on_event`): SMT's
    warm-up batches, the optimizer steps, saving and checking, one bar with the time left.

    The time left is the steps still to come at the mean time of the steps so far. Every warm-up
    batch, the first and last optimizer step and about `LOGGED_STEPS` in between print a line.

    >>> import io
    >>> from rich.console import Console
    >>> err = Console(file=io.StringIO(), width=100)
    >>> clock = iter([0, 2, 2, 2, 6, 6, 6, 7, 7]).__next__  # a fake clock: seconds
    >>> from superweight.events import emitter
    >>> with TrainProgress("demo", steps=2, check=False, console=err, clock=clock) as p:
    ...     emit = emitter(p.on_event)
    ...     for i in (1, 2):
    ...         emit("train", f"step {i}", i, 2)
    ...         emit("train", f"step {i}", i, 2, {"loss": 5.0 - i}, ended=True)
    ...     emit("save", "save", 1, 1)
    ...     emit("save", "save", 1, 1, {"out": "tuned"}, ended=True)
    >>> print(err.file.getvalue().strip())
    [1/3] step 1: loss 4.0000 (2 s) · about 4 s left
    [2/3] step 2: loss 3.0000 (4 s) · about 3 s left
    [3/3] save: checkpoint written to tuned (1 s) · about 0 s left
    """

    def __init__(self, title: str, steps: int, warmup: int = 0, save: bool = True, check: bool = True,
                 console=None, clock: Callable[[], float] = time.monotonic):
        plan = ([f"warm-up {i}" for i in range(1, warmup + 1)] + [f"step {i}" for i in range(1, steps + 1)]
                + ["save"] * save + ["check"] * check)
        super().__init__(title, 1, plan, console, clock)
        self.every = max(1, steps // LOGGED_STEPS)

    def logs(self, event: Event) -> bool:
        """The first and last optimizer step and about `LOGGED_STEPS` between print a line."""
        i = event.index
        return event.kind != "train" or i in (1, event.total) or i % self.every == 0
