"""Weight quantization cost on the default model, as a ratio to reading every decoder weight once.

"Reading once" is one pass that touches every quantized weight (a sum in float32), the floor any
quantizer pays; each method is timed over all decoder linears (no evaluation), best of `--repeat`.
Peak memory is the process's max resident set size, and its growth over the loaded model.

Run: python benchmarks/bench_quantize.py [--repeat N]. Prints a table and writes JSON to
benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _timing import best_of, peak_rss_mib

from superweight._io import result_header, write_json
from superweight.model import load_model
from superweight.quantize import HQQConfig, RTNClipConfig, RTNConfig, SuperWeightQuantConfig, quantized
from superweight.quantize.weights import weight_targets
from superweight.records import SuperWeight

SUPER_WEIGHTS = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]  # detection's, on the default


def read_once(lm) -> float:
    return float(sum(t.matrix().detach().float().sum() for t in weight_targets(lm)))


def quantize_once(lm, config) -> None:
    with quantized(lm, config, SUPER_WEIGHTS):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hqq", action="store_true", help="also time HQQ (slow: it optimises each block)")
    args = parser.parse_args()
    lm = load_model(args.model, quiet=True)
    loaded_mb = peak_rss_mib()
    n = sum(t.matrix().numel() for t in weight_targets(lm))
    read_s = best_of(lambda: read_once(lm), args.repeat + 1)
    configs = [RTNConfig(bits=4, block=128), RTNClipConfig(bits=4, block=128, z=20),
               SuperWeightQuantConfig(bits=4, block=128, z=20),
               SuperWeightQuantConfig(bits=4, block=16384, z=20)]
    if args.hqq:
        configs.append(HQQConfig(bits=4, block=128))
    quantize_once(lm, configs[0])  # warm-up: the first run pays the page faults of the saved copies
    rows = []
    for cfg in configs:
        s = best_of(lambda: quantize_once(lm, cfg), args.repeat)
        rows.append({"config": cfg.label(), "seconds": round(s, 3), "ratio_to_read": round(s / read_s, 1),
                     "params_per_s": round(n / s)})
    peak = peak_rss_mib()
    result = {**result_header("bench-quantize", model=lm.describe()), "threads": torch.get_num_threads(),
              "params": n, "read_once_s": round(read_s, 4), "rows": rows,
              "peak_rss_mb": round(peak), "rss_growth_over_loaded_mb": round(peak - loaded_mb)}
    print(f"{n / 1e6:.1f}M decoder weights; reading them once: {read_s:.3f} s "
          f"({torch.get_num_threads()} threads)")
    for r in rows:
        print(f"  {r['config']:<32} {r['seconds']:8.2f} s  {r['ratio_to_read']:7.1f}x read  "
              f"{r['params_per_s'] / 1e6:6.1f}M params/s")
    print(f"peak RSS {peak:.0f} MB ({peak - loaded_mb:+.0f} MB over the loaded model: the saved originals)")
    out = Path(__file__).parent / "results" / "quantize.json"
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
