"""What to evaluate, as one validated value: the settings every evaluating feature shares.

`superweight eval`, the ablations (Table 1, Figure 6) and the quantization sweeps (Figure 7, Table 3)
all end in the same evaluation; `EvalSettings` says which tasks and texts and how much of each, and
`EvalSettings.evaluator()` turns it into the `lm -> summary` callable those features take, carrying
the typed description of every figure it returns (`Metric`).

>>> s = EvalSettings.from_options(quick=True)
>>> s.limit, s.max_tokens, s.ppl
(20, 4096, ('wiki', 'c4'))
>>> EvalSettings.from_options(ppl=["my.txt"]).tasks  # only one half asked for: only that half
()
>>> [m.label for m in EvalSettings(tasks=("piqa",), ppl=("wiki",)).metrics()]
['PIQA', 'Avg', 'wiki ppl (offline stand-in)']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Sequence

from superweight.errors import SuperweightError
from superweight.evaluate.metrics import Metric, describe, summary_metrics
from superweight.evaluate.suite import DEFAULT_PPL, QUICK, EvalResult, evaluate, preflight
from superweight.events import OnEvent
from superweight.evaluate.zeroshot import DEFAULT_BATCH_SIZE, TASKS


@dataclass(frozen=True)
class EvalSettings:
    """Zero-shot tasks, perplexity texts, and how much of each; validated on construction.

    `limit`: items per task (None: all); `max_tokens`: tokens of each text (None: all); `seqlen`: the
    perplexity window (None: 2048 capped by the model's context); `hub`: the standard sets from the
    Hugging Face hub instead of the fetched offline copies.
    """

    tasks: tuple[str, ...] = tuple(TASKS)
    ppl: tuple[str, ...] = DEFAULT_PPL
    limit: int | None = None
    max_tokens: int | None = None
    seqlen: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    hub: bool = False
    quick: bool = field(default=False, compare=False)  # made from the quick preset (recorded, not used)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(self.tasks)))
        object.__setattr__(self, "ppl", tuple(dict.fromkeys(self.ppl)))
        if not self.tasks and not self.ppl:
            raise SuperweightError("nothing to evaluate: give at least one task or perplexity text")
        for name in ("limit", "max_tokens", "seqlen", "batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SuperweightError(f"{name} must be a positive whole number, got {v!r}")
        if self.batch_size is None:
            raise SuperweightError("batch_size must be a positive whole number, got None")

    @classmethod
    def from_options(cls, *, quick: bool = False, tasks: Sequence[str] | None = None,
                     ppl: Sequence[str] | None = None, limit: int | None = None,
                     max_tokens: int | None = None, seqlen: int | None = None,
                     batch_size: int | None = None, hub: bool = False) -> "EvalSettings":
        """The full sets (or the quick preset), with every option given (not None) on top.

        Tasks and texts: when neither is given, both of the preset's; when only one is given, only
        that half is evaluated (`ppl=["my.txt"]` scores the file and runs no task).
        """
        base: Mapping = QUICK if quick else {"tasks": TASKS, "ppl": DEFAULT_PPL}
        if tasks is None and ppl is None:
            tasks, ppl = base["tasks"], base["ppl"]
        return cls(tasks=tuple(tasks or ()), ppl=tuple(ppl or ()),
                   limit=limit if limit is not None else base.get("limit"),
                   max_tokens=max_tokens if max_tokens is not None else base.get("max_tokens"),
                   seqlen=seqlen, batch_size=batch_size if batch_size is not None else DEFAULT_BATCH_SIZE,
                   hub=hub, quick=quick)

    def checked(self) -> "EvalSettings":
        """The same settings after `preflight`: unknown names and unfetched data fail now, in a
        second, not after the model has loaded; task names come back in their canonical spelling."""
        ppl, tasks = preflight(self.ppl, self.tasks, self.hub)
        return replace(self, ppl=tuple(ppl), tasks=tuple(tasks))

    def metrics(self) -> list[Metric]:
        """What `evaluator()`'s summaries hold, in table order."""
        return summary_metrics(self.tasks, self.ppl, self.hub)

    @property
    def steps(self) -> int:
        """Perplexity texts plus tasks: the steps one evaluation reports to `on_event`."""
        return len(self.ppl) + len(self.tasks)

    def run(self, lm, on_event: OnEvent | None = None, progress: bool = False) -> EvalResult:
        """Evaluate `lm` as it is now (`progress`: lm-eval's own bars)."""
        return evaluate(lm, ppl=self.ppl, tasks=self.tasks, limit=self.limit, max_tokens=self.max_tokens,
                        seqlen=self.seqlen, batch_size=self.batch_size, hub=self.hub,
                        progress=progress, on_event=on_event)

    def evaluator(self, on_event: OnEvent | None = None) -> "Evaluator":
        """`lm -> summary` with these settings, for the ablations and the quantization sweeps."""
        return Evaluator(lambda lm: self.run(lm, on_event).summary(), self.metrics(), self.steps, self.to_dict())

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evaluator:
    """`lm -> {key: value}`, with what each key is and how many progress steps one call reports.

    Any callable returning a dict can stand in for one (`as_evaluator`); keys it does not describe
    are shown as they are and never ranked. `settings` is what results record as their
    `evaluation` (`EvalSettings.to_dict()`; None for a plain callable).
    """

    fn: Callable[[object], Mapping[str, float]]
    metrics: list[Metric] = field(default_factory=list)
    steps: int = 1
    settings: dict | None = None

    def __call__(self, lm) -> dict:
        return dict(self.fn(lm))

    def describe(self, keys) -> list[Metric]:
        return describe(keys, self.metrics)


def as_evaluator(fn) -> Evaluator:
    """An `Evaluator` as it is, or a plain `lm -> dict` callable wrapped in one."""
    return fn if isinstance(fn, Evaluator) else Evaluator(fn)
