"""Detection cost on the default model, as ratios to loading it and to one plain forward pass.

Run: python benchmarks/bench_detect.py [--repeat N]. Prints a table and writes JSON to
benchmarks/results/detect.json. Peak memory is the process's max resident set size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _timing import best_of, peak_rss_mib

from superweight._io import result_header, write_json
from superweight.detect import DEFAULT_PROMPT, PROMPT_SET, detect, encode
from superweight.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    load_model(args.model, quiet=True)  # warm: imports and the converted cache
    load_s = best_of(lambda: load_model(args.model, quiet=True), args.repeat)
    lm = load_model(args.model, quiet=True)
    ids = encode(lm, DEFAULT_PROMPT)
    with torch.no_grad():
        forward_s = best_of(lambda: lm.model(input_ids=ids), args.repeat)
    detect_s = best_of(lambda: detect(lm), args.repeat)
    rounds = len(detect(lm).layer_stats)
    multi_s = best_of(lambda: detect(lm, PROMPT_SET), max(1, args.repeat // 2))
    peak_mib = peak_rss_mib()
    rows = {
        "load (cached safetensors)": load_s,
        "one forward pass": forward_s,
        f"detect, 1 prompt ({rounds} rounds)": detect_s,
        f"detect, {len(PROMPT_SET)} prompts": multi_s,
    }
    print(f"{'step':38s} {'seconds':>9s} {'× forward':>10s} {'× load+forward':>15s}")
    for name, s in rows.items():
        print(f"{name:38s} {s:9.3f} {s / forward_s:10.1f} {s / (load_s + forward_s):15.2f}")
    print(f"peak RSS: {peak_mib:.0f} MiB; torch threads: {torch.get_num_threads()}")
    out = Path(__file__).parent / "results" / "detect.json"
    write_json(out, result_header("bench-detect", model=args.model, seconds=rows,
                                  detect_over_load_plus_forward=detect_s / (load_s + forward_s),
                                  detect_over_forward=detect_s / forward_s, peak_rss_mib=peak_mib,
                                  timing="best of --repeat runs"))


if __name__ == "__main__":
    main()
