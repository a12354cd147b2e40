"""One verb for every quantization method: a config's type picks its handler (torchao's `quantize_`).

Each config class is registered once with the handler that applies it; nothing branches on a
method's name. A handler has up to two operations: `apply` — fake quantization (RTN, clipping,
super-weight-aware, circuit-aware, HQQ; W8A8) edits a loaded model for the duration of a
`with applied(lm, config)` block and restores the exact bits after — and `export`, which writes the
quantized model to a file or folder (`export(lm, config, super_weights, out)`): the fake weights as
a safetensors checkpoint, or a real llama.cpp GGUF (`superweight.quantize.gguf`).

>>> from superweight.model import wrap_model
>>> from superweight.testing import tiny_model, tiny_tokenizer
>>> from superweight.quantize import RTNConfig, NaiveW8A8Config
>>> lm = wrap_model(tiny_model("llama"), tiny_tokenizer())
>>> with applied(lm, RTNConfig(bits=4)) as report:
...     print(handler_for(RTNConfig(bits=4)).kind, report.summary()["tensors"])
weight 42
>>> handler_for(NaiveW8A8Config()).kind
'w8a8'
>>> from superweight.quantize.gguf import GGUFQuantConfig
>>> handler_for(GGUFQuantConfig("Q4_K_M")).kind
'gguf'
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
    apply: Callable[[LoadedModel, object, Sequence[SuperWeight] | None], AbstractContextManager] | None = None
    export: Callable[..., object] | None = None  # (lm, config, super_weights, out, *, force, ...) -> result


HANDLERS: dict[type, Handler] = {}


def register(*config_types: type, kind: str, apply: Callable | None = None, export: Callable | None = None) -> None:
    """Register a family of configs: `register(RTNConfig, kind="weight", apply=..., export=...)`."""
    for t in config_types:
        HANDLERS[t] = Handler(kind, apply, export)


def handler_for(config) -> Handler:
    """The handler of a config: its class's, else the nearest registered base class's."""
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise SuperweightError(f"no quantization handler is registered for {type(config).__name__}")


def applied(lm: LoadedModel, config, super_weights: Sequence[SuperWeight] | None = None) -> AbstractContextManager:
    """Quantize `lm` with `config` for a `with` block (exact restore after); yields the report."""
    handler = handler_for(config)
    if handler.apply is None:
        raise SuperweightError(f"{config.label()} writes a file and does not change the model in memory: "
                               "export it (--save) and evaluate the file")
    return handler.apply(lm, config, super_weights)


def export(lm: LoadedModel, config, super_weights, out, *, force: bool = False, **options):
    """Write `lm` quantized with `config` to `out` (the handler's own format); returns its result.
    `super_weights`: records, or a `superweight.selection.Selection` (a result records its source)."""
    handler = handler_for(config)
    if handler.export is None:
        raise SuperweightError(f"{config.label()} is a simulation with nothing to save")
    return handler.export(lm, config, super_weights, out, force=force, **options)


def _export_fake(lm: LoadedModel, config, super_weights, out, *, force: bool = False, metrics: dict | None = None):
    """The fake-quantized weights as a safetensors checkpoint (+ manifest) that transformers loads,
    written to folder `out`; returns the quantization report (the model is restored after)."""
    from superweight.quantize.export import quantization_manifest, save_checkpoint
    from superweight.quantize.weights import quantized
    from superweight.selection import Selection

    if isinstance(super_weights, Selection):
        super_weights = super_weights.super_weights
    with quantized(lm, config, super_weights) as report:
        save_checkpoint(lm, out, quantization_manifest(lm, config, report, metrics), force=force)
    return report


def _register_builtin() -> None:
    from superweight.quantize.rtn import RTNConfig
    from superweight.quantize.w8a8.core import W8A8Config, fake_w8a8
    from superweight.quantize.weights import quantized

    from superweight.quantize.gguf import GGUFQuantConfig, quantize_to_gguf

    # RTNConfig covers its subclasses: clipping, superweight, circuit, HQQ
    register(RTNConfig, kind="weight", apply=quantized, export=_export_fake)
    register(W8A8Config, kind="w8a8", apply=lambda lm, config, super_weights=None: fake_w8a8(lm, config))
    register(GGUFQuantConfig, kind="gguf", export=quantize_to_gguf)


_register_builtin()
