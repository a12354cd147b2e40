"""LoRA through `peft`, on the decoder linears the adapter declares, merged back after training.

The targets are full module names from `view.decoder_linears_by_kind()` (optionally only some kinds),
so no module-name patterns live here. While the adapters are attached, a super weight's effective
value is W[row, col] + (scale · B·A)[row, col]: `lora_offset` gives the guard that second term.
On a clean exit the adapters are merged into the weights (`merge_and_unload`), which changes the
super weights too — a `freeze` guard puts them back after the merge (`SuperWeightGuard.after_merge`).
If training fails, the adapters are removed without merging.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from superweight.errors import SuperweightError
from superweight.finetune.guard import entry_slot
from superweight.model.adapters import is_conv1d, linear_matrix
from superweight.model.load import LoadedModel


@dataclass
class LoRASettings:
    """Rank, scale (alpha / r), dropout and which module kinds get adapters (None: every linear)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise SuperweightError(f"LoRA rank must be a positive integer, got {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise SuperweightError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise SuperweightError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
            if not self.kinds:
                raise SuperweightError("LoRA module kinds must not be empty")

    def to_dict(self) -> dict:
        return asdict(self)


def lora_targets(lm: LoadedModel, kinds: tuple[str, ...] | None) -> list[str]:
    """Full names of the decoder linears that get adapters."""
    every = list(lm.view.decoder_linears_by_kind())
    declared = list(dict.fromkeys(k for _, k, _, _ in every))
    if kinds is not None:
        unknown = [k for k in kinds if k not in declared]
        if unknown:
            raise SuperweightError(f"unknown module kind(s) {', '.join(unknown)} for {lm.model_type}; "
                                   f"this model has: {', '.join(declared)}")
    names = [name for _, kind, name, _ in every if kinds is None or kind in kinds]
    if not names:
        raise SuperweightError("no decoder linear of the chosen kinds to put LoRA adapters on")
    return names


def lora_share(lm: LoadedModel, settings: LoRASettings) -> float:
    """The share of the decoder linears' parameters LoRA trains: r·(in + out) per target linear
    over in·out of them all (to give SMT the same budget)."""
    targets = set(lora_targets(lm, settings.kinds))
    total = lora = 0
    for name, module in lm.view.decoder_linears():
        out_f, in_f = linear_matrix(module).shape
        total += out_f * in_f
        lora += settings.r * (out_f + in_f) if name in targets else 0
    return lora / total


@contextmanager
def lora_attached(lm: LoadedModel, settings: LoRASettings, seed: int = 0) -> Iterator[object]:
    """Wrap `lm.model` with LoRA adapters (in place) and yield the `peft` model to train; merge on
    a clean exit, drop the adapters unmerged on an exception. `lm.model` stays the same object.

    The adapters' random initialisation is drawn from `seed` (torch seeds every process
    differently, so two runs would otherwise start from different adapters); the global random
    state is left as it was."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(lm, settings.kinds)
    modules = dict(lm.view.decoder_linears())
    fan_in_fan_out = any(is_conv1d(modules[n]) for n in targets)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=fan_in_fan_out)
    base = lm.model
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        torch.manual_seed(seed)
        peft_model = get_peft_model(base, config)  # (peft 0.21 calls a deprecated transformers name)
    try:
        yield peft_model
    except BaseException:
        peft_model.unload()
        raise
    merged = peft_model.merge_and_unload()
    if merged is not base:
        raise SuperweightError("peft returned a different model object after merging")


def lora_offset(lm: LoadedModel):
    """For the guard: a super weight's LoRA delta (B·A · scale at its entry) while adapters are attached."""

    def offset(key) -> float:
        layer, row, col, expert = key
        proj = lm.view.down_proj(layer, expert)
        module = proj.module
        if not hasattr(module, "get_delta_weight") or getattr(module, "merged", False):
            return 0.0
        index = entry_slot(proj, row, col).index
        with torch.no_grad():
            return sum(float(module.get_delta_weight(name).reshape(-1)[index])
                       for name in module.active_adapters if name in module.lora_A)

    return offset
