"""The one evaluation entry point other features call: perplexity sets plus zero-shot tasks.

`evaluate(lm, ...)` measures the model exactly as it is in memory (edited models need no saving),
checks every input before any model work (unknown names, unfetched or corrupt data fail in the first
second, not after ten minutes), and returns an `EvalResult` whose `summary()` gives the paper's
figures: per-task accuracy, their average, and `<set>_ppl`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Sequence

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.evaluate import sources
from superweight.evaluate.metrics import Metric, summary_metrics, text_key
from superweight.evaluate.perplexity import DEFAULT_BATCH_SIZE as PPL_BATCH_SIZE
from superweight.evaluate.perplexity import PerplexityResult, perplexity
from superweight.events import OnEvent, emitter
from superweight.evaluate.zeroshot import (BOOTSTRAP_ITERS, DEFAULT_BATCH_SIZE, PRIMARY_METRIC, SEED,
                                           TASKS, TaskResult, check_tasks, zero_shot)

DEFAULT_PPL = ("wiki", "c4")
RESULT_KIND = "eval"
QUICK_LIMIT = 20  # items per task in the quick preset
QUICK_MAX_TOKENS = 4096  # tokens per perplexity set in the quick preset (two 2048-token windows)

# A few minutes on 2 CPU cores for the default model: every task, few items; both texts, bounded.
QUICK = MappingProxyType({"ppl": DEFAULT_PPL, "tasks": TASKS, "limit": QUICK_LIMIT,
                          "max_tokens": QUICK_MAX_TOKENS})

@dataclass
class EvalResult:
    """Everything one evaluation measured, with the config that made it."""

    model: dict
    config: dict
    perplexity: dict[str, PerplexityResult] = field(default_factory=dict)
    zero_shot: dict[str, TaskResult] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        """Flat figures: `{task: acc, ..., "average": mean acc, "<set>_ppl": ppl, ...}`."""
        out = {name: r.metrics[PRIMARY_METRIC] for name, r in self.zero_shot.items()}
        if out:
            out["average"] = sum(out.values()) / len(out)
        for name, r in self.perplexity.items():
            out[f"{text_key(name)}_ppl"] = r.ppl
        return out

    def metrics(self) -> list[Metric]:
        """What each key of `summary()` is (label, unit, which way is better), in table order."""
        return summary_metrics(list(self.zero_shot), list(self.perplexity), bool(self.config.get("hub")))

    def to_dict(self) -> dict:
        return {**result_header(RESULT_KIND, model=self.model, config=self.config),
                "summary": self.summary(), "metrics": [m.to_dict() for m in self.metrics()],
                "perplexity": {k: v.to_dict() for k, v in self.perplexity.items()},
                "zero_shot": {k: v.to_dict() for k, v in self.zero_shot.items()},
                "seconds": self.seconds}


def evaluate(lm, ppl: Sequence[str] = DEFAULT_PPL, tasks: Sequence[str] = TASKS, limit: int | None = None,
             max_tokens: int | None = None, seqlen: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True, *, hub: bool = False,
             on_event: OnEvent | None = None) -> EvalResult:
    """Perplexity on `ppl` and zero-shot accuracy on `tasks` of `lm` (a `LoadedModel`), as it is now.

    `seqlen=None` is 2048 capped by the model's context. `limit` bounds items per task, `max_tokens`
    tokens per text; `batch_size` is the zero-shot batch (perplexity windows are batched by
    `perplexity`'s own default, which bounds the logits' memory). `hub=True` reads the standard sets from the Hugging Face hub instead of the
    fetched copies. `on_event` hears each perplexity text ("ppl") and task ("task") begin and end, and
    the batches of a text (`superweight.events`; `superweight.report.progress` draws them);
    `progress` shows lm-eval's own bars.

    >>> r = evaluate(load_model(), **QUICK)  # doctest: +SKIP
    >>> r.summary()["average"], r.summary()["wiki_ppl"]  # doctest: +SKIP
    """
    ppl, tasks = preflight(ppl, tasks, hub)
    emit = emitter(on_event)
    config = {"ppl": ppl, "tasks": tasks, "limit": limit, "max_tokens": max_tokens, "seqlen": seqlen,
              "batch_size": batch_size, "ppl_batch_size": PPL_BATCH_SIZE, "hub": hub, "seed": SEED, "bootstrap_iters": BOOTSTRAP_ITERS,
              "primary_metric": PRIMARY_METRIC}
    result = EvalResult(model=_describe(lm), config=config)
    start = time.perf_counter()
    for i, name in enumerate(ppl, 1):
        emit("ppl", name, i, len(ppl))
        result.perplexity[name] = perplexity(lm, name, seqlen=seqlen, max_tokens=max_tokens, hub=hub,
                                             on_event=on_event)
        emit("ppl", name, i, len(ppl), result.perplexity[name], ended=True)
    if tasks:
        result.zero_shot = zero_shot(lm, tasks, limit=limit, batch_size=batch_size, hub=hub,
                                     progress=progress, on_event=on_event)
    result.config["seqlen"] = next((r.seqlen for r in result.perplexity.values()), seqlen)
    result.seconds = time.perf_counter() - start
    return result


def preflight(ppl: Sequence[str], tasks: Sequence[str], hub: bool = False) -> tuple[list[str], list[str]]:
    """Fail before any model work (unknown names, unfetched or corrupt data); the checked lists."""
    ppl, tasks = list(dict.fromkeys(ppl or ())), list(tasks or ())
    if not ppl and not tasks:
        raise SuperweightError("nothing to evaluate: give perplexity sets and/or tasks")
    tasks = check_tasks(tasks) if tasks else []
    for name in ppl:
        if name in sources.SOURCES:
            source = sources.get_source(name, "text")
            if not hub:
                sources.local_file(source.name, "text")
        elif sources.is_local_path(name):
            if not os.path.isfile(os.path.expanduser(name)):
                raise SuperweightError(f"text file {name!r} does not exist")
        else:
            sources.documents(name)  # raises the "unknown dataset" error listing known ones
    if not hub:
        for name in tasks:
            sources.task_data_file(name)
    return ppl, tasks


def _describe(lm) -> dict:
    describe = getattr(lm, "describe", None)
    if callable(describe):
        return describe()
    return {"ref": getattr(lm, "ref", type(lm.model).__name__)}
