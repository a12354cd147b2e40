"""The experiment a user wants to see: does fine-tuning move the super weights, and does guarding them
cost anything? Full, LoRA and SMT on the default model, each with and without the freeze guard.

For every run (a fresh subprocess that loads the model again, so each trains the original and has its
own peak RSS): the super weights' relative drift, the super activation on the probe prompt before
and after, perplexity on held-out Wikipedia text and on the PTB test split before and after (the
training text is PTB *train*), SMT's chosen blocks (module kind × layer), the step time and the
process's peak RSS. One more run, full fine-tuning without the guard and without weight decay,
separates what weight decay does from what the gradients do.

Run: python benchmarks/finetune_experiment.py [--steps 30] [--seqlen 128] [--batch 4] [--threads 1]
       [--eval-tokens 4096] [--markdown PATH] [--json PATH] [--plots DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _timing import peak_rss_mib

RUNS = [  # name, method, guard, learning rate, weight decay
    ("full", "full", "none", 1e-4, 0.1),
    ("full + freeze", "full", "freeze", 1e-4, 0.1),
    ("full, no decay", "full", "none", 1e-4, 0.0),
    ("lora", "lora", "none", 1e-3, 0.1),
    ("lora + freeze", "lora", "freeze", 1e-3, 0.1),
    ("smt", "smt", "none", 1e-4, 0.1),
    ("smt + freeze", "smt", "freeze", 1e-4, 0.1),
]


def evaluate(lm, args) -> dict:
    from superweight.evaluate import perplexity

    return {"wiki": perplexity(lm, "wiki", max_tokens=args.eval_tokens).ppl,
            "ptb": perplexity(lm, "ptb", max_tokens=args.eval_tokens).ppl}


def baseline(args) -> dict:
    from superweight.detect import find_super_weights
    from superweight.model import load_model

    lm = load_model(args.model, quiet=True)
    sws = find_super_weights(lm)
    return {"super_weights": [s.to_dict() for s in sws], "ppl": evaluate(lm, args), "model": lm.describe()}


def one_run(args, spec: tuple, sws: list) -> dict:
    from superweight.finetune import FinetuneConfig, LoRASettings, SMTConfig, finetune, training_documents
    from superweight.finetune.lora import lora_share
    from superweight.finetune.smt import super_weight_blocks
    from superweight.model import load_model
    from superweight.records import SuperWeight

    name, method, guard, lr, wd = spec
    docs = training_documents(args.corpus)
    lm = load_model(args.model, quiet=True)
    share = lora_share(lm, LoRASettings(r=args.rank))
    config = FinetuneConfig(method=method, guard=guard, steps=args.steps, lr=lr, weight_decay=wd,
                            batch_size=args.batch, seqlen=args.seqlen, guard_every=args.guard_every,
                            lora=LoRASettings(r=args.rank),
                            smt=SMTConfig(block=args.block, warmup_steps=args.warmup, budget=share))
    start = time.perf_counter()
    r = finetune(lm, config, docs, super_weights=[SuperWeight.from_dict(s) for s in sws])
    train_s = time.perf_counter() - start
    out = {"name": name, "result": r.to_dict(), "ppl_after": evaluate(lm, args), "seconds": train_s,
           "peak_rss_mb": peak_rss_mib()}
    if r.smt:
        held = super_weight_blocks(lm, r.smt.blocks, r.super_weights)
        out["smt_holds_super_weight"] = [b.to_dict() for b in held]
    return out


def subprocess_json(args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                               if k in ("steps", "seqlen", "batch", "threads", "eval_tokens",
                                                        "corpus", "rank", "block", "warmup", "guard_every",
                                                        "model")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(extra)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(x: float) -> str:
    return f"{x:.5g}" if abs(x) < 1e4 else f"{x:.4e}"


def markdown(args, base: dict, runs: list[dict]) -> str:
    sws = base["super_weights"]
    labels = [f"({s['layer']}, {s['row']}, {s['col']})" for s in sws]
    lines = [
        "# Fine-tuning and the super weights: smollm2-135m",
        "",
        f"`python benchmarks/finetune_experiment.py --steps {args.steps} --seqlen {args.seqlen} --batch {args.batch} "
        f"--threads {args.threads} --eval-tokens {args.eval_tokens}` ({args.corpus}, AdamW through the "
        f"transformers Trainer, constant learning rate, gradient clipping at 1.0; LoRA rank {args.rank} on every "
        f"decoder linear; SMT blocks of {args.block}, {args.warmup} warm-up batches, the same trainable budget "
        "as LoRA; every run a fresh process on the original model).",
        "",
        f"Super weights (detected): {', '.join(labels)}. Perplexity on the first {args.eval_tokens} tokens of the "
        f"held-out Wikipedia text and of the PTB test split; before: wiki {fmt(base['ppl']['wiki'])}, "
        f"PTB {fmt(base['ppl']['ptb'])}.",
        "",
        "Drift is the signed relative change (final − original) / |original| of each super weight in the saved "
        "model (LoRA: after the merge); the super activation is the layer-11 down projection output on channel "
        "507 at the first token of the probe prompt; the input spike is the down projection's input on the super "
        "weight's column (what gate/up and the earlier layers make). Weight decay alone would shrink a weight by "
        "1 − (1 − lr·wd)^steps of itself.",
        "",
        "| run | lr | wd | trainable | " + " | ".join(f"drift {l}" for l in labels)
        + f" | super act. before → after | input spike {labels[0]} before → after | wiki ppl after "
          "| PTB ppl after | loss first → last | s/step | peak RSS MB |",
        "|---|---:|---:|---:|" + "---:|" * len(labels) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = run["result"]
        cfg, train, drift = r["config"], r["train"], r["drift"]
        drifts = ["0 (bit-identical)" if w["bit_identical"] else f"{(w['final'] - w['original']) / abs(w['original']):+.2e}"
                  for w in drift["weights"]]
        act, check = drift["activations"][0], r["check"][0]
        losses = train["losses"]
        lines.append(f"| {run['name']} | {cfg['lr']:g} | {cfg['weight_decay']:g} | {train['trainable_params']:,} | "
                     + " | ".join(drifts)
                     + f" | {fmt(act['original'])} → {fmt(act['final'])} ({act['ratio']:.3f}×) | "
                       f"{fmt(check['input_original'])} → {fmt(check['input_other'])} | "
                       f"{fmt(run['ppl_after']['wiki'])} | {fmt(run['ppl_after']['ptb'])} | "
                       f"{losses[0]:.3f} → {losses[-1]:.3f} | {train['median_step_seconds']:.2f} | "
                       f"{run['peak_rss_mb']:.0f} |")
    lines += ["", "s/step: median wall time of a training step on a shared 2-core CPU (other jobs ran at the same "
              "time; compare within `benchmarks/bench_finetune.py` instead). Peak RSS: the whole process, "
              "including the evaluation (4 windows × 2,048 tokens of logits) and `check`'s second model."]
    smt = [run for run in runs if run["result"]["smt"]]
    if smt:
        lines += ["", "## Where SMT's blocks went (blocks per module kind × layer)", ""]
        for run in smt:
            p = run["result"]["smt"]["placement"]
            lines.append(f"**{run['name']}** — {len(run['result']['smt']['blocks'])} blocks, "
                         f"{run['result']['smt']['trainable_params']:,} parameters "
                         f"({run['result']['smt']['trainable_share']:.2%} of the decoder linears); per kind: "
                         + ", ".join(f"{k} {v}" for k, v in p["blocks_per_kind"].items())
                         + f"; blocks holding a super weight chosen: {len(run['smt_holds_super_weight'])}")
            lines.append("")
            used = [i for i, layer in enumerate(p["layers"]) if any(row[i] for row in p["blocks"])]
            lines.append("| kind | " + " | ".join(f"L{p['layers'][i]}" for i in used) + " |")
            lines.append("|---|" + "---:|" * len(used))
            for kind, row in zip(p["kinds"], p["blocks"]):
                lines.append(f"| {kind} | " + " | ".join(str(row[i]) if row[i] else "" for i in used) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def run_all(args) -> tuple[dict, list[dict]]:
    wanted = [s for s in RUNS if args.runs is None or s[0] in args.runs.split(",")]
    t0 = time.perf_counter()
    base = subprocess_json(args, "--worker=baseline")
    print(f"baseline: {base['ppl']}  super weights {[(s['layer'], s['row'], s['col']) for s in base['super_weights']]}"
          f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = []
    for spec in wanted:
        t = time.perf_counter()
        run = subprocess_json(args, f"--worker={spec[0]}", f"--super-weights={json.dumps(base['super_weights'])}")
        runs.append(run)
        drift = ", ".join(f"{x['rel_change']:.2e}" for x in run["result"]["drift"]["weights"])
        print(f"{spec[0]:16s} drift [{drift}]  wiki {run['ppl_after']['wiki']:.3f}"
              f"  ptb {run['ppl_after']['ptb']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return base, runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--corpus", default="ptb-train")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--guard-every", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", default=None, help="comma-separated run names (default: all)")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None,
                        help="render the markdown and plots of an earlier --json result (no runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--super-weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "baseline":
        print(json.dumps(baseline(args), default=str))
        return
    if args.worker:
        spec = next(s for s in RUNS if s[0] == args.worker)
        print(json.dumps(one_run(args, spec, json.loads(args.super_weights)), default=str))
        return
    from superweight._io import result_header, write_json

    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        base, runs = earlier["baseline"], earlier["runs"]
        for key, value in earlier["args"].items():  # the settings the runs were made with
            if key in ("steps", "seqlen", "batch", "threads", "eval_tokens", "rank", "block", "warmup"):
                setattr(args, key, int(value))
            elif key == "corpus":
                args.corpus = value
    else:
        base, runs = run_all(args)
    text = markdown(args, base, runs)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json and not args.from_json:
        write_json(args.json, {**result_header("finetune-experiment", model=base["model"]),
                               "args": {k: str(v) for k, v in vars(args).items()}, "baseline": base, "runs": runs})
    if args.plots:
        from superweight.report.finetune_plots import plot_drift, plot_smt_placement

        for run in runs:
            slug = run["name"].replace(" + ", "-").replace(", ", "-").replace(" ", "-")
            plot_drift(run["result"]["drift"], args.plots / f"drift-{slug}.png", f"super weights: {run['name']}")
            if run["result"]["smt"]:
                plot_smt_placement(run["result"]["smt"]["placement"], args.plots / f"smt-placement-{slug}.png",
                                   f"SMT blocks ({run['name']})")


if __name__ == "__main__":
    main()
