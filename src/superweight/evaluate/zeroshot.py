"""Zero-shot accuracy through lm-evaluation-harness, on the model as it sits in memory.

We do not score choices ourselves: the in-memory model is wrapped in lm-eval's `HFLM` (which takes a
model object, so an edited model is evaluated without being saved) and each task runs through
`lm_eval.simple_evaluate`. Offline, the tasks are the YAMLs in `superweight/tasks/` (copies of
lm-eval's standard definitions reading local files); a per-run YAML `include`s one and fills in the
fetched data file, and a `TaskManager` indexes only those, so nothing reaches for the hub. Online
(`hub=True`) the standard lm-eval task names are used as they are. Tasks run one at a time so
progress can be reported per task; seeds are fixed, so two runs give the same figures.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from superweight.errors import SuperweightError
from superweight.evaluate import sources
from superweight.events import OnEvent, emitter
from superweight.tasks import TASKS_DIR

TASKS = sources.TASK_SOURCES  # arc_challenge, arc_easy, hellaswag, lambada, piqa, sciq, winogrande
PRIMARY_METRIC = "acc"  # the metric averaged over tasks, as in the paper's Table 1
DEFAULT_BATCH_SIZE = 4
BOOTSTRAP_ITERS = 1000  # for stderrs lm-eval can only bootstrap (LAMBADA perplexity)
SEED = 1234  # lm-eval's default numpy/torch/few-shot seed, also used for Python's `random`
LOADERS = {".arrow": "arrow", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
METRIC_FILTER = "none"  # lm-eval reports metrics as "<metric>,<filter>"
QUIET_LOGGERS = ("lm_eval", "lm-eval", "datasets", "transformers")


@dataclass
class TaskResult:
    """One task's figures: every metric lm-eval reported, with its standard error."""

    name: str  # our name (e.g. "lambada")
    task: str  # lm-eval's task name (e.g. "lambada_openai")
    metrics: dict[str, float]
    stderr: dict[str, float]
    items: int
    seconds: float
    data: str  # the local file or the hub dataset read
    data_sha256: str | None = None
    hub: bool = False
    versions: dict = field(default_factory=dict)

    @property
    def acc(self) -> float:
        return self.metrics[PRIMARY_METRIC]

    def to_dict(self) -> dict:
        return asdict(self)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """Task names validated against the registry, in the order given, without duplicates."""
    if not tasks:
        raise SuperweightError(f"no tasks given; known: {', '.join(TASKS)}")
    return [sources.get_source(t, "task").name for t in dict.fromkeys(tasks)]


def zero_shot(lm, tasks: Sequence[str] = TASKS, *, limit: int | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, hub: bool = False,
              data_files: Mapping[str, str | os.PathLike] | None = None, progress: bool = True,
              on_event: OnEvent | None = None) -> dict[str, TaskResult]:
    """Zero-shot accuracy of `lm` (a `LoadedModel`) on lm-eval tasks; `limit` items per task.

    `data_files` maps a task to a local data file in that task's Hugging Face schema (overrides the
    fetched copy). `on_event` hears each task ("task") begin and end (`superweight.events`).

    >>> zero_shot(load_model(), ["arc_easy", "piqa"], limit=100)["piqa"].acc  # doctest: +SKIP
    """
    tasks = check_tasks(tasks)
    if limit is not None and limit < 1:
        raise SuperweightError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise SuperweightError(f"batch size must be at least 1, got {batch_size}")
    files = {} if hub else _data_files(tasks, data_files or {})
    with _quiet(progress), tempfile.TemporaryDirectory(prefix="superweight-tasks-") as tmp:
        manager = _task_manager(files, Path(tmp), hub)
        harness = _harness(lm, batch_size, progress)
        results = {}
        emit = emitter(on_event)
        for i, name in enumerate(tasks, 1):
            emit("task", name, i, len(tasks))
            with _silent(not progress):
                results[name] = _run_task(harness, manager, name, files.get(name), limit, hub)
            emit("task", name, i, len(tasks), results[name], ended=True)
    return results


def _data_files(tasks: list[str], given: Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    """The data file of every task, checked before any model work starts (fails fast)."""
    unknown = set(given) - set(tasks)
    if unknown:
        raise SuperweightError(f"data files given for tasks not requested: {', '.join(sorted(unknown))}")
    files = {}
    for name in tasks:
        path = Path(given[name]).expanduser() if name in given else sources.task_data_file(name)
        if not path.is_file():
            raise SuperweightError(f"data file {str(path)!r} for task {name!r} does not exist")
        if path.suffix.lower() not in LOADERS:
            raise SuperweightError(f"task data {path.name!r}: use one of {', '.join(LOADERS)}")
        files[name] = path
    return files


def _task_manager(files: dict[str, Path], tmp: Path, hub: bool):
    """lm-eval's TaskManager over per-run YAMLs that include ours and name the data files."""
    from lm_eval.tasks import TaskManager

    if hub:
        return TaskManager()
    for name, path in files.items():
        source = sources.get_source(name, "task")
        (tmp / f"{source.task}.yaml").write_text(_overlay_yaml(source, path))
    return TaskManager(include_path=str(tmp), include_defaults=False)


def _overlay_yaml(source: sources.Source, path: Path) -> str:
    import yaml

    overlay = {"include": str(TASKS_DIR / f"{source.task}.yaml"),
               "dataset_path": LOADERS[path.suffix.lower()],
               "dataset_kwargs": {"data_files": {source.split: str(path.resolve())}}}
    return yaml.safe_dump(overlay, sort_keys=False)


def _harness(lm, batch_size: int, progress: bool):
    """lm-eval's HFLM around the very model object (no copy, no reload) and a copy of its tokenizer.

    The tokenizer is copied because HFLM sets a pad token on the one it is given. Without progress,
    the scoring calls get lm-eval's own `disable_tqdm=True`.
    """
    from lm_eval.models.huggingface import HFLM

    if lm.tokenizer is None:
        raise SuperweightError("zero-shot evaluation needs the model's tokenizer")
    harness = HFLM(pretrained=lm.model, tokenizer=copy.deepcopy(lm.tokenizer), batch_size=batch_size)
    if getattr(lm.model, "hf_device_map", None):  # offloaded: HFLM took the first parameter's (maybe meta) device
        harness._device = lm.device
    if not progress:
        for method in ("loglikelihood", "loglikelihood_rolling"):
            setattr(harness, method, functools.partial(getattr(harness, method), disable_tqdm=True))
    return harness


def _run_task(harness, manager, name: str, path: Path | None, limit: int | None, hub: bool) -> TaskResult:
    import lm_eval

    source = sources.get_source(name, "task")
    task = source.hub.task if hub else source.task
    start = time.perf_counter()
    try:
        out = lm_eval.simple_evaluate(model=harness, tasks=[task], limit=limit, task_manager=manager,
                                      bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False,
                                      random_seed=SEED, numpy_random_seed=SEED, torch_random_seed=SEED,
                                      fewshot_random_seed=SEED)
    except (ConnectionError, OSError) as e:
        where = f"the hub ({source.hub.path})" if hub else str(path)
        hint = f"; offline, run `{sources.FETCH_COMMAND} {name}` and leave out --hub" if hub else ""
        raise SuperweightError(f"could not load data for task {name!r} from {where}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}") from e
    return _task_result(name, task, out, time.perf_counter() - start, path, hub, source)


def _task_result(name: str, task: str, out: dict, seconds: float, path: Path | None, hub: bool,
                 source: sources.Source) -> TaskResult:
    raw = out["results"][task]
    metrics, stderr = {}, {}
    for key, value in raw.items():
        metric, _, filt = key.partition(",")
        if filt != METRIC_FILTER or not isinstance(value, (int, float)):
            continue
        if metric.endswith("_stderr"):
            stderr[metric.removesuffix("_stderr")] = float(value)
        else:
            metrics[metric] = float(value)
    items = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
    data = f"{source.hub.path}" + (f" ({source.hub.name})" if source.hub.name else "") if hub else str(path)
    sha = None if hub else _sha(path)
    return TaskResult(name=name, task=task, metrics=metrics, stderr=stderr, items=items, seconds=seconds,
                      data=data, data_sha256=sha, hub=hub,
                      versions={k: v for k, v in out.get("versions", {}).items() if k == task})


def _sha(path: Path | None) -> str | None:
    from superweight._io import sha256_file

    return sha256_file(path) if path else None


@contextlib.contextmanager
def _silent(on: bool) -> Iterator[None]:
    """Without progress, swallow what lm-eval prints by itself while it scores a task (its request
    bars, its "bootstrapping for stddev" line); errors still raise. A caller drawing its own progress
    writes to the console it opened, not to the redirected streams."""
    if not on:
        yield
        return
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Keep lm-eval's INFO chatter off the terminal; hide the datasets progress bars unless asked for."""
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    import datasets

    bars = datasets.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    if not progress:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
