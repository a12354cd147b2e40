"""One model of a census, as a worker runs it: load, detect (+ verify, + the quick Table 1), measure.

`run_model(task)` is the whole unit of work: plain data in (the model as the driver saw it, the
settings, its memory budget), one plain entry out, whatever happens — an error of any kind becomes
that model's one-line `error`, so a refused, broken or too-large model never stops the census. The
detection part is `superweight.detect.run_detection` with exactly the arguments `superweight detect`
gives it, and the result is the payload `detect --json` writes, so a census row and a `detect` run
of the same model with the same settings are the same figures (the census runs the PyTorch engine:
a `.gguf` file's row equals `detect FILE --engine torch`). The same function runs in a local worker
process and in a Ray task.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field

from superweight.census.models import ModelInfo, hub_commit, peak_rss, peak_rss_reset
from superweight.census.store import DONE, ENTRY_KIND, FAILED, settings_key

ABLATE_CHOICES = ("quick",)


@dataclass
class CensusConfig:
    """The settings every model of a census is run with (all of them key its results).

    `detect` holds `superweight.detect.DetectConfig`'s fields (a plain dict, so the driver can build
    and compare settings without loading a model); `verify_threshold` None skips verification;
    `ablate` "quick" also runs Table 1 with the quick evaluation preset.
    """

    detect: dict = field(default_factory=dict)
    prompts: tuple[str, ...] = ()
    verify_threshold: float | None = None
    ablate: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    cache_dtype: str = "float32"
    trust_remote_code: bool = False
    layers: str | None = None
    down_proj: str | None = None

    def __post_init__(self) -> None:
        from superweight.detect import DEFAULT_PROMPT, DetectConfig
        from superweight.errors import SuperweightError

        self.detect = DetectConfig(**self.detect).to_dict()  # validated, every field present
        self.prompts = tuple(self.prompts) or (DEFAULT_PROMPT,)
        if self.verify_threshold is not None:
            from superweight.verify import check_threshold

            self.verify_threshold = check_threshold(self.verify_threshold)
        if self.ablate is not None and self.ablate not in ABLATE_CHOICES:
            raise SuperweightError(f"--ablate {self.ablate!r}: choose {', '.join(ABLATE_CHOICES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d

    def detect_config(self):
        from superweight.detect import DetectConfig

        d = dict(self.detect)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return DetectConfig(**d)

    def eval_settings(self):
        """The evaluation of `--ablate quick`, checked (data fetched) — None without `ablate`."""
        if self.ablate is None:
            return None
        from superweight.evaluate import EvalSettings

        return EvalSettings.from_options(quick=True).checked()


def run_model(task: dict) -> dict:
    """Run one model (`task`: info, config, budget_bytes, threads, engine) and return its entry."""
    info = ModelInfo(**task["info"])
    config = CensusConfig(**task["config"])
    settings = config.to_dict()
    entry = {"schema_version": 1, "kind": ENTRY_KIND, "ref": info.ref, "fingerprint": info.fingerprint,
             "resolved_fingerprint": info.fingerprint, "settings": settings, "settings_key": settings_key(settings),
             "model_info": info.to_dict(), "status": FAILED, "error": None,
             "memory_budget_bytes": task.get("budget_bytes"),
             "worker": {"engine": task.get("engine", "local"), "host": socket.gethostname(), "pid": os.getpid()}}
    start = time.perf_counter()
    peak_rss_reset()
    try:
        entry.update(_detect(info, config, task))
        entry["status"] = DONE
    except Exception as e:  # noqa: BLE001 — any failure is this model's result, never the census's end
        entry["error"] = one_line(e)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    entry["peak_memory"] = _peak_memory(config.device)
    entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return entry


def one_line(e: BaseException) -> str:
    """An exception as the one line a person reads (a user error's own message; else its type too)."""
    from superweight.errors import SuperweightError

    text = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, SuperweightError):
        return text
    if isinstance(e, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _detect(info: ModelInfo, config: CensusConfig, task: dict) -> dict:
    import torch

    from superweight.detect import run_detection
    from superweight.model import load_model

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    budget = task.get("budget_bytes")
    # the budget binds only when the weights would not fit in it; otherwise the model loads exactly as
    # `superweight detect` loads it (no device map), so the figures are the same
    needs = info.weights_bytes is None or (budget is not None and info.weights_bytes > budget)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    lm = load_model(info.ref, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code,
                    layers=config.layers, down_proj=config.down_proj, quiet=True, cache_dtype=config.cache_dtype,
                    max_memory=budget if needs and budget is not None else None)
    run = run_detection(lm, list(config.prompts), config.detect_config(), model_id=lm.model_id,
                        verify_threshold=config.verify_threshold, choice=_engine(info.ref, config))
    out = {"detect": run.to_dict(),
           "params": sum(p.numel() for p in lm.model.parameters()), "ablation": None}
    if info.kind == "hub" and info.fingerprint is None:
        commit = hub_commit(info.ref)
        out["resolved_fingerprint"] = f"commit:{commit}" if commit else None
    settings = config.eval_settings()
    if settings is not None:
        from superweight.ablation import ablation_table
        from superweight.selection import Selection

        selection = Selection(list(run.result.early), "detected by this census")
        out["ablation"] = ablation_table(lm, selection, settings.evaluator()).to_dict()
    return out


def _engine(ref: str, config: CensusConfig):
    """The engine record `detect` writes: the census runs PyTorch, so it is `detect`'s own choice when
    that is PyTorch (e.g. "not a .gguf file"), else the choice `detect --engine torch` records."""
    from superweight.runtime.detect import choose_engine

    torch_only = [flag for flag, on in (("--device", config.device != "cpu"), ("--dtype", config.dtype != "float32"),
                                        ("--cache-dtype", config.cache_dtype != "float32"),
                                        ("--layers", config.layers is not None),
                                        ("--down-proj", config.down_proj is not None)) if on]
    if ref.lower().endswith(".gguf") and not torch_only:  # `detect` would pick llama.cpp if it can
        return choose_engine(ref, "torch")
    return choose_engine(ref, "auto", cache_dtype=config.cache_dtype, torch_only=torch_only)


def _peak_memory(device: str) -> dict:
    out = {"ram": peak_rss()}
    if device != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                out["gpu"] = int(torch.cuda.max_memory_allocated())
        except Exception:  # noqa: BLE001 — a missing figure, not a failure
            pass
    return out
