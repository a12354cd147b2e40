"""Cost of the quick ablation (`superweight ablate --quick`) on the default model, and how it grows
with `--limit` (zero-shot items per task).

The quick ablation is four evaluations (Original, Prune SW, Prune Non-SW, Prune SW + restore SA),
each of perplexity on two texts (max_tokens each) and seven zero-shot tasks (limit items each),
plus the edits themselves. This measures the parts separately, once each:
  - the edits: detection, finding the top-K other weights, the restore-SA hook's cost per forward;
  - one evaluation's perplexity part at the quick preset's max_tokens;
  - one evaluation's zero-shot part at several limits (the part that grows with --limit);
and predicts the whole quick run as 4 × (perplexity + zero-shot at the quick limit) + edits.

Run: python benchmarks/bench_ablate.py [--limits 5,10,20] [--threads 1]. Prints a table and writes
JSON to benchmarks/results/ablate.json. Timings on a shared CPU vary run to run; compare ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _timing import peak_rss_mib

from superweight._io import result_header, write_json
from superweight.ablation import CONDITIONS
from superweight.detect import find_super_weights
from superweight.evaluate import QUICK, evaluate
from superweight.interventions import (measure_super_activations, restore_super_activation,
                                       top_k_weights)
from superweight.model import load_model


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limits", default="5,10,20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limits = [int(x) for x in args.limits.split(",")]

    load_s, lm = timed(lambda: load_model(args.model, quiet=True))
    detect_s, sws = timed(lambda: find_super_weights(lm))
    topk_s, _ = timed(lambda: top_k_weights(lm.view, 7000, sws))
    sws = measure_super_activations(lm, sws)
    ids = torch.randint(0, lm.model.config.vocab_size, (1, 512))
    with torch.inference_mode():
        lm.model(input_ids=ids)  # warm
        fwd_s, _ = timed(lambda: lm.model(input_ids=ids))
        with restore_super_activation(lm.view, sws):
            fwd_restore_s, _ = timed(lambda: lm.model(input_ids=ids))

    ppl_s, ppl = timed(lambda: evaluate(lm, ppl=QUICK["ppl"], tasks=(), max_tokens=QUICK["max_tokens"],
                                        progress=False))
    tasks = {}
    for limit in limits:
        s, r = timed(lambda: evaluate(lm, ppl=(), tasks=QUICK["tasks"], limit=limit, progress=False))
        tasks[limit] = {"seconds": s, "items": sum(t.items for t in r.zero_shot.values())}
    quick_limit = QUICK["limit"]
    per_item = {k: v["seconds"] / v["items"] for k, v in tasks.items()}
    task_quick = (tasks[quick_limit]["seconds"] if quick_limit in tasks
                  else per_item[max(per_item)] * quick_limit * len(QUICK["tasks"]))
    predicted = len(CONDITIONS) * (ppl_s + task_quick) + detect_s + topk_s
    rows = [("load model", load_s), ("detect super weights", detect_s),
            ("find top-7000 other weights", topk_s), ("forward, 512 tokens", fwd_s),
            ("forward, 512 tokens, restore-SA hook on", fwd_restore_s),
            (f"perplexity part of one evaluation ({len(QUICK['ppl'])} texts × {QUICK['max_tokens']} tokens)", ppl_s)]
    rows += [(f"zero-shot part, --limit {k} ({v['items']} items, {per_item[k]:.2f} s/item)", v["seconds"])
             for k, v in tasks.items()]
    rows.append((f"predicted quick ablation (4 evaluations, --limit {quick_limit})", predicted))
    width = max(len(r[0]) for r in rows)
    for name, s in rows:
        print(f"{name:<{width}}  {s:9.2f} s")
    write_json(args.out, result_header(
        "bench_ablate", model=lm.describe(), threads=args.threads, limits=limits,
        seconds={name: s for name, s in rows}, zero_shot=tasks,
        wiki_ppl=ppl.summary().get("wiki_ppl"),
        peak_rss_mb=peak_rss_mib()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
