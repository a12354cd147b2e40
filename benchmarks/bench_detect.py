"""Detection cost on the default model: ratios to loading it, to one plain forward pass, and the new
detection (residual stream + origins + down projection search) against the old search alone.

Run: python benchmarks/bench_detect.py [--repeat N] [--threads N]. Prints a table and writes JSON to
benchmarks/results/detect.json. Peak memory is the process's max resident set size.

"old search" is the down projection search as it was before massive activations were added: per
round one forward pass recording each layer's down projection maxima (`layer_stats`), the
median-layer test (`candidates`), the candidate records, then zero what was found and repeat until
a round finds nothing new. "new detect" is `detect()`: its first pass also scans the residual stream
and explains each massive activation; its later rounds are the old search's. "one round" rows
compare a single pass of the old kind with round 1 of the new (the same pass plus the residual scan
and the origins): the cost of the extra measurements alone. Timings interleave the variants (old,
new, old, new, ...) and keep the best of each, so all see the same machine load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _timing import best_of, peak_rss_mib

from superweight._io import result_header, write_json
from superweight.detect import (DEFAULT_PROMPT, PROMPT_SET, DetectConfig, _records, candidates, detect, encode,
                                layer_stats, output_threshold)
from superweight.interventions import prune
from superweight.massive import OriginConfig, ResidualProbe, massive_activations
from superweight.model import load_model


def old_search(lm, prompt: str = DEFAULT_PROMPT, config: DetectConfig | None = None) -> tuple[set, int]:
    """The down projection search alone: (coordinates found, rounds run)."""
    config = config or DetectConfig()
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]
    found: dict = {}
    rounds = 0
    for rnd in range(1, config.max_rounds + 1):
        with prune(lm.view, list(found)):
            stats = layer_stats(lm, ids, config.layers)
            rounds += 1
            out_min = output_threshold(stats, config)
            new = [sw for s in candidates(stats, config)
                   for sw in _records(lm, s, rnd, config, tokens, out_min) if sw.key not in found]
        if not new:
            break
        found.update((sw.key, sw) for sw in new)
    return set(found), rounds


def first_pass(lm, prompt: str = DEFAULT_PROMPT, config: DetectConfig | None = None) -> int:
    """Round 1 of the new detection alone: down projections + residual stream + origins in one
    pass. Returns how many massive activations it explained."""
    config = config or DetectConfig()
    ids = encode(lm, prompt)
    tokens = [lm.tokenizer.decode([int(t)]) for t in ids[0]]
    layers = list(range(lm.view.num_layers))
    probe = ResidualProbe(lm.view, layers, config.criterion)
    stats = layer_stats(lm, ids, layers, probe, config)
    origin = OriginConfig(config.weight_share, config.min_product_share, config.max_weights,
                          row_threshold=output_threshold(stats, config))
    return len(massive_activations(lm.view, probe, origin, tokens, config.late_from(lm.view.num_layers)))


def interleaved(fns: dict, repeat: int) -> dict:
    """Best wall time of each function, running them in turn `repeat` times."""
    best = {name: float("inf") for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_model(args.model, quiet=True)  # warm: imports and the converted cache
    load_s = best_of(lambda: load_model(args.model, quiet=True), args.repeat)
    lm = load_model(args.model, quiet=True)
    ids = encode(lm, DEFAULT_PROMPT)
    with torch.no_grad():
        forward_s = best_of(lambda: lm.model(input_ids=ids), args.repeat)
    detect(lm), old_search(lm)  # warm both paths
    one = interleaved({"old": lambda: old_search(lm), "new": lambda: detect(lm),
                       "pass": lambda: layer_stats(lm, ids), "pass+": lambda: first_pass(lm)}, args.repeat)
    many = interleaved({"old": lambda: [old_search(lm, p) for p in PROMPT_SET],
                        "new": lambda: detect(lm, PROMPT_SET)}, max(1, args.repeat // 2))
    new_result = detect(lm)
    old_found, old_rounds = old_search(lm)
    peak_mib = peak_rss_mib()
    rows = {
        "load (cached safetensors)": load_s,
        "one forward pass": forward_s,
        "one round: down projections only": one["pass"],
        "one round + residual scan + origins": one["pass+"],
        f"old search, 1 prompt ({old_rounds} rounds)": one["old"],
        f"new detect, 1 prompt ({new_result.rounds} rounds)": one["new"],
        f"old search, {len(PROMPT_SET)} prompts": many["old"],
        f"new detect, {len(PROMPT_SET)} prompts": many["new"],
    }
    print(f"{'step':38s} {'seconds':>9s} {'× forward':>10s} {'× load+forward':>15s}")
    for name, s in rows.items():
        print(f"{name:38s} {s:9.3f} {s / forward_s:10.1f} {s / (load_s + forward_s):15.2f}")
    ratio_one, ratio_many = one["new"] / one["old"], many["new"] / many["old"]
    ratio_pass = one["pass+"] / one["pass"]
    print(f"new detect / old search: {ratio_one:.2f}x (1 prompt), {ratio_many:.2f}x ({len(PROMPT_SET)} prompts); "
          f"one pass with the residual scan and origins / without: {ratio_pass:.2f}x")
    print(f"old search found {sorted(c[:3] for c in old_found)}; new detect found "
          f"{sorted(s.coord for s in new_result.super_weights)} and {len(new_result.massive)} massive activation(s)")
    print(f"peak RSS: {peak_mib:.0f} MiB; torch threads: {torch.get_num_threads()}")
    out = Path(__file__).parent / "results" / "detect.json"
    write_json(out, result_header("bench-detect", model=args.model, seconds=rows,
                                  new_over_old=ratio_one, new_over_old_prompts=ratio_many,
                                  first_pass_over_plain_pass=ratio_pass,
                                  detect_over_load_plus_forward=one["new"] / (load_s + forward_s),
                                  detect_over_forward=one["new"] / forward_s, peak_rss_mib=peak_mib,
                                  threads=torch.get_num_threads(),
                                  timing="best of --repeat runs, old and new interleaved"))


if __name__ == "__main__":
    main()
