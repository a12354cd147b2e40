"""Peak memory and wall time of `superweight detect`: a full load against a memory budget (and GGUF).

A random Llama model of about `--params` parameters (hidden 2048 from 0.8B up, so ≥1B means hidden
2048 and 16-22 layers; vocab 32000) is built once from a `transformers` config, a super weight is
planted in it (so every case must find the same coordinate), and it is saved into `--cache` as
safetensors and, when the GGUF writer is available, as a GGUF file. Each case then runs the real
command line in a fresh Python process, and reports that process's peak resident set size (the OS's
figure, `ru_maxrss`) and its wall time, imports included:

- `full`: `detect DIR` (the whole model in RAM),
- `budget`: `detect DIR --max-memory BUDGET` (default 1GiB; layers beyond it stay on disk),
- `gguf-first` / `gguf-cached`: `detect FILE.gguf` with an empty converted-weights cache, then again,
- `convert` / `convert-reference`: the GGUF conversion alone, streaming and the previous whole-model
  one (when `superweight.model.gguf` offers them).

`baseline` is what every case pays before any weight (imports, config, the memory plan, the
tokenizer). Ratios are within this run: budget / full (also above the baseline), cached GGUF /
safetensors directory, streaming / reference conversion. Run: python benchmarks/bench_memory.py [--params 1.2B] [--budget 1GiB]
[--repeat 3] [--cache DIR]. Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB = 32000
PLANT = (1, 7, 11)  # (layer, row, col) of the planted super weight


def parse_count(text: str) -> int:
    """'1.2B' → 1_200_000_000, '200M' → 200_000_000."""
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def llama_config(params: int):
    """A Llama config of about `params` parameters (untied embeddings, vocab 32000)."""
    from transformers import LlamaConfig

    hidden = 2048 if params >= 8 * 10**8 else 1024 if params >= 15 * 10**7 else 512
    inter = int(8 * hidden / 3 + 255) // 256 * 256
    heads = hidden // 64
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(2, round((params - 2 * VOCAB * hidden) / per_layer))
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                       tie_word_embeddings=False, bos_token_id=256, eos_token_id=257, pad_token_id=258)


def build(params: int, cache: Path, gguf: bool) -> tuple[Path, Path | None, dict]:
    """The model directory (and GGUF file), built once per size; returns them and their facts."""
    import torch
    from transformers import AutoModelForCausalLM

    from superweight.testing import plant_super_weight, tiny_tokenizer

    config = llama_config(params)
    name = f"llama-h{config.hidden_size}-l{config.num_hidden_layers}"
    folder, gguf_file = cache / name, cache / f"{name}.gguf"
    facts_file = cache / f"{name}.json"
    if not facts_file.is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        plant_super_weight(model, *PLANT)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
        model.save_pretrained(tmp)
        tiny_tokenizer().save_pretrained(tmp)
        os.replace(tmp, folder)
        n = sum(p.numel() for p in model.parameters())
        facts_file.write_text(json.dumps({"params": n, "layers": config.num_hidden_layers,
                                          "hidden": config.hidden_size, "intermediate": config.intermediate_size}))
        if gguf:
            write_gguf(model, gguf_file)
        del model
    elif gguf and not gguf_file.is_file():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        write_gguf(model, gguf_file)
        del model
    facts = json.loads(facts_file.read_text())
    facts["safetensors_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if gguf and gguf_file.is_file():
        facts["gguf_bytes"] = gguf_file.stat().st_size
    return folder, gguf_file if gguf and gguf_file.is_file() else None, facts


# --- GGUF hook ------------------------------------------------------------------------------------
# The GGUF half comes from the streaming-conversion work (branch `gguf`): the writer
# `superweight.testing_gguf.write_gguf(model, path, qtype=...)`, the converters
# `superweight.model.gguf.convert_gguf(path, out)` and `convert_gguf_reference(path, out)`.
# In a checkout without them the GGUF cases are skipped with a note.

def gguf_writer():
    from superweight.testing_gguf import write_gguf as writer

    return writer


def has_gguf_writer() -> bool:
    """Whether this checkout has the GGUF writer (found without importing it: no torch here)."""
    import importlib.util

    return importlib.util.find_spec("superweight.testing_gguf") is not None


def write_gguf(model, path: Path, qtype: str = "Q8_0") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    gguf_writer()(model, tmp, qtype=qtype)
    os.replace(tmp, path)


def gguf_function(name: str) -> str | None:
    """`name` if `superweight.model.gguf` defines it in this checkout (read, not imported): the
    streaming `convert_gguf(path, out)` and the previous whole-model `convert_gguf_reference(path, out)`."""
    import importlib.util

    spec = importlib.util.find_spec("superweight.model.gguf")
    if spec is None or spec.origin is None:
        return None
    return name if f"def {name}(" in Path(spec.origin).read_text() else None


def build_in_child(params: int, cache: Path, gguf: bool) -> tuple[Path, Path | None, dict]:
    """`build` in its own process: Linux carries a parent's peak RSS into the children it starts
    (through fork and exec), so this process must never hold a model (or even import torch)."""
    out = cache / ".build.json"
    done = subprocess.run([sys.executable, __file__, "--build", str(out), "--params", str(params),
                           "--cache", str(cache), *([] if gguf else ["--no-gguf"])])
    if done.returncode != 0:
        raise SystemExit("building the model failed")
    folder, gguf_file, facts = json.loads(out.read_text())
    return Path(folder), Path(gguf_file) if gguf_file else None, facts


# --- one measured process -------------------------------------------------------------------------

def child(out: Path, argv: list[str]) -> None:
    """Run inside the fresh process: the CLI (or a conversion, or the baseline), then record ru_maxrss."""
    start = time.perf_counter()
    code = 0
    try:
        if argv[0] == "--baseline":  # what every case pays before any weight: imports, config, plan
            import torch
            from transformers import AutoConfig, AutoTokenizer

            from superweight.model.budget import plan_memory

            plan_memory(AutoConfig.from_pretrained(argv[1]), torch.float32, "cpu", "1GiB")
            AutoTokenizer.from_pretrained(argv[1])
        elif argv[0] == "--gguf-function":  # one conversion alone, into a fresh folder
            from superweight.model import gguf

            getattr(gguf, argv[1])(Path(argv[2]), Path(argv[3]))
        else:
            from superweight.cli import main

            code = main(argv)
    finally:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        out.write_text(json.dumps({"code": code, "peak_rss": rss, "main_s": time.perf_counter() - start}))


def measure(argv: list[str], env: dict, work: Path) -> dict:
    out = work / "child.json"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(out), "--", *argv], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"case failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def run_case(name: str, argv: list[str], env: dict, work: Path, repeat: int, fresh_cache: bool = False) -> dict:
    runs = []
    for _ in range(repeat):
        if fresh_cache:
            shutil.rmtree(env["SUPERWEIGHT_CACHE"], ignore_errors=True)
            os.makedirs(env["SUPERWEIGHT_CACHE"])
        runs.append(measure(argv, env, work))
    row = {"case": name, "argv": argv, "peak_rss_mib": round(max(r["peak_rss"] for r in runs) / 2**20, 1),
           "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
           "wall_all_s": [round(r["wall_s"], 2) for r in runs]}
    json_out = next((argv[i + 1] for i, a in enumerate(argv) if a == "--json"), None)
    if json_out and Path(json_out).is_file():
        payload = json.loads(Path(json_out).read_text())
        row["super_weights"] = [[s["layer"], s["row"], s["col"]] for s in payload["super_weights"]]
        row["memory"] = {k: payload["model"]["memory"][k] for k in ("budget", "offloaded", "device_map")}
    print(f"{name:18s} peak RSS {row['peak_rss_mib']:8.1f} MiB   wall {row['wall_s']:6.2f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="1.2B", help="model size to build (default 1.2B; e.g. 200M)")
    parser.add_argument("--budget", default="1GiB", help="--max-memory for the budget case (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median wall, max RSS)")
    parser.add_argument("--cache", type=Path, help="where the built models are kept (default: the tool's "
                                                   "cache, bench/)")
    parser.add_argument("--no-gguf", action="store_true", help="skip the GGUF cases")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.rest)
    if args.build:
        folder, gguf_file, facts = build(parse_count(args.params), args.cache, not args.no_gguf)
        args.build.write_text(json.dumps([str(folder), str(gguf_file) if gguf_file else None, facts]))
        return None

    from superweight._io import cache_dir, result_header, write_json

    cache = args.cache or cache_dir("bench")
    cache.mkdir(parents=True, exist_ok=True)
    gguf = not args.no_gguf and has_gguf_writer()
    if not args.no_gguf and not gguf:
        print("note: no GGUF writer (superweight.testing_gguf) in this checkout; GGUF cases skipped")
    folder, gguf_file, facts = build_in_child(parse_count(args.params), cache, gguf)
    print(f"model: {facts['params'] / 1e9:.3f} B parameters, {facts['layers']} layers, hidden "
          f"{facts['hidden']}; safetensors {facts['safetensors_bytes'] / 2**30:.2f} GiB", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    env = {**os.environ, "SUPERWEIGHT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": os.pathsep.join(sys.path)}
    os.makedirs(env["SUPERWEIGHT_CACHE"])
    try:
        common = ["--threads", args.threads]
        # untimed warm-up: the weights hash (cached) and the page cache, the same for every case
        measure(["detect", str(folder), *common, "--json", str(work / "warm.json")], env, work)
        rows = [run_case("baseline", ["--baseline", str(folder)], env, work, args.repeat),
                run_case("full", ["detect", str(folder), *common, "--json", str(work / "full.json")],
                         env, work, args.repeat),
                run_case("budget", ["detect", str(folder), *common, "--max-memory", args.budget,
                                    "--json", str(work / "budget.json")], env, work, args.repeat)]
        if gguf_file is not None:
            gguf_cmd = ["detect", str(gguf_file), *common, "--json", str(work / "gguf.json")]
            rows.append(run_case("gguf-first", gguf_cmd, env, work, args.repeat, fresh_cache=True))
            rows.append(run_case("gguf-cached", gguf_cmd, env, work, args.repeat))
            for case, fn in (("convert", "convert_gguf"), ("convert-reference", "convert_gguf_reference")):
                if gguf_function(fn):
                    rows.append(run_case(case, ["--gguf-function", fn, str(gguf_file), str(work / case)],
                                         env, work, 1))
                    shutil.rmtree(work / case, ignore_errors=True)
        by = {r["case"]: r for r in rows}
        ratios = {"budget_over_full_rss": by["budget"]["peak_rss_mib"] / by["full"]["peak_rss_mib"],
                  "budget_over_full_wall": by["budget"]["wall_s"] / by["full"]["wall_s"]}
        if "gguf-cached" in by:
            ratios["gguf_cached_over_dir_wall"] = by["gguf-cached"]["wall_s"] / by["full"]["wall_s"]
        if "convert" in by and "convert-reference" in by:
            ratios["convert_over_reference_rss"] = (by["convert"]["peak_rss_mib"]
                                                    / by["convert-reference"]["peak_rss_mib"])
            ratios["convert_over_reference_wall"] = by["convert"]["wall_s"] / by["convert-reference"]["wall_s"]
        base = by["baseline"]["peak_rss_mib"]
        ratios["budget_over_full_rss_above_baseline"] = ((by["budget"]["peak_rss_mib"] - base)
                                                         / (by["full"]["peak_rss_mib"] - base))
        ratios = {k: round(v, 3) for k, v in ratios.items()}
        same = len({json.dumps(r.get("super_weights")) for r in rows if "super_weights" in r}) == 1
        print("ratios: " + ", ".join(f"{k} {v}" for k, v in ratios.items())
              + f"; same super weights in every case: {same}")
        write_json(HERE / "results" / "memory.json",
                   {**result_header("bench-memory"), "model": facts, "budget": args.budget,
                    "threads": args.threads, "repeat": args.repeat, "cpu_count": os.cpu_count(),
                    "rows": rows, "ratios": ratios, "same_super_weights": same})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
