"""Protect and watch the super weights while a model is fine-tuned.

A fine-tuning run can move a super weight even when its gradient is zero: decoupled weight decay
(AdamW) multiplies every weight by (1 − lr·wd) each step, and momentum keeps pushing after the
gradient is gone. So `freeze` does two things: a gradient hook zeroes the super weights' entries of
their parameter's gradient, and after every optimizer step their exact original values are written
back — bit-identical after training. `clip` lets them move, but clamps each one after every step to
within `max_step_rel`·|original| of its previous value and `max_total_rel`·|original| of its original.
`monitor` only watches. In every mode the guard records, every `every` steps, each super weight's
value and the super activation it makes on a probe prompt (one forward pass, a scoped hook on the
down projection output at (position, row)), and flags drift above a threshold.

The same object works from a plain PyTorch loop (`with guard.attach(optimizer): ...`, or
`with guard.attach(): ...` calling `guard.after_step()` after each `optimizer.step()`) and inside
the `transformers` Trainer (`callbacks=[guard.callback()]`: it acts in `on_optimizer_step`, which
transformers 5 calls right after `optimizer.step()`, before the gradients are zeroed and the
scheduler steps) — the two give the same result.

Where a super weight's value lives can change during training: SMT trains a block copy of it
(`add_slot`), LoRA adds a low-rank delta that only lands in the weight at merge time
(`add_offset`, then `after_merge`).

>>> from superweight.detect import find_super_weights
>>> guard = SuperWeightGuard(lm, find_super_weights(lm), GuardConfig(mode="freeze", every=10))
>>> with guard.attach(optimizer):  # doctest: +SKIP
...     for batch in batches:
...         model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
>>> guard.report().to_dict()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch

from superweight.errors import SuperweightError
from superweight.model.adapters import DownProj
from superweight.model.hooks import observe_down_projs
from superweight.model.load import LoadedModel
from superweight.records import SuperWeight

GUARD_MODES = ("freeze", "clip", "monitor")
Key = tuple  # (layer, row, col, expert)


@dataclass
class GuardConfig:
    """How the guard protects (mode) and watches (every, thresholds, probe) the super weights."""

    mode: str = "freeze"  # freeze | clip | monitor
    every: int = 10  # record every N optimizer steps (plus the start and the end)
    max_step_rel: float = 1e-3  # clip: largest change per step, relative to |original|
    max_total_rel: float = 1e-2  # clip: largest total change, relative to |original|
    weight_drift: float = 1e-3  # flag a super weight whose relative change exceeds this
    activation_drift: float = 0.1  # flag a super activation whose relative change exceeds this
    probe: str | None = None  # prompt for the super activation (None: detection's default prompt)

    def __post_init__(self) -> None:
        if self.mode not in GUARD_MODES:
            raise SuperweightError(f"unknown guard mode {self.mode!r}; choose one of {', '.join(GUARD_MODES)}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise SuperweightError(f"the guard records every N steps: N must be a positive integer, got {self.every!r}")
        for name in ("max_step_rel", "max_total_rel", "weight_drift", "activation_drift"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SuperweightError(f"{name.replace('_', '-')} must be a finite number ≥ 0, got {value!r}")
        if self.probe is not None and not self.probe.strip():
            raise SuperweightError("the guard's probe prompt is empty")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Site:
    """Where a super activation is read on the probe: down projection output [position, row]."""

    layer: int
    row: int
    expert: int | None
    position: int


@dataclass
class Snapshot:
    """Every super weight's value and every super activation at one step (same order as the report's)."""

    step: int
    phase: str  # "start" | "train" | "end" | "merged"
    weights: list[float]
    activations: list[float]


@dataclass
class DriftFlag:
    step: int
    phase: str
    what: str  # "weight" | "activation"
    label: str
    original: float
    value: float
    rel_change: float


@dataclass
class DriftReport:
    """What the guard saw: the config, the super weights and activation sites, snapshots, flags."""

    config: GuardConfig
    super_weights: list[SuperWeight]
    sites: list[Site]
    snapshots: list[Snapshot]
    flags: list[DriftFlag]

    def weight_rows(self) -> list[dict]:
        """Per super weight: original, final, relative change, and the largest change seen."""
        if not self.snapshots:
            return []
        first, last = self.snapshots[0], self.snapshots[-1]
        rows = []
        for i, sw in enumerate(self.super_weights):
            orig = first.weights[i]
            rel = [_rel(s.weights[i], orig) for s in self.snapshots]
            rows.append({"super_weight": sw.label(), "original": orig, "final": last.weights[i],
                         "rel_change": rel[-1], "max_rel_change": max(rel),
                         "bit_identical": _same_bits(last.weights[i], orig)})
        return rows

    def activation_rows(self) -> list[dict]:
        """Per activation site: the super activation at the start and at the end, and their ratio."""
        if not self.snapshots:
            return []
        first, last = self.snapshots[0], self.snapshots[-1]
        return [{"layer": s.layer, "row": s.row, "expert": s.expert, "position": s.position,
                 "original": first.activations[i], "final": last.activations[i],
                 "ratio": last.activations[i] / first.activations[i] if first.activations[i] else float("nan")}
                for i, s in enumerate(self.sites)]

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "super_weights": [s.to_dict() for s in self.super_weights],
                "sites": [asdict(s) for s in self.sites], "weights": self.weight_rows(),
                "activations": self.activation_rows(), "snapshots": [asdict(s) for s in self.snapshots],
                "flags": [asdict(f) for f in self.flags]}


def _rel(value: float, original: float) -> float:
    return abs(value - original) / abs(original) if original else (0.0 if value == original else math.inf)


def _same_bits(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@dataclass
class _Slot:
    """One place a super weight's value is stored: a flat index into a (contiguous) parameter."""

    tensor: torch.Tensor
    index: int

    def read(self) -> torch.Tensor:
        return self.tensor.detach().reshape(-1)[self.index]

    def write(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.tensor.view(-1)[self.index] = value


def entry_slot(proj: DownProj, row: int, col: int) -> _Slot:
    """The storage of W[row, col] of a down projection, as a flat index into its parameter.

    Computed from the strides of `proj.matrix()` (a view of the parameter), so it holds for every
    layout the adapter knows (nn.Linear, GPT-2's transposed Conv1D, one expert of a 3-D tensor)."""
    param = getattr(proj.module, proj.param)
    if not param.is_contiguous():
        raise SuperweightError(f"{proj.name}: the weight is not contiguous; cannot guard its entries")
    m = proj.matrix()
    index = m.storage_offset() - param.storage_offset() + row * m.stride(0) + col * m.stride(1)
    return _Slot(param, int(index))


class SuperWeightGuard:
    """Freeze, clip or watch super weights during fine-tuning (see the module docstring)."""

    def __init__(self, lm: LoadedModel, super_weights: Sequence[SuperWeight],
                 config: GuardConfig | None = None):
        self.lm = lm
        self.config = config or GuardConfig()
        self.super_weights = lm.view.check(super_weights)
        if self.config.mode != "monitor" and not self.super_weights:
            raise SuperweightError(f"guard {self.config.mode!r} has no super weights to guard: give some "
                                   "(or detect them first), or use guard 'none' to train unguarded")
        self.keys: list[Key] = [sw.key for sw in self.super_weights]
        if len(set(self.keys)) != len(self.keys):
            raise SuperweightError("the same super weight is given twice")
        self._slots: dict[Key, list[_Slot]] = {k: [self._view_slot(k)] for k in self.keys}
        self.original = {k: self._slots[k][0].read().clone() for k in self.keys}  # exact bits
        self._prev = {k: v.clone() for k, v in self.original.items()}
        self._offsets: list[Callable[[Key], float]] = []
        self.sites: list[Site] = []
        self.snapshots: list[Snapshot] = []
        self.flags: list[DriftFlag] = []
        self.step = 0
        self._handles: list = []
        self._attached = False
        self._started = False

    # --- where the values live ------------------------------------------------------------------

    def _view_slot(self, key: Key) -> _Slot:
        layer, row, col, expert = key
        return entry_slot(self.lm.view.down_proj(layer, expert), row, col)

    def add_slot(self, key: Key, tensor: torch.Tensor, index: int) -> None:
        """Another place the value of super weight `key` lives while training (e.g. an SMT block).

        The first slot that requires a gradient is read as the current value; every slot is written
        when the guard restores or clamps."""
        if key not in self._slots:
            raise SuperweightError(f"{key} is not one of the guarded super weights")
        if self._attached:
            raise SuperweightError("add slots before attaching the guard")
        slot = _Slot(tensor, int(index))
        if not torch.equal(slot.read(), self.original[key]):
            raise SuperweightError(f"the new slot of {key} does not hold the super weight's value")
        self._slots[key].append(slot)

    def add_offset(self, fn: Callable[[Key], float]) -> None:
        """A term added to the stored value to get the effective one (LoRA's B·A before merging)."""
        self._offsets.append(fn)

    def rebind(self) -> None:
        """Find the super weights' storage again (after LoRA's merge replaced the modules)."""
        self._slots = {k: [self._view_slot(k)] for k in self.keys}
        self._offsets = []

    def _trainable(self, key: Key) -> _Slot:
        return next((s for s in self._slots[key] if s.tensor.requires_grad), self._slots[key][0])

    def values(self) -> list[float]:
        """The current effective value of every super weight, in order."""
        return [float(self._trainable(k).read()) + sum(fn(k) for fn in self._offsets) for k in self.keys]

    # --- attaching ------------------------------------------------------------------------------

    @contextmanager
    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> Iterator["SuperWeightGuard"]:
        """Guard a plain training loop for the block: gradient masks (freeze), and with `optimizer`
        a step post-hook that calls `after_step()` (otherwise call it after every step yourself).
        Hooks are removed on exit, also when the body raises; the last state is recorded."""
        self.install()
        try:
            if optimizer is not None:
                self._handles.append(optimizer.register_step_post_hook(lambda *_: self.after_step()))
            yield self
        finally:
            self.detach()

    def install(self) -> None:
        """Record the start and register the gradient masks; `detach()` undoes it."""
        if self._attached:
            raise SuperweightError("the guard is already attached")
        self._attached = True
        self.start()
        if self.config.mode == "freeze":
            by_tensor: dict[int, tuple[torch.Tensor, list[int]]] = {}
            for key in self.keys:
                for slot in self._slots[key]:
                    if slot.tensor.requires_grad:
                        by_tensor.setdefault(id(slot.tensor), (slot.tensor, []))[1].append(slot.index)
            for tensor, indices in by_tensor.values():
                self._handles.append(tensor.register_hook(_zero_entries(indices)))

    def detach(self) -> None:
        """Remove the hooks and record the last step if it was not recorded yet."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        self._attached = False
        if self._started and (not self.snapshots or self.snapshots[-1].step != self.step):
            self.record("end")

    def callback(self):
        """A `transformers.TrainerCallback` that does what `attach` does inside `Trainer.train()`."""
        from transformers import TrainerCallback

        guard = self

        class SuperWeightGuardCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                guard.install()

            def on_optimizer_step(self, args, state, control, **kwargs):
                guard.after_step(state.global_step + 1)  # global_step counts this step only later

            def on_train_end(self, args, state, control, **kwargs):
                guard.detach()

        return SuperWeightGuardCallback()

    # --- every step -----------------------------------------------------------------------------

    def start(self) -> None:
        """Choose the activation sites and record the state before training (once)."""
        if self._started:
            return
        self._started = True
        self.sites = self._find_sites()
        self.record("start")

    def after_step(self, step: int | None = None) -> None:
        """Call right after each `optimizer.step()`: restore (freeze) or clamp (clip), then record
        every `every` steps."""
        self.start()
        self.step = self.step + 1 if step is None else int(step)
        if self.config.mode == "freeze":
            self._restore()
        elif self.config.mode == "clip":
            self._clamp(self.config.max_step_rel)
        if self.step % self.config.every == 0:
            self.record("train")

    def after_merge(self) -> None:
        """After LoRA's merge: find the weights again, restore (freeze) or clamp the total change
        (clip: per-step bounds cannot apply to a low-rank delta), and record the merged state."""
        self.rebind()
        if self.config.mode == "freeze":
            self._restore()
        elif self.config.mode == "clip":
            self._clamp(None)
        self.record("merged")

    def _restore(self) -> None:
        for key in self.keys:
            for slot in self._slots[key]:
                slot.write(self.original[key])

    def _clamp(self, step_rel: float | None) -> None:
        """Clamp each super weight into [prev ± step bound] ∩ [original ± total bound]."""
        for key in self.keys:
            orig, prev = float(self.original[key]), float(self._prev[key])
            total = self.config.max_total_rel * abs(orig)
            lo, hi = orig - total, orig + total
            if step_rel is not None:
                step = step_rel * abs(orig)
                lo, hi = max(lo, prev - step), min(hi, prev + step)
            current = self._trainable(key).read()
            value = float(current)
            if lo <= value <= hi:
                stored = current.clone()
            else:
                stored = current.new_tensor(min(max(value, lo), hi))
                if float(stored) < lo:  # rounding to the dtype left the interval: the next value inside
                    stored = torch.nextafter(stored, stored.new_tensor(math.inf))
                elif float(stored) > hi:
                    stored = torch.nextafter(stored, stored.new_tensor(-math.inf))
                if not lo <= float(stored) <= hi:  # an interval narrower than the dtype's spacing
                    stored = self._prev[key].clone()
            for slot in self._slots[key]:
                slot.write(stored)
            self._prev[key] = stored.clone()

    # --- recording ------------------------------------------------------------------------------

    def _probe_outputs(self) -> dict[tuple[int, int | None], torch.Tensor]:
        """One forward pass on the probe: each guarded layer's down projection output, [tokens, hidden]."""
        from superweight.detect import DEFAULT_PROMPT, encode

        ids = encode(self.lm, self.config.probe or DEFAULT_PROMPT)
        outs: dict = {}

        def keep(proj, x, y, positions):
            outs[(proj.layer, proj.expert)] = y.clone()  # [tokens, hidden] of a short prompt

        model = self.lm.model
        was_training = model.training
        model.eval()
        try:
            with observe_down_projs(self.lm.view, keep, layers=sorted({k[0] for k in self.keys})), torch.no_grad():
                model(input_ids=ids, use_cache=False)
        finally:
            model.train(was_training)
        return outs

    def _find_sites(self) -> list[Site]:
        if not self.keys:
            return []
        outs = self._probe_outputs()
        sites, seen = [], set()
        for layer, row, _, expert in self.keys:
            if (layer, row, expert) in seen or (layer, expert) not in outs:
                continue
            seen.add((layer, row, expert))
            y = outs[(layer, expert)][:, row]  # [tokens]: the position of the largest |value| now, kept after
            sites.append(Site(layer, row, expert, int(y.abs().argmax())))
        return sites

    def activations(self) -> list[float]:
        """The super activation at every site on the probe, now (one forward pass)."""
        if not self.sites:
            return []
        outs = self._probe_outputs()
        return [float(outs[(s.layer, s.expert)][s.position, s.row]) for s in self.sites]

    def record(self, phase: str) -> Snapshot:
        snap = Snapshot(self.step, phase, self.values(), self.activations())
        self.snapshots.append(snap)
        if len(self.snapshots) > 1:
            self._flag(snap)
        return snap

    def _flag(self, snap: Snapshot) -> None:
        first = self.snapshots[0]
        for sw, orig, value in zip(self.super_weights, first.weights, snap.weights):
            rel = _rel(value, orig)
            if rel > self.config.weight_drift:
                self.flags.append(DriftFlag(snap.step, snap.phase, "weight", sw.label(), orig, value, rel))
        for site, orig, value in zip(self.sites, first.activations, snap.activations):
            rel = _rel(value, orig)
            if rel > self.config.activation_drift:
                self.flags.append(DriftFlag(snap.step, snap.phase, "activation",
                                            f"layer {site.layer}, channel {site.row}, position {site.position}",
                                            orig, value, rel))

    def report(self) -> DriftReport:
        return DriftReport(self.config, list(self.super_weights), list(self.sites), list(self.snapshots),
                           list(self.flags))


def _zero_entries(indices: list[int]):
    """A gradient hook that zeroes the given flat entries (out of place)."""
    index = torch.tensor(sorted(set(indices)), dtype=torch.long)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(-1).index_fill(0, index.to(grad.device), 0).view_as(grad)

    return hook
