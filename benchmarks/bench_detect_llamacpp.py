"""`superweight detect` on a GGUF: the llama.cpp engine (mmap'd, no conversion) against the PyTorch
engine's conversion path (first run: convert into the cache, then detect; cached run: detect only).

Each run is the CLI as a user runs it, in a fresh process under `/usr/bin/time -f "%e %M"`: wall
seconds and the peak resident set size (the kernel's `ru_maxrss` of that process: anonymous memory
*and* the pages of the memory-mapped GGUF it touched — llama.cpp maps the file, so its pages count
once they are read). The imports alone (Python, torch, transformers, llama-cpp-python: what every
run pays before a byte of the model is read) are measured the same way and reported. Disk is what
each run leaves in a private SUPERWEIGHT_CACHE (the converted copy; the llama.cpp engine writes
only the file-hash index). All runs use `--threads 1` and a warm page cache (the file was just
written or read), one after another, on the same machine.

Run:
  python benchmarks/bench_detect_llamacpp.py                 # the default model's Q4_1 GGUF
  python benchmarks/bench_detect_llamacpp.py --synthetic-1b  # a random 1.06B Llama as Q8_0 (built once in /tmp)
Prints a table and writes benchmarks/results/detect_llamacpp[-1b].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
QUIET = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
SYNTHETIC = Path(tempfile.gettempdir()) / "superweight-bench" / "llama-1b-q8_0.gguf"

BUILD = """
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from superweight.testing import plant_super_weight
from superweight.testing_gguf import write_gguf
# TinyLlama-1.1B's shape with 24 layers and the tiny byte vocabulary (llama.cpp's vocab = the file's)
config = AutoConfig.for_model("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                              num_attention_heads=32, num_key_value_heads=4, vocab_size=259,
                              tie_word_embeddings=False, bos_token_id=256, eos_token_id=257, pad_token_id=258)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
print(sum(p.numel() for p in model.parameters()), "parameters", file=sys.stderr)
plant_super_weight(model, 3, 100, 200)
write_gguf(model, sys.argv[1], qtype="Q8_0")
"""

IMPORTS = ("import torch, transformers, llama_cpp, superweight.detect, superweight.runtime.detect; "
           "superweight.runtime.detect.LlamaCppEngine")


def timed(argv: list[str], env: dict) -> dict:
    """Wall seconds and peak RSS (MiB) of one process, with its exit status."""
    proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *argv], env=env, capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("TIME ")][-1].split()
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return {"seconds": float(line[1]), "peak_rss_mib": int(line[2]) / 1024, "rc": proc.returncode}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="a GGUF file (default: the built-in model's)")
    ap.add_argument("--synthetic-1b", action="store_true", help="build and use a random 1.06B Llama, Q8_0")
    args = ap.parse_args()
    env = {**os.environ, **QUIET, "PYTHONPATH": SRC}
    py = sys.executable
    if args.synthetic_1b:
        path = SYNTHETIC
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([py, "-c", BUILD, str(path)], env=env, check=True)
    elif args.gguf:
        path = Path(args.gguf)
    else:
        sys.path.insert(0, SRC)
        from superweight.model.load import alias_gguf

        path = alias_gguf("smollm2-135m")
    size = path.stat().st_size
    cli = [py, "-m", "superweight.cli", "detect", str(path), "--threads", "1"]
    rows = {"imports only": timed([py, "-c", IMPORTS], env)}
    with tempfile.TemporaryDirectory() as cache:
        run_env = {**env, "SUPERWEIGHT_CACHE": cache}
        rows["llama.cpp engine"] = timed([*cli, "--engine", "llama.cpp", "--json", f"{cache}/l.json"], run_env)
        rows["llama.cpp engine"]["disk_bytes"] = du(Path(cache) / "models") if (Path(cache) / "models").exists() else 0
        rows["torch, first run (convert)"] = timed([*cli, "--engine", "torch", "--json", f"{cache}/t1.json"], run_env)
        rows["torch, first run (convert)"]["disk_bytes"] = du(Path(cache) / "models")
        rows["torch, cached run"] = timed([*cli, "--engine", "torch", "--json", f"{cache}/t2.json"], run_env)
        rows["torch, cached run"]["disk_bytes"] = du(Path(cache) / "models")
        found = {k: [[s["layer"], s["row"], s["col"]] for s in
                     json.loads(Path(f"{cache}/{f}.json").read_text())["super_weights"] if not s["late"]]
                 for k, f in (("llama.cpp", "l"), ("torch", "t2"))}
        shutil.rmtree(cache, ignore_errors=True)
    first = rows["torch, first run (convert)"]["seconds"]
    out = {"gguf": str(path), "file_bytes": size, "runs": rows, "early_super_weights": found,
           "llamacpp_over_first_run": rows["llama.cpp engine"]["seconds"] / first,
           "llamacpp_rss_over_file": rows["llama.cpp engine"]["peak_rss_mib"] * 2**20 / size,
           "llamacpp_rss_minus_imports_over_file":
               (rows["llama.cpp engine"]["peak_rss_mib"] - rows["imports only"]["peak_rss_mib"]) * 2**20 / size}
    print(f"{path.name}: {size / 2**20:.0f} MiB")
    print(f"{'run':<30}{'wall s':>9}{'peak RSS MiB':>14}{'cache MiB':>11}")
    for name, r in rows.items():
        disk = f"{r['disk_bytes'] / 2**20:.0f}" if "disk_bytes" in r else "-"
        print(f"{name:<30}{r['seconds']:>9.1f}{r['peak_rss_mib']:>14.0f}{disk:>11}")
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs",)}, indent=1))
    target = ROOT / "benchmarks" / "results" / f"detect_llamacpp{'-1b' if args.synthetic_1b else ''}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
