"""GGUF conversion with bounded memory: the streaming converter against the whole-model reference path,
the size of the cache, and what a cache hit costs next to the same cached safetensors directory.

Each conversion runs in a fresh subprocess, so its peak resident set size is the OS's own figure for
that process (`ru_maxrss`, imports included; the imports alone are reported too). The two float32
outputs are compared tensor by tensor. `detect` is timed as a user runs it (whole process,
`python -m superweight.cli detect REF --threads 1`), on the cached GGUF and on the cached directory,
alternately, median of --repeat runs each. Everything is written under a temporary SUPERWEIGHT_CACHE.

Run: python benchmarks/bench_gguf.py [--gguf PATH | --synthetic] [--repeat 3]
(default GGUF: the built-in model's file, 135M parameters, small enough that one shard buffer holds
it whole; --synthetic writes a random 282M-parameter Llama, hidden 1024 x 16 layers, vocab 32000, tied,
as a Q8_0 GGUF first). Prints a table, writes benchmarks/results/gguf[-synthetic].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gguf.json"
SRC = str(Path(__file__).resolve().parents[1] / "src")
QUIET = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}

CONVERT = """
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from superweight.model import gguf
imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
which, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
t = time.perf_counter()
if which == "reference":
    gguf.convert_gguf_reference(source, out)
else:
    gguf.convert_gguf(source, out, cache_dtype=which)
print(json.dumps({"seconds": time.perf_counter() - t, "imports_rss_mib": imports,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SYNTHETIC = """
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from superweight.testing_gguf import write_gguf
config = AutoConfig.for_model("llama", hidden_size=1024, intermediate_size=4096, num_hidden_layers=16,
                              num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
                              tie_word_embeddings=True, bos_token_id=256, eos_token_id=257, pad_token_id=258)
torch.manual_seed(0)
write_gguf(AutoModelForCausalLM.from_config(config, dtype=torch.float32), sys.argv[1], qtype="Q8_0")
"""

DETECT = """
import json, resource, sys
from superweight.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
      file=sys.stderr)
"""


def run(code: str, args: list[str], env: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"failed: {args}\n{done.stderr[-2000:]}")
    report = json.loads((done.stdout if code is CONVERT else done.stderr).strip().splitlines()[-1])
    return seconds, report


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of directory `a` equal to the same-named one of `b` (shard layouts may differ)."""
    import torch
    from safetensors import safe_open

    def where(d: Path) -> dict[str, Path]:
        out = {}
        for file in d.glob("*.safetensors"):
            with safe_open(file, "pt") as f:
                out.update(dict.fromkeys(f.keys(), file))
        return out

    wa, wb = where(a), where(b)
    if wa.keys() != wb.keys():
        return False
    for key in wa:
        with safe_open(wa[key], "pt") as fa, safe_open(wb[key], "pt") as fb:
            if not torch.equal(fa.get_tensor(key), fb.get_tensor(key)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", type=Path, help="a .gguf file (default: the built-in model's)")
    parser.add_argument("--synthetic", action="store_true", help="a random 282M-parameter Llama as Q8_0")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, SRC)
    sys.path.insert(0, str(Path(__file__).parent))
    from _timing import best_of

    from superweight._io import result_header, write_json
    from superweight.model import load_model
    from superweight.model.load import _gguf_dir, alias_gguf

    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, **QUIET, "PYTHONPATH": SRC, "SUPERWEIGHT_CACHE": str(tmp / "cache")}
        if args.synthetic:
            source = tmp / "synthetic-llama-282m.Q8_0.gguf"
            subprocess.run([sys.executable, "-c", SYNTHETIC, str(source)], env=env, check=True)
        else:
            source = (args.gguf or alias_gguf("smollm2-135m")).resolve()
        gguf_bytes = source.stat().st_size
        conversions = {}
        for which in ("reference", "float32", "bfloat16"):
            wall, report = run(CONVERT, [which, str(source), str(tmp / which)], env)
            conversions[which] = {**report, "process_seconds": wall, "cache_bytes": dir_bytes(tmp / which)}
        identical = same_tensors(tmp / "reference", tmp / "float32")

        os.environ["SUPERWEIGHT_CACHE"] = env["SUPERWEIGHT_CACHE"]
        cached = _gguf_dir(source, quiet=True)  # the cache entry `detect model.gguf` will hit
        refs = {"cached .gguf": str(source), "cached directory": str(cached)}
        hit_ms = 1000 * best_of(lambda: _gguf_dir(source, quiet=True), 50)  # the lookup alone
        load_s = {name: best_of(lambda ref=ref: load_model(ref, quiet=True), args.repeat) for name, ref in refs.items()}
        detect = {name: [] for name in refs}
        peaks = {}
        for _ in range(args.repeat):
            for name, ref in refs.items():
                wall, report = run(DETECT, ["detect", ref, "--threads", "1"], env)
                detect[name].append(wall)
                peaks[name] = report["peak_rss_mib"]

    ref = conversions["reference"]
    print(f"{source.name} ({gguf_bytes / 1e6:.0f} MB)")
    print(f"{'conversion':24s} {'seconds':>8s} {'peak RSS MiB':>13s} {'× reference':>12s} {'cache MB':>9s}")
    for which, c in conversions.items():
        print(f"{which:24s} {c['seconds']:8.1f} {c['peak_rss_mib']:13.0f} "
              f"{c['peak_rss_mib'] / ref['peak_rss_mib']:12.2f} {c['cache_bytes'] / 1e6:9.0f}")
    print(f"(imports alone: {ref['imports_rss_mib']:.0f} MiB); streaming float32 bit-identical to reference: {identical}")
    medians = {name: statistics.median(v) for name, v in detect.items()}
    for name, s in medians.items():
        print(f"detect on the {name:17s} {s:6.2f} s (median of {args.repeat}, whole process), "
              f"peak RSS {peaks[name]:.0f} MiB")
    ratio = medians["cached .gguf"] / medians["cached directory"]
    print(f"cached .gguf / cached directory: {ratio:.3f}")
    print(f"in process: cache-hit lookup of the .gguf {hit_ms:.2f} ms; load_model best of {args.repeat}: "
          + ", ".join(f"{name} {s:.2f} s" for name, s in load_s.items()))
    out = OUT.with_name("gguf-synthetic.json") if args.synthetic else OUT
    write_json(out, result_header("bench-gguf", gguf=str(source), gguf_bytes=gguf_bytes,
                                  conversions=conversions, streaming_equals_reference=identical,
                                  detect_seconds=detect, detect_median_seconds=medians,
                                  detect_peak_rss_mib=peaks, detect_gguf_over_directory=ratio,
                                  cache_hit_lookup_ms=hit_ms, load_model_seconds=load_s,
                                  timing="conversion: one run each in a fresh process; detect: whole "
                                         "process, median of --repeat, alternating"))


if __name__ == "__main__":
    main()
