"""Zero-shot batch size: time and accuracy of `superweight.evaluate.zero_shot` at several batch
sizes, against lm-eval's own `HFLM` loading the same weights from disk, on the same offline tasks.

Our zero-shot path *is* lm-eval's (`HFLM` wrapping the in-memory model); what we choose is the batch
size. Every configuration runs the same tasks and items in one process, interleaved over
`--repeat` rounds, best time kept; accuracies must be identical across batch sizes (batching pads,
it must not change a log-likelihood by enough to flip a choice).

Run: python benchmarks/bench_batch.py [--items 40] [--sizes 1,4,8,16,32] [--repeat 2] [--threads 1]
Prints a table and writes JSON to benchmarks/results/batch.json. Needs `superweight data fetch`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _timing import peak_rss_mib
from superweight._io import result_header, write_json
from superweight.evaluate import fetch, zero_shot
from superweight.evaluate.zeroshot import DEFAULT_BATCH_SIZE, _data_files, _run_task, _task_manager
from superweight.model import load_model

OUT = Path(__file__).parent / "results" / "batch.json"
TASKS = ("arc_easy", "hellaswag", "piqa")
HFLM_BATCH = 16  # lm-eval's HFLM as the issue measured it


def ours(lm, items: int, batch_size: int) -> dict:
    start = time.perf_counter()
    out = zero_shot(lm, TASKS, limit=items, batch_size=batch_size, progress=False)
    return {"seconds": time.perf_counter() - start, "acc": {n: r.acc for n, r in out.items()}}


def lm_eval_own(model_dir: str, items: int, batch_size: int) -> dict:
    """lm-eval's HFLM loading the weights itself (its own from_pretrained), on our offline tasks."""
    from lm_eval.models.huggingface import HFLM

    files = _data_files(list(TASKS), {})
    with tempfile.TemporaryDirectory() as tmp:
        manager = _task_manager(files, Path(tmp), hub=False)
        harness = HFLM(pretrained=model_dir, batch_size=batch_size, dtype="float32", device="cpu")
        start = time.perf_counter()  # scoring only, like `ours` (its load is not counted)
        acc = {n: _run_task(harness, manager, n, files[n], items, False).acc for n in TASKS}
        return {"seconds": time.perf_counter() - start, "acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=40, help="items per task (default 40)")
    parser.add_argument("--sizes", default="1,4,8,16,32", help="our batch sizes to time")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best time is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-hflm", action="store_true", help="skip lm-eval's own HFLM run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fetch(TASKS)
    lm = load_model(args.model, quiet=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for bs in sizes:
            runs.setdefault(f"ours batch {bs}", []).append(ours(lm, args.items, bs))
        if not args.no_hflm and lm.kind != "hub":
            runs.setdefault(f"lm-eval HFLM batch {HFLM_BATCH}", []).append(
                lm_eval_own(str(lm.source), args.items, HFLM_BATCH))
    best = {name: min(r, key=lambda x: x["seconds"]) for name, r in runs.items()}
    base = best.get(f"ours batch {DEFAULT_BATCH_SIZE}") or next(iter(best.values()))
    accs = {name: r["acc"] for name, r in best.items()}
    same = all(a == next(iter(accs.values())) for a in accs.values())
    print(f"{len(TASKS)} tasks x {args.items} items ({', '.join(TASKS)}), {args.threads} thread(s), "
          f"best of {args.repeat}; default batch {DEFAULT_BATCH_SIZE}")
    for name, r in best.items():
        acc = " ".join(f"{n} {a:.3f}" for n, a in r["acc"].items())
        print(f"  {name:<24} {r['seconds']:7.1f} s  {r['seconds'] / base['seconds']:5.2f}x default   {acc}")
    print(f"accuracies identical across all runs: {same}; peak RSS {peak_rss_mib():.0f} MiB")
    payload = result_header("bench_batch", model=lm.describe(), threads=args.threads, items=args.items,
                            tasks=list(TASKS), default_batch_size=DEFAULT_BATCH_SIZE, runs=runs,
                            best={k: v["seconds"] for k, v in best.items()}, identical_accuracies=same,
                            peak_rss_mib=peak_rss_mib())
    print(f"wrote {write_json(OUT, payload)}")


if __name__ == "__main__":
    main()
