"""Evaluation cost on the default model: perplexity throughput against a plain loop, zero-shot per item.

Perplexity: `superweight.evaluate.perplexity` (batched windows, our cross-entropy) against the
simplest correct alternative, a per-window loop over the same token windows with the model's own
`labels=` loss, in the same process on the same text; reported as tokens/s and as a ratio (>1: ours
is faster), with the two perplexities to show they agree. Zero-shot: seconds per item through
lm-eval for a few tasks. Timings on a shared CPU are noisy; the ratio, taken in one run, is the
figure to compare.

Run: python benchmarks/bench_eval.py [--tokens N] [--seqlen N] [--items N] [--threads N]
Prints a table and writes JSON to benchmarks/results/eval.json. Needs `superweight data fetch`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from superweight._io import result_header, write_json
from superweight.evaluate import fetch, perplexity, zero_shot
from superweight.evaluate.perplexity import DEFAULT_BATCH_SIZE, tokenize, windows
from superweight.evaluate.sources import text_documents
from superweight.model import load_model

OUT = Path(__file__).parent / "results" / "eval.json"
TEXT = "wiki"
TASKS = ("arc_easy", "piqa", "hellaswag")


def plain_loop_ppl(model, chunks: torch.Tensor) -> float:
    """The baseline: one window at a time, the model's own loss, averaged over windows."""
    losses = []
    with torch.no_grad():
        for w in chunks:
            losses.append(float(model(input_ids=w[None], labels=w[None]).loss))
    return math.exp(sum(losses) / len(losses))


def bench_perplexity(lm, tokens: int, seqlen: int, batch_size: int) -> dict:
    chunks = windows(tokenize(lm.tokenizer, text_documents(TEXT), tokens), seqlen)
    scored = chunks.shape[0] * seqlen
    start = time.perf_counter()
    base_ppl = plain_loop_ppl(lm.model, chunks)
    base_s = time.perf_counter() - start
    ours = perplexity(lm, TEXT, seqlen=seqlen, max_tokens=tokens, batch_size=batch_size)
    return {"text": TEXT, "windows": ours.windows, "seqlen": seqlen, "tokens": scored,
            "batch_size": batch_size, "ours_tokens_per_s": scored / ours.seconds,
            "plain_tokens_per_s": scored / base_s, "speed_ratio": base_s / ours.seconds,
            "ours_ppl": ours.ppl, "plain_ppl": base_ppl, "ours_s": ours.seconds, "plain_s": base_s}


def bench_zero_shot(lm, items: int, batch_size: int) -> dict:
    out = zero_shot(lm, TASKS, limit=items, batch_size=batch_size, progress=False)
    return {name: {"items": r.items, "seconds": r.seconds, "seconds_per_item": r.seconds / r.items,
                   "acc": r.acc} for name, r in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=8192, help="perplexity tokens (default 8192)")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--items", type=int, default=10, help="zero-shot items per task (default 10)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fetch((TEXT,) + TASKS)
    lm = load_model(args.model, quiet=True)
    ppl = bench_perplexity(lm, args.tokens, args.seqlen, args.batch_size)
    zs = bench_zero_shot(lm, args.items, args.batch_size)
    print(f"perplexity on {ppl['text']}: {ppl['tokens']:,} tokens in {ppl['windows']} windows of {ppl['seqlen']}")
    print(f"  ours   {ppl['ours_tokens_per_s']:8.1f} tok/s  ppl {ppl['ours_ppl']:.4f}  (batch {ppl['batch_size']})")
    print(f"  plain  {ppl['plain_tokens_per_s']:8.1f} tok/s  ppl {ppl['plain_ppl']:.4f}")
    print(f"  ratio  {ppl['speed_ratio']:.2f}x")
    for name, r in zs.items():
        print(f"zero-shot {name:<10} {r['seconds_per_item']:6.2f} s/item over {r['items']} items")
    payload = result_header("bench_eval", model=lm.describe(), threads=torch.get_num_threads(),
                            perplexity=ppl, zero_shot=zs)
    print(f"wrote {write_json(OUT, payload)}")


if __name__ == "__main__":
    main()
