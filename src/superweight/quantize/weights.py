"""Apply a weight quantization config to a loaded model: which tensors, which super weights, restore.

The targets are every linear weight inside the decoder layers (nn.Linear, and GPT-2's Conv1D read
transposed so that blocks always run along the input dimension of W[out, in]); the LM head and the
input embeddings only when the config's `include` asks (tied embeddings are quantized once). Fused
mixture-of-experts parameters are not linear modules and are left alone.

`quantized(lm, config)` is a context manager that writes the fake-quantized weights and restores the
exact original bits on exit; `quantize_(lm, config)` does the same in place, keeping no copies.
Weights of layers offloaded under a memory budget are read one matrix at a time, and their quantized
versions go to a private temporary offload folder (removed on exit), not to RAM and never into the
model's own files (`superweight.model.offload.Overrides`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.adapters import is_conv1d
from superweight.model.load import LoadedModel
from superweight.model.offload import Overrides, read_param
from superweight.quantize.rtn import RTNConfig
from superweight.records import SuperWeight


@dataclass
class Target:
    """One weight to quantize: `matrix()` is W[out, in] (a view for transposed Conv1D; a copy when
    the layer is offloaded)."""

    name: str
    module: nn.Module
    transposed: bool = False

    @property
    def param(self) -> nn.Parameter:
        return self.module.weight

    def matrix(self) -> torch.Tensor:
        w = read_param(self.module, "weight")
        return w.T if self.transposed else w

    def write(self, w: torch.Tensor, edits: Overrides) -> None:
        """Replace the weight by W[out, in] = `w` through `edits` (restored when they are)."""
        edits.set(self.module, "weight", w.T if self.transposed else w)


@dataclass
class TensorStats:
    """What quantization did to one weight."""

    name: str
    shape: tuple[int, int]
    blocks: int
    ragged: bool
    clipped: int
    rel_error: float  # ‖Ŵ − W‖ / ‖W‖ (Frobenius)
    kept: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class QuantReport:
    """The config, the super weights kept, and per-tensor statistics of one quantization."""

    config: dict
    super_weights: list[SuperWeight]
    tensors: list[TensorStats]
    seconds: float

    def summary(self) -> dict:
        n = sum(t.shape[0] * t.shape[1] for t in self.tensors)
        return {"tensors": len(self.tensors), "params": n,
                "ragged_tensors": sum(t.ragged for t in self.tensors),
                "clipped": sum(t.clipped for t in self.tensors),
                "kept": sum(len(t.kept) for t in self.tensors),
                "mean_rel_error": (sum(t.rel_error for t in self.tensors) / len(self.tensors)
                                   if self.tensors else 0.0),
                "seconds": round(self.seconds, 3)}

    def to_dict(self) -> dict:
        return {"config": self.config, "super_weights": [s.to_dict() for s in self.super_weights],
                "summary": self.summary(), "tensors": [asdict(t) for t in self.tensors]}


def weight_targets(lm: LoadedModel, include: Sequence[str] = ()) -> list[Target]:
    """The weights a config quantizes, in model order, each once."""
    out, seen = [], set()
    for name, module in lm.view.decoder_linears():
        out.append(Target(name, module, transposed=is_conv1d(module)))
    extra = {"lm_head": lm.model.get_output_embeddings, "embed": lm.model.get_input_embeddings}
    for key in include:
        module = extra[key]()
        if module is None or getattr(module, "weight", None) is None:
            raise SuperweightError(f"the model has no {key} weight to include")
        out.append(Target(key, module))
    unique = []
    for t in out:
        if id(t.param) not in seen:  # tied lm_head / embeddings: one parameter
            seen.add(id(t.param))
            unique.append(t)
    return unique


def keep_map(lm: LoadedModel, targets: list[Target], super_weights: Sequence[SuperWeight],
             circuit: bool = False) -> dict[str, list[tuple[int, int]]]:
    """{target name: [(row, col)]} for the super weights that live in a quantized weight; with
    `circuit`, also every entry of the gate/up rows that make each super weight's input feature."""
    by_module = {id(t.module): t for t in targets}
    out: dict[str, list[tuple[int, int]]] = {}
    for sw in lm.view.check(super_weights):  # the one validation of coordinates
        proj = lm.view.down_proj(sw.layer, sw.expert)
        if proj.layout == "experts" or proj.param != "weight" or id(proj.module) not in by_module:
            continue  # fused experts are not quantized, so nothing to restore
        out.setdefault(by_module[id(proj.module)].name, []).append((sw.row, sw.col))
        if circuit:
            for feature in lm.view.feature_rows(sw.layer, sw.col, sw.expert):
                target = by_module.get(id(feature.module))
                if target is not None:
                    r = feature.index
                    out.setdefault(target.name, []).extend((r, j) for j in range(feature.weight.numel()))
    return {name: list(dict.fromkeys(keep)) for name, keep in out.items()}


def _super_weights(lm: LoadedModel, config: RTNConfig,
                   super_weights: Sequence[SuperWeight] | None) -> list[SuperWeight]:
    """The super weights to restore: given ones, else detection's (only configs that protect
    something restore any)."""
    if super_weights is not None or config.protects == "none":
        return list(super_weights or [])
    from superweight.selection import resolve_super_weights

    found = resolve_super_weights(lm).super_weights
    if not found:
        raise SuperweightError("detection found no super weight to keep; give the super weights "
                               "to keep, or use the rtn-clip method")
    return found


def _quantize_all(lm: LoadedModel, config: RTNConfig, super_weights: Sequence[SuperWeight] | None,
                  edits: Overrides) -> QuantReport:
    start = time.perf_counter()
    sws = _super_weights(lm, config, super_weights)
    targets = weight_targets(lm, config.include)
    keeps = keep_map(lm, targets, sws, circuit=config.protects == "circuit") if config.protects != "none" else {}
    stats_out = []
    for t in targets:
        w = t.matrix().detach()  # [out, in]
        keep = keeps.get(t.name, [])
        stats: dict = {}
        q = config.quantize_matrix(w, keep, stats)
        err = float((q.float() - w.float()).norm() / w.float().norm().clamp_min(1e-30))
        t.write(q, edits)
        stats_out.append(TensorStats(t.name, tuple(w.shape), stats.get("blocks", 0),
                                     bool(stats.get("ragged", False)), int(stats.get("clipped", 0)),
                                     err, keep))
    return QuantReport(config.to_dict(), sws, stats_out, time.perf_counter() - start)


@contextmanager
def quantized(lm: LoadedModel, config: RTNConfig,
              super_weights: Sequence[SuperWeight] | None = None) -> Iterator[QuantReport]:
    """Fake-quantize the model's weights for the block; restore the exact originals after.
    `super_weights=None` detects them for the 'superweight' method (an example: `superweight.quantize`).
    """
    with Overrides(spill=True) as edits:
        yield _quantize_all(lm, config, super_weights, edits)


def quantize_(lm: LoadedModel, config: RTNConfig,
              super_weights: Sequence[SuperWeight] | None = None) -> QuantReport:
    """Fake-quantize the model's weights in place (no copies kept; for saving a quantized model).

    Offloaded layers get their quantized weights in a temporary offload folder that lives as long
    as the model."""
    return _quantize_all(lm, config, super_weights, Overrides(spill=True, keep=False, owner=lm.model))
