"""Real quantization: a llama.cpp GGUF made by llama.cpp's own quantizer, the super weights protected.

The fake methods show what quantization does to the super weights; this one produces the file
people deploy. The model is written once as an unquantized F32 GGUF (`superweight.model.gguf_write`,
tensor by tensor), then llama.cpp's quantizer (`superweight.runtime.quantize`) makes the asked type
with per-tensor overrides:

| protect   | what gets `protect_type` (Q8_0 by default)                                          |
|-----------|-------------------------------------------------------------------------------------|
| `none`    | nothing: llama.cpp's stock recipe for the type (its own `ffn_down` rules included)  |
| `weight`  | the down projection holding each super weight (`blk.L.ffn_down.weight`)             |
| `circuit` | that, and the gate/up projections of the same layer that make its input spike      |

`control=True` puts the same overrides on layers *without* a super weight (same shapes, so the
same file size): the experiment's control — a gain counts only where it beats its control.
With overrides, every other tensor is pinned at the type the stock recipe gives it (`pin_stock`), so
a protected file differs from the stock one on exactly the protected tensors.
`imatrix` computes llama.cpp's importance matrix from a text with our hooks
(`superweight.runtime.imatrix`), so the stock recipe with an imatrix is a baseline too.

>>> GGUFQuantConfig("Q4_K_M", protect="circuit").label()
'Q4_K_M circuit@Q8_0'
>>> GGUFQuantConfig("Q4_K_M", protect="weight", control=True, imatrix="wiki").label()
'Q4_K_M weight@Q8_0 control +imatrix(wiki)'
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.events import GGUF, OnEvent, emitter
from superweight.model.load import LoadedModel
from superweight.records import SuperWeight
from superweight.selection import Selection, as_selection

PROTECT_MODES = ("none", "weight", "circuit")
DEFAULT_TYPE = "Q4_K_M"
DEFAULT_PROTECT_TYPE = "Q8_0"
DEFAULT_IMATRIX_TOKENS = 16384  # llama-imatrix's usual calibration: ~100 chunks of 512 on big models
IMATRIX_SEQLEN = 512


@dataclass
class GGUFQuantConfig:
    """One llama.cpp quantization: the file type, what to protect and at which type, user
    overrides (`tensor_types`: `(regex, type)`, before ours, first match wins), the imatrix text."""

    method: ClassVar[str] = "gguf"
    refusal_is_result: ClassVar[bool] = False
    type: str = DEFAULT_TYPE
    protect: str = "none"
    protect_type: str = DEFAULT_PROTECT_TYPE
    tensor_types: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    imatrix: str | None = None  # a registered text ('wiki', 'c4', ...) or a file
    imatrix_tokens: int = DEFAULT_IMATRIX_TOKENS
    control: bool = False
    # keep every tensor no override names at the type llama.cpp's stock recipe gives it: llama.cpp
    # counts only non-overridden tensors for its "more bits every few layers" rules, so without a pin
    # one override shifts the types of later layers (runtime/quantize.py)
    pin_stock: bool = True

    def __post_init__(self) -> None:
        from superweight.runtime.quantize import ftype_value, tensor_type_value

        self.type = self.type.upper()
        ftype_value(self.type)  # one line for an unknown type (and for a missing binding)
        if self.protect not in PROTECT_MODES:
            raise SuperweightError(f"protect must be one of {', '.join(PROTECT_MODES)}, got {self.protect!r}")
        self.protect_type = self.protect_type.upper()
        tensor_type_value(self.protect_type)
        self.tensor_types = tuple((str(p), str(t).upper()) for p, t in self.tensor_types)
        for _, kind in self.tensor_types:
            tensor_type_value(kind)
        if self.control and self.protect == "none":
            raise SuperweightError("a control moves the protection to other layers: it needs protect weight or circuit")
        if self.imatrix_tokens < IMATRIX_SEQLEN:
            raise SuperweightError(f"imatrix tokens must be at least {IMATRIX_SEQLEN}, got {self.imatrix_tokens}")

    @property
    def protects(self) -> str:
        return self.protect

    def label(self) -> str:
        out = self.type
        if self.protect != "none":
            out += f" {self.protect}@{self.protect_type}" + (" control" if self.control else "")
        if self.tensor_types:
            out += f" +{len(self.tensor_types)} override(s)"
        if self.imatrix:
            out += f" +imatrix({self.imatrix})"
        return out

    def row_key(self) -> dict:
        return {"method": self.label(), "bits": None, "block": None}

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}


@dataclass
class GGUFQuantResult:
    """What was written: the config, the super weights protected, the overrides given to llama.cpp
    and what llama.cpp's file says of itself (types per tensor, size, bits per weight)."""

    config: dict
    path: str
    super_weights: list[SuperWeight]
    overrides: list[tuple[str, str]]
    manifest: dict
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        m = self.manifest
        return {"path": self.path, "type": self.config["type"], "bytes": m["size_bytes"],
                "mib": round(m["size_bytes"] / 2**20, 2), "bits_per_weight": m["bits_per_weight"],
                "tensor_types": m["types"], "protected": sorted(m.get("overridden", {})),
                "fallbacks": m.get("fallbacks", {})}

    def to_dict(self) -> dict:
        return {"config": self.config, "path": self.path,
                "super_weights": [s.to_dict() for s in self.super_weights],
                "overrides": [list(o) for o in self.overrides], "notes": self.notes,
                "summary": self.summary(), "manifest": self.manifest}


def check_output_file(out: str | Path, force: bool, sources: Sequence[str] = ()) -> Path:
    """The `--save` file, checked before the model loads (see `superweight._io.check_output_file`),
    and named like a GGUF."""
    from superweight._io import check_output_file as check

    out = check(out, force, tuple(sources))
    if out.suffix.lower() != ".gguf":
        raise SuperweightError(f"{out} does not end in .gguf")
    return out


def source_gguf(lm: LoadedModel) -> Path | None:
    """The GGUF file a model was loaded from (the alias or a `.gguf` reference), if any."""
    from superweight.model.gguf_write import source_gguf_file

    return source_gguf_file(lm)


def write_f32(lm: LoadedModel, path: str | Path, force: bool = False):
    """The unquantized GGUF the quantizer reads: the source GGUF dequantized when the model came from
    one (its own metadata and names), else the loaded model converted. Returns the writer's result."""
    from superweight.model.gguf_write import write_gguf

    src = source_gguf(lm)
    return write_gguf(src if src is not None else lm, path, dtype="F32", force=force)


def plan_overrides(config: GGUFQuantConfig, super_weights: Sequence[SuperWeight], tensors: dict,
                   n_layers: int, stock_types: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The overrides for llama.cpp: the user's first, then the protection (or its control, on a
    layer whose stock types match when `stock_types` are known, so the sizes match)."""
    from superweight.runtime.protect import control_overrides, protect_overrides

    overrides = list(config.tensor_types)
    if config.protect == "none" or not super_weights:
        return overrides
    if config.control:
        return overrides + control_overrides(super_weights, config.protect, n_layers=n_layers,
                                             protect_type=config.protect_type, tensors=tensors,
                                             stock_types=stock_types)
    return overrides + protect_overrides(super_weights, config.protect, protect_type=config.protect_type,
                                         names=list(tensors))


def importance_matrix(lm: LoadedModel, config: GGUFQuantConfig, hub: bool = False,
                      on_event: OnEvent | None = None) -> dict | None:
    """llama.cpp's importance matrix of `lm` from the config's text, or None when none is asked."""
    if not config.imatrix:
        return None
    from superweight.runtime.imatrix import compute_imatrix
    from superweight.runtime.scoring import text_windows

    windows = text_windows(lm, config.imatrix, seqlen=IMATRIX_SEQLEN, max_tokens=config.imatrix_tokens, hub=hub)
    return compute_imatrix(lm, windows, on_event=on_event)


def score_gguf(lm: LoadedModel, path: str | Path, reference: str | Path, sources: Sequence[str] = ("wiki",),
               *, seqlen: int = 512, max_tokens: int | None = 4096, n_threads: int | None = None,
               hub: bool = False, on_event: OnEvent | None = None):
    """Perplexity and KL divergence of GGUF `path` against GGUF `reference`, both run by llama.cpp, on
    our evaluator's windows of each text tokenized by `lm`'s tokenizer (`evaluate_gguf`)."""
    from superweight.evaluate.llamacpp import evaluate_gguf

    return evaluate_gguf(path, sources, reference=reference, seqlen=seqlen, max_tokens=max_tokens, hub=hub,
                         n_threads=n_threads, tokenizer=lm.tokenizer, on_event=on_event)


@dataclass
class GGUFRun:
    """One quantization and, when asked, its scores in llama.cpp; with what made it (the model, where
    the protected super weights came from, the scoring settings): `to_dict()` is the result file."""

    result: GGUFQuantResult
    scores: object | None = None  # superweight.evaluate.llamacpp.LlamaCppEval
    model: dict | None = None  # `LoadedModel.describe()`
    super_weight_source: str | None = None  # `Selection.source`; None: none were given
    evaluation: dict | None = None  # `score`: the texts, seqlen, max_tokens scored in llama.cpp

    def to_dict(self) -> dict:
        return {**result_header("quantize", model=self.model, super_weight_source=self.super_weight_source,
                                evaluation=self.evaluation),
                **self.result.to_dict(), "scores": self.scores.to_dict() if self.scores else None}


def quantize_to_gguf(lm: LoadedModel, config: GGUFQuantConfig,
                     super_weights: Selection | Sequence[SuperWeight] | None,
                     out: str | Path, *, force: bool = False, f32: str | Path | None = None,
                     imatrix: dict | None = None, n_threads: int | None = None,
                     score: dict | None = None, stock_types: dict[str, str] | None = None,
                     on_event: OnEvent | None = None) -> GGUFRun:
    """Write `lm` as a llama.cpp GGUF of `config.type` at `out`, protected as the config says; with
    `score` (keyword arguments of `score_gguf`: sources, seqlen, max_tokens) measure it in llama.cpp
    against the unquantized file.

    `f32` reuses an unquantized GGUF of the same model already written (`write_f32`), and `imatrix`
    one already computed (`importance_matrix`) — an experiment writes and computes them once; by
    default both are made here (the F32 file in a temporary folder beside `out`, removed after).
    With overrides and `config.pin_stock`, the stock file's types pin every other tensor:
    `stock_types` gives them (same type and imatrix), else a stock quantization is made first.
    Nothing is written at `out` unless the whole quantization succeeds. `super_weights`: a
    `Selection` (its source is recorded) or records. `on_event` hears each step
    ("gguf": the steps `gguf_steps` names, each ended with what it made in words; the imatrix's
    batches; each text scored; `superweight.events`).
    """
    from superweight.runtime.quantize import gguf_tensors, quantize_gguf

    selection = as_selection(super_weights) if super_weights is not None else None
    super_weights = selection.super_weights if selection else []
    out = Path(out).expanduser()
    notes: list[str] = []
    if config.protect != "none" and not super_weights:
        notes.append(f"no super weight to protect in {lm.ref}: protect {config.protect} protects nothing")
    plan = gguf_steps(config, super_weights, f32=f32, imatrix=imatrix, stock_types=stock_types)
    emit = emitter(on_event)

    def begin(step: str) -> None:
        emit(GGUF, step, plan.index(step) + 1, len(plan))

    def end(step: str, said: str) -> None:
        emit(GGUF, step, plan.index(step) + 1, len(plan), said, ended=True)

    if imatrix is None and IMATRIX_STEP in plan:
        begin(IMATRIX_STEP)
        imatrix = importance_matrix(lm, config, on_event=on_event)
        end(IMATRIX_STEP, f"{len(imatrix)} tensors")
    parent = out.parent if out.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix=".superweight-f32-", dir=parent) as tmp:
        if f32 is None:
            begin(F32_STEP)
            written = write_f32(lm, Path(tmp) / "model-f32.gguf")
            if written.note():
                notes.append(written.note())
            f32 = written.path
            end(F32_STEP, f"{Path(f32).stat().st_size / 2**20:,.1f} MiB")
        tensors = gguf_tensors(f32)
        pin = _pinned(config, super_weights)
        if pin and stock_types is None:
            begin(STOCK_STEP)
            stock = quantize_gguf(f32, Path(tmp) / "stock.gguf", config.type, imatrix=imatrix, nthread=n_threads)
            stock_types = stock["tensors"]
            end(STOCK_STEP, f"{config.type}: {stock['size_bytes'] / 2**20:,.1f} MiB")
        overrides = plan_overrides(config, super_weights, tensors, lm.view.num_layers, stock_types)
        metadata = {"config": config.label(), "source_model": lm.ref,
                    "super_weights": ";".join(",".join(map(str, s.coord)) for s in super_weights)}
        pins = stock_types if pin and overrides else None
        begin(QUANTIZE_STEP)
        manifest = quantize_gguf(f32, out, config.type, overrides=overrides, imatrix=imatrix,
                                 imatrix_source=config.imatrix, nthread=n_threads, force=force,
                                 metadata=metadata, pin_types=pins,
                                 pinned_from=f"stock {config.type}" if pins else None)
        end(QUANTIZE_STEP, f"{config.type}: {manifest['size_bytes'] / 2**20:,.1f} MiB, "
                           f"{manifest['bits_per_weight']:.2f} bits per weight, {len(overrides)} override(s)")
        run = GGUFRun(GGUFQuantResult(config.to_dict(), str(out), list(super_weights), overrides, manifest, notes),
                      model=lm.describe(), super_weight_source=selection.source if selection else None,
                      evaluation=dict(score) if score is not None else None)
        if score is not None:
            run.scores = score_gguf(lm, out, f32, n_threads=n_threads, on_event=on_event, **score)
    return run


IMATRIX_STEP, F32_STEP, STOCK_STEP, QUANTIZE_STEP = ("importance matrix", "F32 GGUF", "stock quantization",
                                                     "quantization")


def gguf_steps(config: GGUFQuantConfig, super_weights: Sequence[SuperWeight], *, f32=None, imatrix=None,
               stock_types=None) -> list[str]:
    """The steps `quantize_to_gguf` will take with these arguments, in order (a progress plan);
    the texts it scores come after them."""
    pin = _pinned(config, super_weights)
    return ([IMATRIX_STEP] * (imatrix is None and bool(config.imatrix)) + [F32_STEP] * (f32 is None)
            + [STOCK_STEP] * (pin and stock_types is None) + [QUANTIZE_STEP])


def _pinned(config: GGUFQuantConfig, super_weights: Sequence[SuperWeight]) -> bool:
    """Whether the stock file's types pin the tensors no override names (there are overrides)."""
    return config.pin_stock and bool(config.tensor_types or (config.protect != "none" and super_weights))
