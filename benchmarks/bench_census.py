"""What a census costs over running `detect` by hand, what a second worker buys, and Ray's overhead.

Run: python benchmarks/bench_census.py [--skip-ray | --ray-only | --verify]. Prints a table and writes
JSON to benchmarks/results/census.json (census-ray.json for --ray-only, census-verify.json for
--verify: every variant runs `detect --verify`, the usual census).

The 8 models: the packaged default model (smollm2-135m, 135M parameters, 30 layers) and seven small
planted models of seven architectures (llama, qwen2, mistral, gpt2, olmo, phi3, gemma2; hidden 256,
8 layers, ~2-4M parameters, one super weight planted each), saved as local folders. Each variant
runs in a fresh Python process, timed from outside (wall clock, imports included), one after the
other so they see similar machine load:
- `detect ×8, one process`: import the library once, then `load_model` + `run_detection` per model
  (what `superweight detect` does, without 8 process starts) — the baseline;
- `census, 1 worker`: `superweight census ... --workers 1`, the whole command (driver, one worker
  process, the store, the table, census.json/csv and the HTML page with its plots);
- `census, 2 workers`: the same with `--workers 2` (each worker 1 torch thread; the baseline and
  the 1-worker census use 2 threads — the same 2 cores either way);
- Ray: in one process, a local Ray cluster (`ray.init(num_cpus=2)`, timed apart), then the census as
  Ray tasks (1 thread each, so 2 run at once) against the same census with 2 local workers, both
  timed from the `run_census` call: the difference over 8 models is Ray's overhead per model.
Wall time is what a person waits; on a machine shared with other work it stretches with the load
(reported before and after), so the CPU time of each variant (its process and every process it
waited for, the census's workers included) is reported too: the cost that load does not inflate.
One-time work per file (the default model's GGUF conversion, its weights hash, the sizes the census
reads from headers, all cached on disk) is done before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHS = ("llama", "qwen2", "mistral", "gpt2", "olmo", "phi3", "gemma2")
SMALL = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
SMALL_GPT2 = dict(n_embd=256, n_inner=1024, n_head=4)


def make_models(root: Path) -> list[str]:
    from superweight.testing import save_model, tiny_model, plant_super_weight

    refs = ["smollm2-135m"]
    for i, arch in enumerate(ARCHS):
        overrides = SMALL_GPT2 if arch == "gpt2" else dict(SMALL, **({"query_pre_attn_scalar": 64}
                                                                     if arch == "gemma2" else {}))
        model = tiny_model(arch, num_layers=8, seed=i, **overrides)
        plant_super_weight(model, 2, 7 + i, 11 + i)
        refs.append(save_model(model, root / arch))
    return refs


def baseline(refs: list[str], threads: int, verify: bool = False) -> None:
    """`detect` (`--verify`) on every model in this one process (the phase run in a fresh interpreter)."""
    import torch

    from superweight.detect import run_detection
    from superweight.model import load_model
    from superweight.verify import VERIFY_THRESHOLD

    torch.set_num_threads(threads)
    for ref in refs:
        lm = load_model(ref, quiet=True)
        run_detection(lm, verify_threshold=VERIFY_THRESHOLD if verify else None)


def ray_phase(refs: list[str], out: Path) -> dict:
    from superweight.census import CensusConfig, run_census

    t = time.perf_counter()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t
    t = time.perf_counter()
    ray_run = run_census(refs, CensusConfig(), out / "ray", ray="auto", threads=1)
    ray_s = time.perf_counter() - t
    ray.shutdown()
    t = time.perf_counter()
    local = run_census(refs, CensusConfig(), out / "local", workers=2, threads=1)
    local_s = time.perf_counter() - t
    assert not ray_run.failed and not local.failed
    return {"ray_init_s": init, "ray_census_s": ray_s, "local_2_workers_s": local_s}


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and every process it waited for, e.g. its workers)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def warm(refs: list[str]) -> None:
    """One-time work every variant would otherwise pay once per file, done before any timing: the
    default model's conversion, its weights hash, and the size the census reads from its GGUF."""
    from superweight.census.models import inspect_model
    from superweight.model import load_model

    for ref in refs:
        inspect_model(ref)
    load_model(refs[0], quiet=True).weights_hash()


def _ray_only(me: list[str], refs: list[str], tmp: Path, res: dict) -> int:
    done = subprocess.run([*me, "--phase", "ray", "--out", str(tmp / "ray"), "--refs", *refs],
                          check=True, capture_output=True, text=True)
    res.update(json.loads(done.stdout.strip().splitlines()[-1]))
    res["ray_overhead_per_model_s"] = (res["ray_census_s"] - res["local_2_workers_s"]) / len(res["models"])
    res["load_after"] = os.getloadavg()[0]
    _report(res, "census-ray.json")
    return 0


def _report(res: dict, name: str) -> None:
    from superweight._io import result_header, write_json

    for k, v in res.items():
        print(f"{k:36s} {v:.3f}" if isinstance(v, float) else f"{k:36s} {v}")
    write_json(HERE / "results" / name, result_header("bench-census", **res))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["baseline", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--refs", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray measurement")
    parser.add_argument("--verify", action="store_true",
                        help="detect --verify in every variant (results/census-verify.json); no Ray")
    parser.add_argument("--ray-only", action="store_true", help="only the Ray measurement (results/census-ray.json)")
    args = parser.parse_args()
    if args.phase == "baseline":
        baseline(args.refs, args.threads, args.verify)
        return 0
    if args.phase == "ray":
        print(json.dumps(ray_phase(args.refs, Path(args.out))))
        return 0

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-census-") as tmp:
        tmp = Path(tmp)
        refs = make_models(tmp)
        warm(refs)
        me = [py, str(Path(__file__).resolve())]
        cli = [py, "-m", "superweight.cli", "census", *refs]
        res = {"models": ["smollm2-135m", *ARCHS], "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
               "verify": args.verify}
        if args.ray_only:
            return _ray_only(me, refs, tmp, res)
        v = ["--verify"] if args.verify else []
        variants = {"detect_x8_one_process": [*me, "--phase", "baseline", "--threads", "2", *v, "--refs", *refs],
                    "census_1_worker": [*cli, *v, "--out", str(tmp / "c1"), "--workers", "1", "--threads", "2"],
                    "census_2_workers": [*cli, *v, "--out", str(tmp / "c2"), "--workers", "2", "--threads", "1"]}
        for name, cmd in variants.items():
            res[f"{name}_s"], res[f"{name}_cpu_s"] = timed(cmd)
        res["census_rerun_all_done_s"] = timed([*cli, *v, "--out", str(tmp / "c1"), "--workers", "1"])[0]
        res["load_after"] = os.getloadavg()[0]
        rows = json.loads((tmp / "c1" / "census.json").read_text())["rows"]
        res["census_failed"] = [r["ref"] for r in rows if r["status"] != "done"]
        if not (args.skip_ray or args.verify):
            done = subprocess.run([*me, "--phase", "ray", "--out", str(tmp / "ray"), "--refs", *refs],
                                  check=True, capture_output=True, text=True)
            res.update(json.loads(done.stdout.strip().splitlines()[-1]))
    res["census_1_worker_over_detect"] = res["census_1_worker_s"] / res["detect_x8_one_process_s"]
    res["census_1_worker_over_detect_cpu"] = res["census_1_worker_cpu_s"] / res["detect_x8_one_process_cpu_s"]
    res["speedup_2_workers"] = res["census_1_worker_s"] / res["census_2_workers_s"]
    if "ray_census_s" in res:
        res["ray_overhead_per_model_s"] = (res["ray_census_s"] - res["local_2_workers_s"]) / len(res["models"])
    _report(res, "census-verify.json" if args.verify else "census.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
