"""Whole-process `superweight detect` against the paper authors' approach, on the same weights.

The baseline is the authors' detection as their `analyze.py` does it, written here (not copied):
load the model with `AutoModelForCausalLM.from_pretrained(DIR, dtype=float32)` and its tokenizer,
put a forward hook on every layer's MLP down projection that records the largest |input| and
|output|, run one forward pass of the prompt, and print the per-layer maxima and the layer with the
largest output. `superweight detect` does more with the same weights (the residual stream scanned
for massive activations, what makes each one, rounds until nothing new, the catalog, the tables);
the target is that it costs no more than the baseline, whole process, imports included.

Both run as fresh processes (`python -c` for the baseline, the `superweight` entry point for ours),
alternating, after one warm-up run of each (page cache, the weights-hash cache); the median and the
best of `--repeat` runs are reported, in wall time and in CPU time (user + system, from the OS: much
less sensitive than wall time to other jobs on a shared machine). Models: the default model (its cached safetensors copy, which
is what `superweight detect` loads) and a random Llama of `--params` parameters saved as
safetensors with a super weight planted, so detection has a real second round.

`--phases` times, in one process each, where the time goes: imports, loading, the forward passes.

Run: python benchmarks/bench_detect_baseline.py [--repeat 3] [--threads 1] [--params 0.5B] [--phases]
Writes benchmarks/results/detect_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "Apple Inc. is a worldwide tech company."

# The authors' approach, as one script (its own process: its imports count, as ours do).
BASELINE = r'''
import sys, time
t0 = time.perf_counter()
if sys.argv[4:] == ["hqq-hidden"]:  # the same as `superweight` does for itself (see below)
    import transformers.utils
    from transformers.utils import import_utils
    import_utils.is_hqq_available = transformers.utils.is_hqq_available = lambda *a, **k: False
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
t1 = time.perf_counter()
path, prompt, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(path)
model.eval()
t2 = time.perf_counter()
max_in, max_out = {}, {}
def hook(layer):
    def record(module, inputs, output):
        max_in[layer] = inputs[0].abs().max().item()
        max_out[layer] = output.abs().max().item()
    return record
handles = [m.mlp.down_proj.register_forward_hook(hook(i)) for i, m in enumerate(model.model.layers)]
with torch.no_grad():
    model(**tokenizer(prompt, return_tensors="pt"))
for h in handles:
    h.remove()
t3 = time.perf_counter()
for layer in sorted(max_out):
    print(f"layer {layer}: max |input| {max_in[layer]:.4g}, max |output| {max_out[layer]:.4g}")
top = max(max_out, key=max_out.get)
print(f"largest down_proj output: layer {top} ({max_out[top]:.4g})")
print(f"PHASES imports={t1 - t0:.3f} load={t2 - t1:.3f} forward={t3 - t2:.3f}", file=sys.stderr)
'''

# Ours, phase by phase, in one process (what the CLI does, with timers between the steps).
PHASES = r'''
import sys, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
from superweight.cli import build_parser
from superweight.model import load_model
from superweight.detect import run_detection
from superweight.report.detect_tables import detection_tables
build_parser()
t2 = time.perf_counter()
torch.set_num_threads(int(sys.argv[2]))
lm = load_model(sys.argv[1], quiet=True)
t3 = time.perf_counter()
run = run_detection(lm)
t4 = time.perf_counter()
detection_tables(lm.describe(), run)
t5 = time.perf_counter()
print(f"PHASES imports(torch,transformers)={t1 - t0:.3f} imports(superweight)={t2 - t1:.3f} load={t3 - t2:.3f} "
      f"detect({run.result.rounds} rounds)={t4 - t3:.3f} describe+tables={t5 - t4:.3f}", file=sys.stderr)
'''


def _env() -> dict:
    src = str(HERE.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds: user + system, stderr) of one fresh process."""
    start, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(argv, capture_output=True, text=True, env=_env())
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv[:4])}...\n{done.stderr[-2000:]}")
    return seconds, cpu, done.stderr


HIDDEN = "baseline, hqq hidden as superweight hides it"


def commands(ref: str, model_dir: Path, threads: int) -> dict[str, list[str]]:
    """Ours; the baseline as its authors would run it; the baseline with transformers told that hqq
    is absent, as `superweight` tells it for itself (`commands._common.without_transformers_hqq`):
    hqq, when installed, costs every process that imports transformers' models seconds of
    `torch.compile` at import, so this row shows how much of the difference that alone is."""
    ours = [sys.executable, "-m", "superweight.cli", "detect", ref, "--threads", str(threads)]
    baseline = [sys.executable, "-c", BASELINE, str(model_dir), PROMPT, str(threads)]
    return {"superweight detect": ours, "baseline (authors' approach)": baseline, HIDDEN: baseline + ["hqq-hidden"]}


def compare(ref: str, model_dir: Path, threads: int, repeat: int) -> dict:
    """Alternate the two whole-process runs; one warm-up each first."""
    cmds = commands(ref, model_dir, threads)
    for argv in cmds.values():
        _timed(argv)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, argv in cmds.items():
            wall, used, _ = _timed(argv)
            times[name].append(wall)
            cpu[name].append(used)
    ours, base = "superweight detect", "baseline (authors' approach)"
    med = lambda d, k: statistics.median(d[k])
    return {"ref": ref, "model_dir": str(model_dir), "threads": threads, "repeat": repeat,
            "seconds": times, "cpu_seconds": cpu,
            "median": {k: statistics.median(v) for k, v in times.items()},
            "best": {k: min(v) for k, v in times.items()},
            "median_cpu": {k: statistics.median(v) for k, v in cpu.items()},
            "ratio_median": med(times, ours) / med(times, base),
            "ratio_best": min(times[ours]) / min(times[base]),
            "ratio_median_cpu": med(cpu, ours) / med(cpu, base),
            "ratio_median_hqq_hidden": med(times, ours) / med(times, HIDDEN),
            "ratio_median_cpu_hqq_hidden": med(cpu, ours) / med(cpu, HIDDEN)}


def phases(ref: str, model_dir: Path, threads: int) -> dict:
    ours = _timed([sys.executable, "-c", PHASES, ref, str(threads)])[2]
    base = _timed(commands(ref, model_dir, threads)["baseline (authors' approach)"])[2]
    pick = lambda text: next(line for line in text.splitlines() if line.startswith("PHASES")).removeprefix("PHASES ")
    return {"superweight": pick(ours), "baseline": pick(base)}


def default_model_dir() -> Path:
    from superweight.model import load_model

    lm = load_model("smollm2-135m", quiet=True)
    return Path(lm.weight_files[0]).parent


def random_model(params: float, out: Path) -> Path:
    """A random Llama of about `params` parameters with a planted super weight, saved as safetensors
    with the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from superweight.testing import plant_super_weight

    hidden, inter = 1280, 3456
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    vocab = 49152
    layers = max(2, round((params - vocab * hidden) / per_layer))
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=2048,
                         tie_word_embeddings=True, torch_dtype="float32")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    plant_super_weight(model, 2, 7, 11)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(out)
    return out


def parse_params(text: str) -> float:
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}
    return float(text[:-1]) * scale[text[-1].upper()] if text[-1].upper() in scale else float(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--params", default="0.5B", help="size of the random model (e.g. 0.5B; 0 skips it)")
    p.add_argument("--phases", action="store_true", help="also time imports, load and detection apart")
    p.add_argument("--out", type=Path, default=HERE / "results" / "detect_baseline.json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp:
        models = [("smollm2-135m", default_model_dir())]
        if parse_params(args.params) > 0:
            d = random_model(parse_params(args.params), Path(tmp) / "random")
            models.append((str(d), d))
        for ref, model_dir in models:
            row = compare(ref, model_dir, args.threads, args.repeat)
            if args.phases:
                row["phases"] = phases(ref, model_dir, args.threads)
            rows.append(row)
            name = "default model" if ref == "smollm2-135m" else f"random Llama {args.params}"
            print(f"{name}: superweight detect {row['median']['superweight detect']:.2f} s vs baseline "
                  f"{row['median'][next(k for k in row['median'] if k.startswith('baseline'))]:.2f} s "
                  f"(median of {args.repeat}): {row['ratio_median']:.2f}x (best: {row['ratio_best']:.2f}x; "
                  f"CPU time, median: {row['ratio_median_cpu']:.2f}x); against the baseline with hqq hidden "
                  f"{row['ratio_median_hqq_hidden']:.2f}x wall, {row['ratio_median_cpu_hqq_hidden']:.2f}x CPU")
            for who, text in row.get("phases", {}).items():
                print(f"  {who}: {text}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from superweight._io import result_header, write_json

    write_json(args.out, {**result_header("bench-detect-baseline", config=vars(args) | {"out": str(args.out)}),
                          "prompt": PROMPT, "models": rows})
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
