"""One verb for every quantization method: a config's type picks its handler (torchao's `quantize_`).

Each config class is registered once with the handler that applies it; nothing branches on a
method's name. Fake quantization (RTN, clipping, super-weight-aware, circuit-aware, HQQ; W8A8)
edits a loaded model for the duration of a `with applied(lm, config)` block and restores the exact
bits after; real quantization (GGUF through llama.cpp, `superweight.quantize.gguf`) writes a file
and registers its own handler kind.

>>> from superweight.model import wrap_model
>>> from superweight.testing import tiny_model, tiny_tokenizer
>>> from superweight.quantize import RTNConfig, NaiveW8A8Config
>>> lm = wrap_model(tiny_model("llama"), tiny_tokenizer())
>>> with applied(lm, RTNConfig(bits=4)) as report:
...     print(handler_for(RTNConfig(bits=4)).kind, report.summary()["tensors"])
weight 42
>>> handler_for(NaiveW8A8Config()).kind
'w8a8'
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Sequence

from superweight.errors import SuperweightError
from superweight.model.load import LoadedModel
from superweight.records import SuperWeight


@dataclass(frozen=True)
class Handler:
    """How one family of configs is applied.

    `apply(lm, config, super_weights)` returns a context manager that yields a report with a
    `summary()` (fake quantization: the model is edited inside the block and restored after);
    `kind` names the family in result rows ("weight", "w8a8", ...).
    """

    kind: str
    apply: Callable[[LoadedModel, object, Sequence[SuperWeight] | None], AbstractContextManager]


HANDLERS: dict[type, Handler] = {}


def register(*config_types: type, kind: str):
    """Class decorator-like registration: `register(RTNConfig, kind="weight")(apply)`."""

    def add(apply: Callable) -> Callable:
        for t in config_types:
            HANDLERS[t] = Handler(kind, apply)
        return apply

    return add


def handler_for(config) -> Handler:
    """The handler of a config: its class's, else the nearest registered base class's."""
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise SuperweightError(f"no quantization handler is registered for {type(config).__name__}")


def applied(lm: LoadedModel, config, super_weights: Sequence[SuperWeight] | None = None) -> AbstractContextManager:
    """Quantize `lm` with `config` for a `with` block (exact restore after); yields the report."""
    return handler_for(config).apply(lm, config, super_weights)


def _register_builtin() -> None:
    from superweight.quantize.rtn import RTNConfig
    from superweight.quantize.w8a8.core import W8A8Config, fake_w8a8
    from superweight.quantize.weights import quantized

    register(RTNConfig, kind="weight")(quantized)  # and its subclasses: clip, superweight, circuit, hqq
    register(W8A8Config, kind="w8a8")(lambda lm, config, super_weights=None: fake_w8a8(lm, config))


_register_builtin()
