"""Did a quantized (or fine-tuned, or llama.cpp) copy keep the super weights of its original?

For each super weight of the original: its value in the other copy and the relative error, and
whether its super activation survives — the other copy's largest |down projection output| on that
channel, on the same prompt, against the original's. Both copies must have the same architecture and
shapes; anything loadable (hub id, folder, .gguf) can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from superweight.errors import SuperweightError
from superweight.model.hooks import observe_down_projs
from superweight.model.load import LoadedModel
from superweight.records import Record, SuperWeight
from superweight.selection import DETECTION, Selection, as_selection

SURVIVE_RATIO = 0.5  # the other's super activation keeps at least this share of the original's, same sign


@dataclass
class CheckRow(Record):
    layer: int
    row: int
    col: int
    expert: int | None
    original: float
    other: float
    rel_error: float  # |other − original| / |original|
    activation_original: float  # signed down-projection output of largest |value| on channel `row`
    activation_other: float
    activation_ratio: float  # other / original (negative: the sign flipped)
    survives: bool
    input_original: float = 0.0  # signed down-projection input of largest |value| on feature `col`
    input_other: float = 0.0  # (the spike the super weight multiplies; made by gate/up and earlier layers)


def check_compatible(a: LoadedModel, b: LoadedModel) -> None:
    """One-line error unless both models have the same architecture and weight shapes."""
    if a.model_type != b.model_type:
        raise SuperweightError(f"different architectures: {a.model_type!r} vs {b.model_type!r}")
    if a.view.num_layers != b.view.num_layers:
        raise SuperweightError(f"different depths: {a.view.num_layers} vs {b.view.num_layers} layers")
    shapes_a = {n: tuple(m.weight.shape) for n, m in a.view.decoder_linears()}
    shapes_b = {n: tuple(m.weight.shape) for n, m in b.view.decoder_linears()}
    for name, shape in shapes_a.items():
        if shapes_b.get(name) != shape:
            raise SuperweightError(f"different shapes: {name} is {shape} vs {shapes_b.get(name)}")
    if set(shapes_b) != set(shapes_a):
        raise SuperweightError("different layer structure: the two models' linear layers differ")


def _signed_max(t: torch.Tensor) -> float:
    return float(t[t.abs().argmax()]) if t.numel() else 0.0


def channel_activations(lm: LoadedModel, ids: torch.Tensor, coords: Sequence[SuperWeight]) -> dict:
    """{("out", layer, row, expert): signed down-projection output of largest |value| on channel
    `row`; ("in", layer, col, expert): the same for its input feature `col`}."""
    wanted = {(s.layer, s.row, s.col, s.expert) for s in coords}
    out: dict = {}

    def keep_max(key, v):
        if key not in out or abs(v) > abs(out[key]):
            out[key] = v

    def on_down(proj, x, y, positions):
        for layer, row, col, expert in wanted:
            if layer == proj.layer and expert == proj.expert:
                keep_max(("out", layer, row, expert), _signed_max(y[:, row]))  # y: [tokens, hidden]
                keep_max(("in", layer, col, expert), _signed_max(x[:, col]))  # x: [tokens, inter]

    with observe_down_projs(lm.view, on_down, layers=sorted({s.layer for s in coords})), torch.inference_mode():
        lm.model(ids.to(lm.device))
    return out


def check_models(original: LoadedModel, other: LoadedModel,
                 super_weights: Sequence[SuperWeight] | None = None,
                 prompt: str | None = None) -> list[CheckRow]:
    """Compare each super weight of `original` (detected unless given) with its value in `other`."""
    from superweight.detect import DEFAULT_PROMPT, encode, find_super_weights

    check_compatible(original, other)
    prompt = prompt or DEFAULT_PROMPT
    sws = list(super_weights) if super_weights is not None else find_super_weights(original, prompt)
    if not sws:
        raise SuperweightError("detection found no super weight in the original model")
    ids = encode(original, prompt)
    act_a = channel_activations(original, ids, sws)
    act_b = channel_activations(other, ids, sws)
    rows = []
    for sw in sws:
        a = original.view.down_proj(sw.layer, sw.expert).value(sw.row, sw.col)
        b = other.view.down_proj(sw.layer, sw.expert).value(sw.row, sw.col)
        rows.append(check_row(sw, a, b, act_a, act_b))
    return rows


@dataclass
class CheckResult:
    """What `superweight check` reports: one `CheckRow` per super weight (and, for a mixture of
    experts, one row per super expert), with what was compared and how: `to_dict()` is the result file."""

    original: dict  # `LoadedModel.describe()` of the original
    other: dict  # ... of the copy (or the llama.cpp engine's description of its file)
    rows: list[CheckRow]
    engine: dict | None = None  # what ran the copy and why (`runtime.detect.EngineChoice`)
    super_weight_source: str | None = None  # `Selection.source`
    other_manifest: dict | None = None  # the copy's own manifest (a checkpoint `superweight` wrote)
    super_experts: list | None = None  # superweight.moe.ExpertCheckRow, for a mixture of experts
    survive_ratio: float = field(default=SURVIVE_RATIO)

    @property
    def survives(self) -> bool:
        """Every super activation (and every super expert's output) survives in the copy."""
        return all(r.survives for r in self.rows) and all(r.survives for r in self.super_experts or [])

    def to_dict(self) -> dict:
        from superweight._io import result_header

        out = {**result_header("check", original=self.original, other=self.other, engine=self.engine,
                               survive_ratio=self.survive_ratio, super_weight_source=self.super_weight_source),
               "other_manifest": self.other_manifest, "rows": [r.to_dict() for r in self.rows]}
        if self.super_experts is not None:
            out["super_experts"] = [r.to_dict() for r in self.super_experts]
        return out


def check_copy(original: LoadedModel, other: LoadedModel, super_weights: Selection | Sequence | None = None,
               prompt: str | None = None, *, choice=None) -> CheckResult:
    """`check_models`, recorded: the two models' descriptions, where the super weights came from (a
    `Selection`, records "given coordinates", or None: detected in `original`), the copy's manifest
    when `superweight` wrote it, and for a mixture of experts whether its super experts survive.
    `choice`: the `EngineChoice` that picked PyTorch for the copy, for the record."""
    from superweight.detect import engine_record
    from superweight.model.checkpoint import read_manifest

    selection = as_selection(super_weights) if super_weights is not None else None
    rows = check_models(original, other, selection.super_weights if selection else None, prompt)
    experts = None
    if original.view.is_moe:  # a mixture of experts: did the super experts keep their massive output?
        from superweight.moe import check_super_experts

        _, experts = check_super_experts(original, other, prompt, survive_ratio=SURVIVE_RATIO)
    manifest = read_manifest(other.source) if other.kind == "local" else None
    return CheckResult(original.describe(), other.describe(), rows, engine_record(choice),
                       selection.source if selection else DETECTION, manifest, experts)


def check_row(sw: SuperWeight, a: float, b: float, act_a: dict, act_b: dict) -> CheckRow:
    """One super weight compared: its values `a` (original) and `b` (other), and the super activation
    and input spike on each side (`channel_activations`' dicts), whatever engine ran the other."""
    key, key_in = ("out", sw.layer, sw.row, sw.expert), ("in", sw.layer, sw.col, sw.expert)
    ya, yb = act_a.get(key, 0.0), act_b.get(key, 0.0)
    ratio = yb / ya if ya else float("nan")
    return CheckRow(sw.layer, sw.row, sw.col, sw.expert, a, b, abs(b - a) / abs(a) if a else float("inf"),
                    ya, yb, ratio, bool(ratio >= SURVIVE_RATIO), act_a.get(key_in, 0.0), act_b.get(key_in, 0.0))
