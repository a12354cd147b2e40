"""One progress event for every long operation, and one way to hear it: `on_event(event)`.

Every long operation of the library — an evaluation, the ablation table, the scale and quantization
sweeps, a report, the stopword shift, a fine-tuning run, a census, an imatrix — takes the same
keyword, `on_event`, a callable of one `Event`. Each step is told twice: when it begins
(`ended` False) and when it ends (`ended` True, with what it made in `result`). A display
(`superweight.report.progress.RunProgress`, the census's progress) or a test listens; the library
never prints progress itself.

Kinds (what sort of step `name` is):

| kind      | name                         | result when it ends                     |
|-----------|------------------------------|-----------------------------------------|
| `stage`   | a condition, factor, config  | its row or summary                      |
| `ppl`     | a perplexity text            | `PerplexityResult`                      |
| `task`    | a zero-shot task             | `TaskResult`                            |
| `batch`   | what the batches belong to   | none: `index` of `total` items are done |
| `score`   | a text scored in llama.cpp   | its perplexity (and KL divergence), a dict |
| `gguf`    | a step of writing a GGUF     | what it wrote, in words                 |
| `prompt`  | a detection prompt           | its `DetectionResult`                   |
| `verify`  | one perplexity of a verification | the perplexity                      |
| `warmup`, `train`, `save`, `check` | a fine-tuning step | its figures (a dict)            |
| `plan`, `skip`, `model` | a census's models | the model's store entry             |

`index` counts from 1 (for `batch`: the items done so far); `total` is how many there are (0 when
not known).

>>> heard = []
>>> emit = emitter(heard.append)
>>> emit("ppl", "wiki", 1, 2)
>>> emit("ppl", "wiki", 1, 2, result=16.6, ended=True)
>>> [(e.kind, e.name, e.ended, e.result) for e in heard]
[('ppl', 'wiki', False, None), ('ppl', 'wiki', True, 16.6)]
>>> emitter(None)("ppl", "wiki")  # nobody listens: nothing happens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

STAGE, BATCH, SCORE, GGUF, PROMPT, VERIFY = "stage", "batch", "score", "gguf", "prompt", "verify"


@dataclass(frozen=True)
class Event:
    """One step of a long operation, as it begins or as it ends."""

    kind: str  # what sort of step (see the module's table)
    name: str  # which one: the text, task, condition, config, model
    index: int = 0  # its position among `total`, from 1 (for "batch": items done)
    total: int = 0  # how many there are (0: not known)
    result: Any = None  # what the step made (when it ended)
    ended: bool = False


OnEvent = Callable[[Event], None]
Emit = Callable[..., None]  # what `emitter` returns: emit(kind, name, index=0, total=0, result=None, ended=False)


def emitter(on_event: OnEvent | None) -> Emit:
    """`emit(kind, name, index=0, total=0, result=None, ended=False)`: send one `Event` to `on_event`,
    or do nothing when nobody listens."""
    if on_event is None:
        return lambda *args, **kwargs: None

    def emit(kind: str, name: str, index: int = 0, total: int = 0, result: Any = None, ended: bool = False) -> None:
        on_event(Event(kind, name, index, total, result, ended))
    return emit
