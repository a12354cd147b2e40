"""Causal-LM fine-tuning with the super weights guarded: full, LoRA (peft) or SMT, through the
`transformers` Trainer, then a safetensors checkpoint, the drift report and `check` of the result.

The model object given is trained **in place** (that is what fine-tuning is; a second copy of the
weights would double the memory). Its files are never written: the checkpoint goes to `out` (a new
or empty folder, written into a temporary folder beside it and renamed into place), and the
original that `check` compares against is loaded again from the model's reference after training
(a model built in memory, which has no files, is copied before training instead).

>>> from superweight.finetune import FinetuneConfig, finetune, training_documents
>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> r = finetune(lm, FinetuneConfig(method="smt", guard="freeze", steps=20, seqlen=128),
...              training_documents("ptb-train"), out="tuned/")  # doctest: +SKIP
>>> r.drift.weight_rows(), [c.survives for c in r.check]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import resource
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.events import Emit, OnEvent, emitter
from superweight.finetune.data import BlockDataset, check_corpus, token_blocks
from superweight.finetune.guard import DriftReport, GuardConfig, SuperWeightGuard
from superweight.finetune.lora import LoRASettings, lora_attached, lora_offset, lora_targets
from superweight.finetune.smt import SMTConfig, SMTPlan, eligible_linears, plan_smt, sparse_tuning
from superweight.model.checkpoint import check_output_dir, save_checkpoint
from superweight.model.load import LoadedModel
from superweight.records import SuperWeight
from superweight.selection import DETECTION, Selection, as_selection

METHODS = ("full", "lora", "smt")
GUARDS = ("freeze", "clip", "none")
MANIFEST_NAME = "superweight-finetune.json"


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SuperweightError(f"{what} must be a positive integer, got {value!r}")


def _number(value, what: str, low: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise SuperweightError(f"{what} must be a finite number {'>' if strict else '≥'} {low:g}, got {value!r}")


@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tuning run; written into the checkpoint and every result."""

    method: str = "full"  # full | lora | smt
    guard: str = "freeze"  # freeze | clip | none (none still monitors)
    steps: int = 20  # optimizer steps
    lr: float = 1e-4
    weight_decay: float = 0.0  # AdamW's decoupled decay (the Trainer leaves biases and norms out)
    batch_size: int = 4  # blocks per micro-batch
    seqlen: int = 256  # tokens per block
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_scheduler: str = "constant"  # any transformers scheduler name ("linear", "cosine", ...)
    max_grad_norm: float = 1.0  # 0 turns gradient clipping off
    max_tokens: int | None = None  # corpus tokens used (None: as many as the run reads once)
    seed: int = 0
    guard_every: int = 10  # the guard records every N steps
    max_step_rel: float = 1e-3  # clip guard bounds, relative to |original|
    max_total_rel: float = 1e-2
    weight_drift: float = 1e-3  # drift flags
    activation_drift: float = 0.1
    probe: str | None = None  # the guard's prompt (None: detection's)
    lora: LoRASettings = field(default_factory=LoRASettings)
    smt: SMTConfig = field(default_factory=SMTConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SuperweightError(f"unknown fine-tuning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.guard not in GUARDS:
            raise SuperweightError(f"unknown guard {self.guard!r}; choose one of {', '.join(GUARDS)}")
        _positive_int(self.steps, "steps")
        _positive_int(self.batch_size, "batch size")
        _positive_int(self.grad_accum, "gradient accumulation steps")
        _positive_int(self.seqlen, "seqlen")
        if self.seqlen < 2:
            raise SuperweightError(f"seqlen must be at least 2, got {self.seqlen}")
        if self.max_tokens is not None:
            _positive_int(self.max_tokens, "max tokens")
        _number(self.lr, "learning rate", strict=True)
        _number(self.weight_decay, "weight decay")
        _number(self.max_grad_norm, "max grad norm")
        from transformers import SchedulerType

        try:
            SchedulerType(self.lr_scheduler)
        except ValueError:
            raise SuperweightError(f"unknown learning-rate scheduler {self.lr_scheduler!r}; choose one of "
                                   f"{', '.join(t.value for t in SchedulerType)}") from None
        if isinstance(self.lora, dict):
            self.lora = LoRASettings(**self.lora)
        if isinstance(self.smt, dict):
            self.smt = SMTConfig(**self.smt)
        self.guard_config()  # validates the guard's settings

    def guard_config(self) -> GuardConfig:
        return GuardConfig(mode="monitor" if self.guard == "none" else self.guard, every=self.guard_every,
                           max_step_rel=self.max_step_rel, max_total_rel=self.max_total_rel,
                           weight_drift=self.weight_drift, activation_drift=self.activation_drift,
                           probe=self.probe)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seqlen

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora"], d["smt"] = self.lora.to_dict(), self.smt.to_dict()
        return d


@dataclass
class TrainStats:
    steps: int
    losses: list[float]  # the Trainer's logged loss per step
    step_seconds: list[float]
    seconds: float  # Trainer.train() wall time, guard probes included
    trainable_params: int
    total_params: int
    tokens_per_step: int
    blocks: int  # distinct token blocks in the training set
    peak_rss_mb: float  # the process's peak resident set size so far (the OS's figure)
    warmup_seconds: float = 0.0  # SMT's gradient warm-up

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "median_step_seconds": self.median_step_seconds}


@dataclass
class FinetuneResult:
    """What a run did: config, training figures, the guard's drift report, SMT's plan, `check`."""

    config: FinetuneConfig
    model: dict
    super_weights: list[SuperWeight]
    train: TrainStats
    drift: DriftReport
    smt: SMTPlan | None = None
    check: list | None = None  # superweight.quantize.check.CheckRow, original vs tuned
    out: str | None = None
    notes: list[str] = field(default_factory=list)
    data: str | None = None  # the training corpus, as named
    super_weight_source: str | None = None  # `Selection.source` of the super weights guarded

    @property
    def survives(self) -> bool:
        """Every super activation survives in the tuned model (True when nothing was checked)."""
        return all(r.survives for r in self.check or [])

    def to_dict(self) -> dict:
        from superweight.quantize.check import SURVIVE_RATIO

        return {**result_header("finetune", model=self.model, config=self.config.to_dict()),
                "data": self.data, "out": self.out, "super_weights": [s.to_dict() for s in self.super_weights],
                "train": self.train.to_dict(), "drift": self.drift.to_dict(),
                "smt": self.smt.to_dict() if self.smt else None, "survive_ratio": SURVIVE_RATIO,
                "check": [r.to_dict() for r in self.check] if self.check is not None else None,
                "notes": list(self.notes), "super_weight_source": self.super_weight_source}


# --- the run ---------------------------------------------------------------------------------------

def finetune(lm: LoadedModel, config: FinetuneConfig, texts: Sequence[str], *,
             out: str | os.PathLike | None = None, force: bool = False,
             super_weights: Selection | Sequence[SuperWeight] | None = None, check: bool = True,
             original: LoadedModel | Callable[[], LoadedModel] | None = None,
             data: str | None = None, on_event: OnEvent | None = None) -> FinetuneResult:
    """Fine-tune `lm` in place on `texts` (documents), guarded; save to `out`; check the result.

    Everything is validated first (`preflight`: the corpus, the tokenizer, the method's module kinds,
    the output folder; then the super weights and the guard), so bad input costs no training and
    writes nothing. The checkpoint is written only after training, atomically: an exception or a
    KeyboardInterrupt during training leaves no output folder behind.

    `super_weights` (a `Selection`, whose source is recorded, or records) default to detection's on
    `lm`. With `out`, the checkpoint is written and `check` reads it back from disk; without, `check`
    looks at the model in memory. `original` is what
    `check` compares against, or a function that loads it (default: `lm` loaded again from its
    reference, or copied first if it was built in memory). `data` names the corpus for the record.
    `on_event` follows the run (`superweight.events`): kind "warmup" (SMT's warm-up batches),
    "train" (optimizer steps; ended with `{"loss": ...}`), "save" (`{"out": ...}`) and "check"
    (`{"rows": ...}`)."""
    from superweight.detect import find_super_weights

    out_path = preflight(lm, config, texts, out, force)
    selection = (as_selection(super_weights) if super_weights is not None
                 else Selection(find_super_weights(lm), DETECTION))
    sws = list(selection.super_weights)
    guard = SuperWeightGuard(lm, sws, config.guard_config())
    need = (config.steps * config.grad_accum
            + (config.smt.warmup_steps if config.method == "smt" else 0)) * config.batch_size * config.seqlen
    blocks = token_blocks(lm.tokenizer, texts, config.seqlen, config.max_tokens or need)
    described = lm.describe()
    if check and original is None and lm.kind == "memory":
        original = _memory_copy(lm)
    notes: list[str] = []
    if config.method == "lora":
        notes.append("LoRA: the guard can only act on the merged weights (freeze restores them, clip bounds "
                     "their total change); during training it records the effective value W + B·A.")
    emit = emitter(on_event)
    plan, stats = _train(lm, config, blocks, sws, guard, emit)
    report = guard.report()
    if out_path is not None:
        emit("save", "save", 1, 1)
        manifest = {**result_header("finetuned-model", model=described), "config": config.to_dict(),
                    "data": data, "super_weights": [s.to_dict() for s in sws],
                    "drift": {"weights": report.weight_rows(), "activations": report.activation_rows()},
                    "smt": plan.to_dict() if plan else None}
        save_checkpoint(lm, out_path, MANIFEST_NAME, manifest, force=force)
        emit("save", "save", 1, 1, {"out": str(out_path)}, ended=True)
    rows = None
    if check and not sws:
        notes.append("check skipped: no super weights were given or detected")
    elif check:
        emit("check", "check", 1, 1)
        rows = _check(lm, original, out_path, sws)
        emit("check", "check", 1, 1, {"rows": rows}, ended=True)
    return FinetuneResult(config, described, sws, stats, report, plan, rows,
                          str(out_path) if out_path else None, notes, data, selection.source)


def preflight(lm: LoadedModel, config: FinetuneConfig, texts: Sequence[str],
              out: str | os.PathLike | None = None, force: bool = False) -> Path | None:
    """Everything `finetune` can check before it trains: the corpus, the tokenizer, that the weights
    are in memory (not offloaded), the module kinds LoRA or SMT may use, and the output folder
    (returned, resolved). Raises `SuperweightError`; changes nothing."""
    from superweight.model.offload import model_is_offloaded

    check_corpus(texts)
    if lm.tokenizer is None:
        raise SuperweightError("the model has no tokenizer to turn the training text into tokens")
    if model_is_offloaded(lm.model):
        raise SuperweightError("cannot fine-tune a model whose layers are offloaded to disk (a memory budget, "
                               "--max-memory or automatic); training needs every weight in memory")
    fused = [i for i in range(lm.view.num_layers) if lm.view.is_moe_layer(i) and not lm.view.is_unfused(i)]
    if fused:
        raise SuperweightError(
            f"fine-tuning does not cover fused mixture-of-experts experts ({lm.view.adapter.layers}."
            f"{fused[0]}.{lm.view.adapter.down_proj} and {len(fused) - 1} more layer(s) hold 3-D expert tensors, "
            "which LoRA, SMT and the super weight guard do not handle); experts kept as nn.Linear modules "
            "(an nn.ModuleList) are covered")
    if config.method == "lora":
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise SuperweightError("LoRA needs the peft package: pip install 'peft>=0.17'")
        lora_targets(lm, config.lora.kinds)
    elif config.method == "smt":
        eligible_linears(lm, config.smt.kinds)
    return check_output_dir(out, force, lm) if out is not None else None


def _train(lm: LoadedModel, config: FinetuneConfig, blocks: torch.Tensor, sws: list[SuperWeight],
           guard: SuperWeightGuard, emit: Emit) -> tuple[SMTPlan | None, TrainStats]:
    """Prepare the method, run the Trainer with the guard, merge; the model is left in eval mode."""
    model = lm.model
    flags = {p: p.requires_grad for p in model.parameters()}
    total = sum(p.numel() for p in model.parameters())
    use_cache = getattr(model.config, "use_cache", None)
    attrs = set(vars(model))
    plan, warmup_s = None, 0.0
    try:
        with ExitStack() as stack:
            if config.method == "full":
                for p in model.parameters():
                    p.requires_grad_(True)
                trained = model
            elif config.method == "lora":
                trained = stack.enter_context(lora_attached(lm, config.lora, config.seed))
                guard.add_offset(lora_offset(lm))
            else:
                t = time.perf_counter()
                warmup = iter_batches(blocks, config.batch_size, config.smt.warmup_steps)
                plan = plan_smt(lm, _announced(warmup, config.smt.warmup_steps, emit), config.smt, sws)
                warmup_s = time.perf_counter() - t
                tuner = stack.enter_context(sparse_tuning(lm, plan))
                for sw, key in zip(guard.super_weights, guard.keys):
                    slot = tuner.slot(sw)
                    if slot is not None:
                        guard.add_slot(key, *slot)
                trained = model
            trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
            timer = step_timer()
            trainer = make_trainer(trained, config, BlockDataset(blocks),
                                   [guard.callback(), timer, progress_callback(emit)], device=lm.device)
            start = time.perf_counter()
            try:
                trainer.train()
            finally:
                guard.detach()
            seconds = time.perf_counter() - start
            losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
            del trainer
        if config.method != "full":
            guard.after_merge()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if use_cache is not None:
            model.config.use_cache = use_cache  # the Trainer turns it off and would save that
        for name in set(vars(model)) - attrs:
            if name.startswith("_is_accelerate"):  # so that a later Trainer prepares the model again
                delattr(model, name)
        model.eval()
    stats = TrainStats(config.steps, losses, timer.seconds, seconds, trainable, total,
                       config.tokens_per_step(), int(blocks.shape[0]), peak_rss_mb(), warmup_s)
    return plan, stats


def _announced(batches: Iterator[dict], n: int, emit: Emit) -> Iterator[dict]:
    """The warm-up batches, each announced before and after it is used."""
    for i, batch in enumerate(batches, 1):
        emit("warmup", f"warm-up {i}", i, n)
        yield batch
        emit("warmup", f"warm-up {i}", i, n, {}, ended=True)


def iter_batches(blocks: torch.Tensor, batch_size: int, n: int) -> Iterator[dict]:
    """`n` batches of consecutive blocks (cycling), as the Trainer's sequential sampler forms them."""
    count = blocks.shape[0]
    for i in range(n):
        idx = [(i * batch_size + j) % count for j in range(batch_size)]
        ids = blocks[idx]
        yield {"input_ids": ids, "labels": ids.clone()}


def make_trainer(model, config: FinetuneConfig, dataset, callbacks: list, optimizers=(None, None),
                 device: torch.device | str = "cpu"):
    """A `transformers.Trainer` for `config`: no hub, no reports, no checkpoints, no printing, the
    blocks in corpus order (so every method sees the same batches); on the CPU unless the model
    was loaded on an accelerator."""
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments, default_data_collator

    scratch = tempfile.mkdtemp(prefix="superweight-trainer-")
    args = TrainingArguments(
        output_dir=scratch, max_steps=config.steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        weight_decay=config.weight_decay, lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=torch.device(device).type == "cpu", seed=config.seed, dataloader_num_workers=0, disable_tqdm=True,
        train_sampling_strategy="sequential", push_to_hub=False)
    try:
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                          callbacks=callbacks, optimizers=optimizers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # nothing is saved; the Trainer only needs a name
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    return trainer


def step_timer():
    """A Trainer callback that keeps the wall time of every optimizer step in `.seconds`
    (forward, backward, optimizer step and the guard's work)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()


def progress_callback(emit: Emit):
    """A Trainer callback that reports every optimizer step to `emit` (`superweight.events.emitter`):
    kind "train", when the step begins and when its loss is logged (`{"loss": x}`)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            i = state.global_step + 1
            emit("train", f"step {i}", i, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                i = state.global_step
                emit("train", f"step {i}", i, state.max_steps, {"loss": float(logs["loss"])}, ended=True)

    return StepProgress()


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_copy(lm: LoadedModel) -> LoadedModel:
    from superweight.model.load import wrap_model

    return wrap_model(copy.deepcopy(lm.model), lm.tokenizer, ref=lm.ref,
                      layers=lm.view.adapter.layers, down_proj=lm.view.adapter.down_proj)


def _check(lm: LoadedModel, original: LoadedModel | Callable[[], LoadedModel] | None, out_path: Path | None,
           sws: list[SuperWeight]) -> list:
    """`superweight check ORIGINAL TUNED` as a library call."""
    from superweight.model.load import load_model
    from superweight.quantize.check import check_models

    if callable(original):
        original = original()
    same = {"dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device), "quiet": True,
            "layers": lm.view.adapter.layers, "down_proj": lm.view.adapter.down_proj}
    if original is None:
        original = load_model(lm.ref, **same)
    tuned = load_model(str(out_path), **same) if out_path is not None else lm
    return check_models(original, tuned, sws)
