"""The expert profile on a ≥1B-parameter mixture of experts: its cost against one plain forward pass,
and its peak memory under a budget of a third of the model.

A random Qwen3-MoE of about `--params` parameters (hidden 1024, 32 experts of 512 features, 4 routed
per token, vocab 32000, bfloat16) is built once from a `transformers` config, a super expert is
planted in it (expert 5 of layer 2, routed for the first token, W[7, 11] = 50: every case must find
it), and it is saved into `--cache` as safetensors. Then, each case in a fresh Python process:

- `time`: the whole model in RAM; the best of `--repeat` plain forward passes over `--tokens`
  tokens, and the best of `--repeat` expert profiles (`profile_experts`) over the same tokens; the
  ratio is the profile's cost (the acceptance asks ≤ 1.3×). The rule runs on the profile and must
  name the planted expert.
- `budget`: the run may hold a third of the model: loaded under `--max-memory` = that third less
  one layer (accelerate brings one offloaded layer in for its forward) and a 64 MiB margin for
  activations; the other layers stay on disk; `super_experts` (profile, rule, explanation) runs once;
  the process's peak resident set size after its imports (the peak is reset once everything is
  imported: /proc/self/clear_refs), less that of `baseline` (a process that loads the config and
  tokenizer but no weight), is compared with the budget — both as the kernel's figure (VmHWM, which
  counts the model file's pages that the offload loader maps: page cache the kernel may drop) and
  as anonymous memory alone (RssAnon, sampled every 5 ms): the memory the weights and activations
  really hold.

Run: python benchmarks/bench_moe.py [--params 1.1B] [--tokens 64] [--repeat 3] [--cache DIR].
Writes benchmarks/results/moe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB, HIDDEN, EXPERTS, MOE_INTER, TOP_K = 32000, 1024, 32, 512, 4
PLANT = (2, 7, 11, 5)  # layer, row, col, expert
ACTIVATIONS = 64 * 2**20  # margin kept out of --max-memory for activations and the profile's rows


def parse_count(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def moe_config(params: int):
    from transformers import Qwen3MoeConfig

    heads, head_dim = 16, 64
    per_layer = EXPERTS * 3 * HIDDEN * MOE_INTER + 2 * HIDDEN * heads * head_dim + 2 * HIDDEN * 4 * head_dim \
        + EXPERTS * HIDDEN
    layers = max(4, round((params - 2 * VOCAB * HIDDEN) / per_layer))
    return Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2816, moe_intermediate_size=MOE_INTER,
                          num_experts=EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=True,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=4,
                          head_dim=head_dim, max_position_embeddings=2048, tie_word_embeddings=False,
                          bos_token_id=256, eos_token_id=257, pad_token_id=258)


def build(params: int, cache: Path) -> tuple[Path, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from superweight.testing import plant_super_expert, save_model

    config = moe_config(params)
    name = f"qwen3moe-h{HIDDEN}-e{EXPERTS}-l{config.num_hidden_layers}"
    folder, facts_file = cache / name, cache / f"{name}.json"
    if not facts_file.is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        layer, row, col, expert = PLANT
        plant_super_expert(model, layer, row, col, expert=expert, sink=False)  # planted in float32 ...
        model = model.to(torch.bfloat16)  # ... saved in bfloat16
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
        save_model(model, tmp)
        os.replace(tmp, folder)
        n = sum(p.numel() for p in model.parameters())
        facts = {"params": n, "layers": config.num_hidden_layers, "experts": EXPERTS, "top_k": TOP_K,
                 "hidden": HIDDEN, "moe_intermediate": MOE_INTER, "dtype": "bfloat16",
                 "bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors"))}
        facts_file.write_text(json.dumps(facts))
    return folder, json.loads(facts_file.read_text())


CASE = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
case, folder, tokens, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[6])
from _timing import best_of
from superweight.model import load_model
from superweight.moe import profile_experts, rule, super_experts, SuperExpertConfig
text = ("Apple Inc. is a worldwide tech company. " * 64)[:tokens - 1]  # byte tokenizer: one token a byte, after <s>
def status(key):  # kB figures of /proc/self/status, in MiB
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): imports are not the case's cost
    f.write("5")
out = {"start_rss_mib": status("VmRSS"), "start_anon_mib": status("RssAnon")}
import threading
peak_anon = [0.0]
def sample():  # the kernel keeps no peak of anonymous memory alone: sample it every 5 ms
    while True:
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
if case == "baseline":
    from transformers import AutoConfig, AutoTokenizer
    AutoConfig.from_pretrained(folder); AutoTokenizer.from_pretrained(folder)
elif case == "time":
    lm = load_model(folder, dtype="auto", quiet=True)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    out["tokens"] = int(ids.shape[1])
    out["experts_implementation"] = lm.model.config._experts_implementation
    def plain():
        with torch.no_grad():
            lm.model(input_ids=ids)
    plain()  # warm-up
    out["forward_s"] = best_of(plain, repeat)
    profile = profile_experts(lm, text)
    out["profile_s"] = best_of(lambda: profile_experts(lm, text), repeat)
    early, late, th = rule(profile, SuperExpertConfig())
    out["found"] = [[s.layer, s.expert, s.channel, s.position] for s in early]
else:  # budget
    lm = load_model(folder, dtype="auto", quiet=True, max_memory=int(sys.argv[7]))
    mem = lm.describe()["memory"]
    out["offloaded"] = mem["offloaded"]
    out["device_map"] = mem["device_map"]["layers"]
    t = time.perf_counter()
    r = super_experts(lm, text)
    out["super_experts_s"] = time.perf_counter() - t
    out["found"] = [[s.layer, s.expert, s.channel, s.position, [w.coord for w in s.weights]] for s in r.super_experts]
out["peak_rss_mib"] = status("VmHWM")  # the peak since the reset (file-backed pages included)
out["peak_above_start_mib"] = out["peak_rss_mib"] - out["start_rss_mib"]
out["end_file_mib"] = status("RssFile")  # mapped model file pages (page cache the kernel can drop)
out["peak_anon_mib"] = max(peak_anon[0], status("RssAnon"))
out["peak_anon_above_start_mib"] = out["peak_anon_mib"] - out["start_anon_mib"]
print(json.dumps(out))
"""


def run_case(case: str, folder: Path, args, budget: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", CASE, case, str(folder), str(args.tokens), str(args.repeat), str(args.threads),
           str(HERE), str(budget)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="1.1B")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "superweight" / "bench-moe")
    p.add_argument("--out", type=Path, default=HERE / "results" / "moe.json")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    folder, facts = build(parse_count(args.params), args.cache)
    budget = facts["bytes"] // 3  # what the whole run may hold: a third of the model
    # what the resident weights may take: the budget less the one offloaded layer accelerate brings in
    # for its forward and a margin for activations and the profile's rows
    layer_bytes = (facts["bytes"] - 2 * 2 * VOCAB * HIDDEN) // facts["layers"]
    resident = budget - layer_bytes - ACTIVATIONS
    results = {"model": facts, "tokens": args.tokens, "repeat": args.repeat, "threads": args.threads,
               "budget_bytes": budget, "max_memory_bytes": resident, "layer_bytes": layer_bytes}
    results["baseline"] = run_case("baseline", folder, args)
    results["time"] = run_case("time", folder, args)
    results["budget"] = run_case("budget", folder, args, resident)
    t, b = results["time"], results["budget"]
    results["profile_over_forward"] = t["profile_s"] / t["forward_s"]
    results["budget_peak_above_baseline_mib"] = b["peak_above_start_mib"] - results["baseline"]["peak_above_start_mib"]
    results["budget_anon_above_baseline_mib"] = (b["peak_anon_above_start_mib"]
                                                 - results["baseline"]["peak_anon_above_start_mib"])
    results["budget_mib"] = budget / 2**20
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{facts['params'] / 1e9:.2f}B parameters ({facts['layers']} layers x {EXPERTS} experts, top-{TOP_K}, "
          f"{facts['bytes'] / 2**30:.2f} GiB bfloat16), {t['tokens']} tokens, {args.threads} thread(s)")
    print(f"plain forward {t['forward_s']:.3f} s ({t['experts_implementation']}), expert profile "
          f"{t['profile_s']:.3f} s: {results['profile_over_forward']:.2f}x; rule found {t['found']}")
    print(f"under a budget of {budget / 2**20:.0f} MiB (a third; --max-memory {resident / 2**20:.0f} MiB for the "
          f"resident weights = the budget less one layer, {layer_bytes / 2**20:.0f} MiB, and "
          f"{ACTIVATIONS // 2**20} MiB for activations): peak RSS {b['peak_rss_mib']:.0f} MiB, "
          f"{b['peak_above_start_mib']:.0f} MiB above the process's RSS after its imports "
          f"({results['budget_peak_above_baseline_mib']:.0f} MiB above the baseline's config + tokenizer load), "
          f"of which {b['end_file_mib']:.0f} MiB are mapped pages of the model's file at the end; anonymous "
          f"memory peaked {results['budget_anon_above_baseline_mib']:.0f} MiB above the baseline's; "
          f"super_experts {b['super_experts_s']:.1f} s; found {b['found']}")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
