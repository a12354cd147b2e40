"""Evaluation: perplexity and zero-shot accuracy of a model as it is in memory, offline or online.

Why a package of its own: every other feature (pruning a super weight, restoring its activation,
quantizing) ends in the same question, "what did that do to the model?", and must get the same
answer from the same data. Data sources live in one registry (`sources`), perplexity is computed
here (`perplexity`), zero-shot accuracy is delegated to lm-evaluation-harness (`zeroshot`), and
`evaluate` runs both.

`EvalSettings` is the one description of "what to evaluate" that the ablations and quantization
sweeps share, and `Metric` says what each figure of a summary is.

>>> from superweight.model import load_model
>>> from superweight.evaluate import evaluate, QUICK
>>> evaluate(load_model(), **QUICK).summary()  # doctest: +SKIP
{'arc_challenge': ..., ..., 'average': ..., 'wiki_ppl': ..., 'c4_ppl': ...}
"""

from superweight.evaluate.perplexity import DEFAULT_SEQLEN, PerplexityResult, perplexity
from superweight.evaluate.sources import (SOURCES, TASK_SOURCES, TEXT_SOURCES, fetch, lambada_passages,
                                         load_text)
from superweight.evaluate.metrics import Metric
from superweight.evaluate.settings import EvalSettings, Evaluator, as_evaluator
from superweight.evaluate.suite import DEFAULT_PPL, QUICK, EvalResult, evaluate, preflight
from superweight.evaluate.zeroshot import TASKS, TaskResult, zero_shot

__all__ = ["EvalSettings", "Evaluator", "Metric", "as_evaluator", "evaluate", "preflight", "perplexity", "zero_shot", "lambada_passages", "load_text", "fetch", "EvalResult",
           "PerplexityResult", "TaskResult", "QUICK", "TASKS", "DEFAULT_PPL", "DEFAULT_SEQLEN",
           "SOURCES", "TEXT_SOURCES", "TASK_SOURCES"]
