"""Fine-tuning cost on the default model: full vs LoRA vs SMT, step time and peak memory.

Each method runs in a fresh subprocess (so each peak RSS is its own, the OS's figure: ru_maxrss),
on the same PTB-train blocks, with the same batch, seqlen, optimizer (the Trainer's AdamW), and the
freeze guard on the two super weights (recording only at the start and the end, so the probe is not
in the step times). LoRA gets rank 8 on every decoder linear; SMT gets the same trainable budget
(the share of decoder-linear parameters LoRA trains), blocks of 256. The step time is the median over
the steps after the first (the first pays one-off allocation); SMT's warm-up is reported apart.

Run: python benchmarks/bench_finetune.py [--steps 6] [--seqlen 128] [--batch 4] [--threads 1]
Prints a table and writes JSON to benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import peak_rss_mib

SUPER_WEIGHTS = [(11, 507, 1229), (11, 507, 1487)]  # detection's, on the default model


def worker(args) -> dict:
    import torch

    from superweight.finetune import FinetuneConfig, LoRASettings, SMTConfig, finetune, training_documents
    from superweight.finetune.lora import lora_share
    from superweight.records import SuperWeight

    torch.set_num_threads(args.threads)
    docs = training_documents("ptb-train")
    from superweight.model import load_model

    lm = load_model(args.model, quiet=True)
    loaded_mb = peak_rss_mib()
    lora = LoRASettings(r=args.rank)
    budget = lora_share(lm, LoRASettings(r=args.rank))
    config = FinetuneConfig(method=args.worker, guard="freeze", steps=args.steps, lr=1e-4, weight_decay=0.1,
                            batch_size=args.batch, seqlen=args.seqlen, guard_every=args.steps + 1, lora=lora,
                            smt=SMTConfig(block=256, warmup_steps=args.warmup, budget=budget))
    start = time.perf_counter()
    r = finetune(lm, config, docs, super_weights=[SuperWeight(*c) for c in SUPER_WEIGHTS], check=False)
    wall = time.perf_counter() - start
    steps = r.train.step_seconds[1:] or r.train.step_seconds
    return {"method": args.worker, "median_step_s": statistics.median(steps), "step_seconds": r.train.step_seconds,
            "smt_warmup_s": r.train.warmup_seconds, "wall_s": wall, "trainable_params": r.train.trainable_params,
            "total_params": r.train.total_params, "losses": r.train.losses, "loaded_rss_mb": loaded_mb,
            "peak_rss_mb": peak_rss_mib(), "threads": torch.get_num_threads(),
            "super_weights_exact": all(w["bit_identical"] for w in r.drift.weight_rows()),
            "smt_blocks_per_kind": r.smt.placement()["blocks_per_kind"] if r.smt else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=4, help="SMT warm-up batches")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--methods", default="full,lora,smt")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from superweight._io import result_header, write_json

    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--worker", method] + [
            f"--{k}={getattr(args, k)}" for k in ("steps", "seqlen", "batch", "threads", "warmup", "rank", "model")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["method"] == "full"), rows[0])
    tokens = args.batch * args.seqlen
    print(f"{args.steps} steps of {args.batch} x {args.seqlen} tokens, {args.threads} thread(s), freeze guard")
    print(f"{'method':6s} {'trainable':>12s} {'step s':>8s} {'x full':>7s} {'tok/s':>7s} {'peak RSS MB':>12s} "
          f"{'loaded MB':>10s} {'warm-up s':>10s} {'SW exact':>9s}")
    for r in rows:
        print(f"{r['method']:6s} {r['trainable_params']:12,d} {r['median_step_s']:8.2f} "
              f"{r['median_step_s'] / base['median_step_s']:7.2f} {tokens / r['median_step_s']:7.0f} "
              f"{r['peak_rss_mb']:12.0f} {r['loaded_rss_mb']:10.0f} {r['smt_warmup_s']:10.1f} "
              f"{'yes' if r['super_weights_exact'] else 'NO':>9s}")
    for r in rows:
        if r["smt_blocks_per_kind"]:
            print(f"SMT blocks per kind: {r['smt_blocks_per_kind']}")
    out = Path(__file__).parent / "results" / "finetune.json"
    write_json(out, {**result_header("bench-finetune", model=args.model), "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
