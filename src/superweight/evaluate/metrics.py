"""What a figure in an evaluation summary is: a small typed description instead of string tests.

An evaluation summary is a flat `{key: value}` (`{"arc_easy": 0.6, "average": 0.49, "wiki_ppl":
16.6}`); tables, plots, "best factor" choices and Table 3's shares need to know which keys are
accuracies (higher is better, shown in percent) and which are perplexities (lower is better, log
axes). The evaluation that produced the figures says so with one `Metric` per key, and nothing
downstream guesses from the key's spelling.

Labels say where the data came from: the offline Wikipedia and C4 texts only resemble WikiText-2 and
C4 (`evaluate.sources`), so their perplexities are labelled "wiki ppl (offline stand-in)"; with
`hub=True` the standard sets are read and labelled "WikiText-2 ppl".

>>> task_metric("arc_easy").label, task_metric("arc_easy").higher_is_better
('ARC-e', True)
>>> text_metric("wiki").label, text_metric("wiki", hub=True).label
('wiki ppl (offline stand-in)', 'WikiText-2 ppl')
>>> text_metric("/data/my_corpus.jsonl").name
'my_corpus_ppl'
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from superweight.evaluate import sources

KINDS = ("accuracy", "perplexity", "other")
AVERAGE_KEY = "average"
STAND_IN = "offline stand-in"
STAND_IN_MARK = "*"  # in table headers: "wiki* ppl", explained under the table


@dataclass(frozen=True)
class Metric:
    """One figure of a summary: its key, how a person reads it, and which way is better.

    `unit` is how it is shown: "%" for accuracies (stored as fractions), "" for perplexities.
    `kind` "other" is for figures an evaluation adds that are neither (e.g. a loss in a test).
    `short` is a table header when the label is long ("wiki* ppl", the star explained beside it).
    """

    name: str
    label: str
    unit: str = ""
    higher_is_better: bool | None = None
    kind: str = "other"
    short: str = ""

    @property
    def header(self) -> str:
        return self.short or self.label

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def is_accuracy(self) -> bool:
        return self.kind == "accuracy"

    @property
    def is_perplexity(self) -> bool:
        return self.kind == "perplexity"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Metric":
        return cls(**{k: d[k] for k in ("name", "label", "unit", "higher_is_better", "kind", "short") if k in d})


def accuracy_metric(name: str, label: str | None = None) -> Metric:
    return Metric(name, label or name, "%", True, "accuracy")


def perplexity_metric(name: str, label: str | None = None, short: str = "") -> Metric:
    return Metric(name, label or name, "", False, "perplexity", short)


AVERAGE = accuracy_metric(AVERAGE_KEY, "Avg")


def task_metric(task: str) -> Metric:
    """The accuracy of a registered zero-shot task (lm-eval's `acc`)."""
    source = sources.get_source(task, "task")
    return accuracy_metric(source.name, source.label or source.name)


def text_key(source: str) -> str:
    """The summary key stem of a perplexity text: a registered name, or a file's stem."""
    if source in sources.SOURCES:
        return source
    return os.path.splitext(os.path.basename(str(source)))[0]


def text_metric(source: str, hub: bool = False) -> Metric:
    """The perplexity of a registered text or a local file, labelled by where the text came from."""
    key = f"{text_key(source)}_ppl"
    registered = sources.SOURCES.get(source)
    if registered is None:
        return perplexity_metric(key, f"{text_key(source)} ppl")
    if hub:
        return perplexity_metric(key, f"{registered.hub.label or registered.label or registered.name} ppl")
    name = registered.label or registered.name
    if registered.stand_in:
        return perplexity_metric(key, f"{name} ppl ({STAND_IN})", f"{name}{STAND_IN_MARK} ppl")
    return perplexity_metric(key, f"{name} ppl")


def summary_metrics(tasks: Sequence[str], texts: Sequence[str], hub: bool = False) -> list[Metric]:
    """The metrics of `evaluate`'s summary, in table order: tasks, their average, perplexities."""
    out = [task_metric(t) for t in tasks]
    if tasks:
        out.append(AVERAGE)
    return out + [text_metric(s, hub) for s in texts]


def other(name: str) -> Metric:
    """A figure with no known meaning (a custom evaluator's key): shown as it is, never ranked."""
    return Metric(name, name)


def ordered(metrics: Iterable[Metric]) -> list[Metric]:
    """Accuracies (registered tasks in the registry's order, the average last among them), then other
    figures, then perplexities; each once."""
    seen: dict[str, Metric] = {}
    for m in metrics:
        seen.setdefault(m.name, m)
    ms = list(seen.values())
    registry = {name: i for i, name in enumerate(sources.TASK_SOURCES)}  # the paper's column order
    acc = sorted((m for m in ms if m.is_accuracy and m.name != AVERAGE_KEY),
                 key=lambda m: registry.get(m.name, len(registry)))
    avg = [m for m in ms if m.name == AVERAGE_KEY]
    return acc + avg + [m for m in ms if m.kind == "other"] + [m for m in ms if m.is_perplexity]


def describe(keys: Iterable[str], known: Iterable[Metric] = ()) -> list[Metric]:
    """Metrics for summary keys: the `known` description of each, `other` for the rest, ordered."""
    by_name = {m.name: m for m in known}
    return ordered(by_name.get(k) or other(k) for k in keys)


def first_perplexity(metrics: Iterable[Metric]) -> Metric | None:
    return next((m for m in metrics if m.is_perplexity), None)
