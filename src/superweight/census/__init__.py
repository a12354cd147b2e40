"""A census: detection (and verification, and the quick Table 1) on many models, one worker per model.

Why: the questions now asked about super weights are comparative — which families have them, at
what depth, how strong, whether they are causal — and answering them means dozens to hundreds of
models, more than one process or one machine should hold. The census runs each model in a worker
process (`census.local`: a pool on this machine; `census.cluster`: Ray tasks on a cluster), so a
model that crashes, runs out of memory or is refused is that model's recorded failure, never the
end of the run; each result goes into a resumable store (`census.store`) the moment it finishes, so
a re-run does only what is missing; the per-model figures are exactly those of `superweight detect`
(`census.work`), and the rows (`census.summary`) make the census table.

>>> run = run_census(["smollm2-135m", "./my-model"], CensusConfig(verify_threshold=3.0), "census/")  # doctest: +SKIP
>>> [(r["ref"], r["status"], r["super_weights"]) for r in run.rows]  # doctest: +SKIP
[('smollm2-135m', 'done', [[11, 507, 1229], [11, 507, 1487]]), ('./my-model', 'done', [[2, 7, 11]])]
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from superweight.census.models import ModelInfo, inspect_model, read_refs
from superweight.census.store import DONE, FAILED, Store, settings_key
from superweight.census.summary import summarize
from superweight.census.work import CensusConfig, run_model
from superweight.events import OnEvent, emitter

__all__ = ["CensusConfig", "CensusRun", "Store", "read_refs", "run_census", "run_model", "add_to_catalog"]

PROCESS_ALLOWANCE = 512 << 20  # bytes a worker needs besides the weights (torch, activations, buffers)
WEIGHTS_MARGIN = 1.2  # ... and this much over the weights' own bytes (loading copies, tokenizer)


@dataclass
class CensusRun:
    """What a census did: one entry per model (in the order given), which ran now and which were
    already in the store."""

    out_dir: Path
    config: CensusConfig
    entries: list[dict]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    engine: str = "local"
    workers: int = 1
    seconds: float = 0.0

    @property
    def rows(self) -> list[dict]:
        return [summarize(e) for e in self.entries]

    @property
    def failed(self) -> list[str]:
        return [e["ref"] for e in self.entries if e["status"] != DONE]

    def to_dict(self) -> dict:
        """The census result file (census.json, `census --json`): header, settings, rows."""
        from superweight._io import result_header

        return {**result_header("census"), "out_dir": str(self.out_dir), "engine": self.engine, "workers": self.workers,
                "settings": self.config.to_dict(), "settings_key": settings_key(self.config.to_dict()),
                "ran": self.ran, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3), "rows": self.rows}


def reservation(info: ModelInfo, share: int, total: int) -> tuple[int, int]:
    """(bytes to reserve, memory budget for its weights) of one model: a model that fits in one
    worker's `share` reserves what it needs; a larger or unknown one reserves `total` (it runs alone)
    with the whole of it as its budget."""
    if info.weights_bytes is not None:
        need = int(WEIGHTS_MARGIN * info.weights_bytes) + PROCESS_ALLOWANCE
        if need <= share:
            return need, share
    return total, total


def run_census(refs: list[str], config: CensusConfig, out_dir: str | Path, *, workers: int = 1,
               max_memory: str | int | None = None, threads: int | None = None, retry_failed: bool = False,
               ray: str | None = None, retries: int = 1,
               on_event: OnEvent | None = None, pool=None) -> CensusRun:
    """Run every model not yet in the store at `out_dir` (with `retry_failed`, also those recorded
    failed), each in a worker: `workers` local processes sharing `max_memory` (default: what the
    machine has free), or Ray tasks on the cluster at `ray` ("auto": the local `ray start`), each
    retried `retries` times by Ray if its worker dies. `on_event` (`superweight.events`) hears "skip"
    (a model already in the store, with its entry), "plan" (`total`: how many will run) and each
    "model" as it starts and ends (with its store entry, done or failed). `pool`: a `LocalPool` the caller
    started earlier (its workers import torch while the caller checks its input) and closes."""
    from superweight.errors import SuperweightError
    from superweight.model.budget import FIT_FRACTION, available_ram, parse_size

    if pool is not None:
        workers = len(pool.workers)
    if workers < 1:
        raise SuperweightError(f"workers must be at least 1, got {workers}")
    if retries < 0:
        raise SuperweightError(f"retries must be 0 or more, got {retries}")
    total = parse_size(max_memory) if max_memory is not None else None
    config.eval_settings()  # `--ablate quick`: unfetched data fails now, not in every worker
    store = Store(out_dir)
    emit = emitter(on_event)
    start = time.perf_counter()
    own = ray is None and pool is None
    if own:
        from superweight.census.local import LocalPool

        pool = LocalPool(workers)  # started first: the workers import torch while we look at the models
    try:
        infos = [_inspect(ref, config) for ref in refs]
        settings = config.to_dict()
        todo = []
        for info in infos:
            found = store.lookup(info.ref, info.fingerprint, settings)
            if found is not None and (found["status"] == DONE or not retry_failed):
                emit("skip", info.ref, result=found, ended=True)
            else:
                todo.append(info)
        emit("plan", "census", total=len(todo))
        threads = threads or (1 if ray else max(1, (os.cpu_count() or 1) // workers))
        base = {"config": settings, "threads": threads, "engine": "ray" if ray else "local"}
        done: list[str] = []

        def on_start(i: int) -> None:
            emit("model", todo[i].ref, i + 1, len(todo))

        def on_done(i: int, entry: dict) -> None:
            store.put(entry)
            done.append(entry["ref"])
            emit("model", entry["ref"], len(done), len(todo), entry, ended=True)

        def crashed(i: int, task: dict, why: str) -> dict:
            return run_model_failed(task, why)

        if todo and ray is None:
            total = total if total is not None else int(FIT_FRACTION * available_ram())
            share = total // workers
            tasks = []
            for info in todo:
                reserve, budget = reservation(info, share, total)
                tasks.append(({**base, "info": info.to_dict(), "budget_bytes": budget}, reserve))
            pool.run(tasks, total, on_start, on_done, crashed)
        elif todo:
            from superweight.census import cluster

            cluster.connect(ray)
            node = cluster.largest_node("memory") or 0
            limit = min(total, node) if total is not None and node else (total or node)
            tasks = []
            for info in todo:
                reserve, budget = reservation(info, limit, limit) if limit else (0, None)  # no memory figure
                request = {"num_cpus": threads, "memory": reserve,
                           "num_gpus": 1 if config.device != "cpu" else 0}
                tasks.append(({**base, "info": info.to_dict(), "budget_bytes": budget}, request))
            cluster.run_on_ray(tasks, retries, on_start, on_done, crashed)
    finally:
        if own:
            pool.close()
    entries = [store.lookup(i.ref, i.fingerprint, settings) for i in infos]
    return CensusRun(Path(out_dir), config, [e for e in entries if e is not None], ran=done,
                     skipped=[i.ref for i in infos if i not in todo], engine="ray" if ray else "local",
                     workers=workers, seconds=time.perf_counter() - start)


def _inspect(ref: str, config: CensusConfig) -> ModelInfo:
    try:
        return inspect_model(ref, config.dtype, config.cache_dtype)
    except Exception:  # noqa: BLE001 — unreadable headers: the worker's load gives the reason
        return ModelInfo(ref, "unresolved", None)


def run_model_failed(task: dict, why: str) -> dict:
    """The entry of a model whose worker died while it ran (nothing of the model's own came back)."""
    info = task["info"]
    settings = task["config"]
    return {"schema_version": 1, "kind": "census-entry", "ref": info["ref"], "fingerprint": info["fingerprint"],
            "resolved_fingerprint": info["fingerprint"], "settings": settings, "settings_key": settings_key(settings),
            "model_info": info, "status": FAILED, "error": why, "memory_budget_bytes": task.get("budget_bytes"),
            "worker": {"engine": task.get("engine")}, "seconds": None, "peak_memory": {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def add_to_catalog(out_dir: str | Path) -> list[tuple[str, list, Path]]:
    """Add every verified census result in `out_dir` (super weights that verification kept) to the
    user's local catalog, each with its provenance; returns (model id, coordinates, catalog path)."""
    from superweight import catalog
    from superweight.errors import SuperweightError

    store = Store(out_dir)
    if not store.results.is_dir():
        raise SuperweightError(f"{str(out_dir)!r} holds no census results (no results/ folder)")
    added = []
    for entry in store.entries():
        d = entry.get("detect")
        if entry["status"] != DONE or not d or d.get("verification") is None:
            continue
        coords = [(s["layer"], s["row"], s["col"]) for s in d["super_weights"]
                  if not s["late"] and s.get("verdict") == "super weight" and s.get("expert") is None]
        if not coords:
            continue
        model = d["model"]
        model_id = model.get("model_id") or entry["ref"]
        source = (f"superweight census in {Path(out_dir).resolve()}: detect --verify (threshold "
                  f"{d['verification']['threshold']:g}) on {entry['ref']} (weights sha256 "
                  f"{(model.get('weights_sha256') or '')[:12]}, settings {entry['settings_key']}, {entry['finished']})")
        added.append((model_id, coords, catalog.add(model_id, coords, source)))
    return added

