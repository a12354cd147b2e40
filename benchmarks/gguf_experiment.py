"""The paper's payoff made real: llama.cpp GGUF quantization with the super-weight circuit protected,
measured in llama.cpp against its own recipes — and against a control at the same size.

For each llama.cpp type (default Q4_0, Q4_K_M, Q3_K_M, Q2_K), on the default model:
stock · stock + imatrix · circuit-protected · circuit-protected + imatrix, and for each protected
variant its control (the same overrides on a layer without a super weight: same tensors' shapes, so
the same size). Every variant is one `superweight.quantize.gguf.quantize_to_gguf` call from one F32
GGUF written once and one importance matrix computed once (from c4*, so the wiki* evaluation text is
not the calibration text). Reported per file: size (MiB, bits per weight), perplexity and KL
divergence against the F32 file (both run by llama.cpp, llama-perplexity's scoring), the share of
positions with the same top token, and whether the super activation survived — read inside
llama.cpp with an evaluation callback on the detection prompt: the super weights' layer's down
projection output on the super activation's channel, and its input spike, against the F32 file's.
A size-matched pair closes the table: a protected smaller type against the stock larger one.

Run: python benchmarks/gguf_experiment.py [--types Q4_0,Q4_K_M,Q3_K_M,Q2_K] [--max-tokens 4096]
       [--imatrix-tokens 8192] [--threads 2] [--markdown PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _timing import peak_rss_mib

VARIANTS = [  # label, protect, control, imatrix
    ("stock", "none", False, False),
    ("stock + imatrix", "none", False, True),
    ("circuit", "circuit", False, False),
    ("circuit + imatrix", "circuit", False, True),
    ("control (circuit's overrides elsewhere)", "circuit", True, False),
    ("control + imatrix", "circuit", True, True),
]


def spikes_in_llamacpp(path: str, super_weights, prompt: str, threads: int) -> dict:
    """The super weights' layer seen inside llama.cpp on `prompt`: the down projection's output on
    each super weight's row and its input on each super weight's column, at the position where the
    output is largest (the super activation's token)."""
    import numpy as np

    from superweight.runtime.graph import GraphObserver
    from superweight.runtime.llamacpp import LlamaCppModel

    layers = {s.layer for s in super_weights}
    seen: dict = {}

    def on_tensor(base, layer, values):
        seen[(base, layer)] = values
        return None

    observer = GraphObserver(lambda base, layer: layer in layers and base in ("ffn_swiglu", "ffn_out"), on_tensor)
    with LlamaCppModel(path, n_ctx=128, n_threads=threads, eval_callback=observer.callback) as m:
        m.logits(m.tokenize(prompt))
    observer.check()
    out = {}
    for s in super_weights:
        y, x = seen[("ffn_out", s.layer)], seen[("ffn_swiglu", s.layer)]
        pos = int(np.abs(y[:, s.row]).argmax())
        out[s.label()] = {"activation": float(y[pos, s.row]), "input_spike": float(x[pos, s.col]), "token": pos}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--types", default="Q4_0,Q4_K_M,Q3_K_M,Q2_K")
    p.add_argument("--max-tokens", type=int, default=4096, help="wiki* tokens scored (windows of --seqlen)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--imatrix-tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pair", default="Q3_K_M:Q4_0", help="SMALL:LARGE for the size-matched pair")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import torch

    from superweight.detect import DEFAULT_PROMPT, find_super_weights
    from superweight.model import load_model
    from superweight.quantize.gguf import GGUFQuantConfig, importance_matrix, quantize_to_gguf, write_f32
    from superweight.runtime.scoring import kl_divergences, text_windows

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lm = load_model(args.model, quiet=True)
    sws = find_super_weights(lm)
    print(f"super weights: {', '.join(s.label() for s in sws)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-experiment-") as tmp:
        f32 = write_f32(lm, Path(tmp) / "f32.gguf").path
        base = spikes_in_llamacpp(f32, sws, DEFAULT_PROMPT, args.threads)
        print(f"F32 in llama.cpp: {base}", flush=True)
        im = importance_matrix(lm, GGUFQuantConfig(imatrix="c4", imatrix_tokens=args.imatrix_tokens))
        types = args.types.split(",")
        small, large = args.pair.split(":")
        plan = [(t, v) for t in types for v in VARIANTS] + [(t, VARIANTS[0]) for t in (large,) if t not in types] \
            + [(t, VARIANTS[2]) for t in (small,) if t not in types]
        stock: dict = {}  # (type, imatrix) -> the stock file's tensor types, which pin the other variants
        files = []
        for kind, (label, protect, control, with_im) in plan:  # every file first ...
            cfg = GGUFQuantConfig(kind, protect=protect, control=control, imatrix="c4" if with_im else None,
                                  imatrix_tokens=args.imatrix_tokens)
            t0 = time.perf_counter()
            out = Path(tmp) / f"{kind}-{len(files)}.gguf"
            run = quantize_to_gguf(lm, cfg, sws, out, f32=f32, imatrix=im if with_im else None,
                                   n_threads=args.threads, stock_types=stock.get((kind, with_im)))
            if protect == "none":
                stock[(kind, with_im)] = run.result.manifest["tensors"]
            files.append((kind, label, cfg, run, out, time.perf_counter() - t0))
            print(f"quantized {cfg.label()} ({time.perf_counter() - t0:.1f} s)", flush=True)
        windows = text_windows(lm, "wiki", seqlen=args.seqlen, max_tokens=args.max_tokens)
        t0 = time.perf_counter()  # ... then one pass over the windows, the F32 reference run once per window
        klds = kl_divergences([str(f[4]) for f in files], f32, windows, n_threads=args.threads)
        print(f"scored {len(files)} files on {windows.shape[0]} windows ({time.perf_counter() - t0:.0f} s)", flush=True)
        for (kind, label, cfg, run, out, seconds), kld in zip(files, klds):
            kld = kld.to_dict()
            spikes = spikes_in_llamacpp(str(out), sws, DEFAULT_PROMPT, args.threads)
            s = run.result.summary()
            row = {"type": kind, "variant": label, "config": cfg.label(), "mib": s["mib"],
                   "bits_per_weight": s["bits_per_weight"], "protected": s["protected"],
                   "tensor_types": s["tensor_types"], "ppl": kld["ppl"], "ppl_f32": kld["ppl_reference"],
                   "ppl_ratio": kld["ppl_ratio"], "kld_mean": kld["kld_mean"], "kld_stderr": kld["kld_stderr"],
                   "kld_p99": kld["kld_percentiles"].get("99"), "same_top": kld["same_top"],
                   "spikes": spikes, "survival": {k: v["activation"] / base[k]["activation"] for k, v in spikes.items()},
                   "quantize_seconds": round(seconds, 1)}
            rows.append(row)
            print(f"{kind:7s} {label:42s} {row['mib']:7.2f} MiB {row['bits_per_weight']:.3f} bpw  "
                  f"ppl {row['ppl']:.3f} (x{row['ppl_ratio']:.4f})  KLD {row['kld_mean']:.5f}  "
                  f"same top {row['same_top']:.3f}  SA {min(row['survival'].values()):.3f}", flush=True)
    result = {"model": lm.describe(), "super_weights": [s.to_dict() for s in sws], "f32_spikes": base,
              "settings": vars(args) | {"markdown": str(args.markdown), "json": str(args.json)}, "rows": rows,
              "seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak_rss_mib())}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    md = markdown(rows)
    print(md)
    if args.markdown:
        args.markdown.write_text(md)


def markdown(rows: list[dict]) -> str:
    head = ("| type | variant | MiB | bits/weight | wiki\\* ppl | × F32 | mean KLD | KLD p99 | same top | SA kept |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['type']} | {r['variant']} | {r['mib']:.2f} | {r['bits_per_weight']:.3f} | {r['ppl']:.3f} | "
                   f"{r['ppl_ratio']:.4f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | {100 * r['same_top']:.1f}% | "
                   f"{min(r['survival'].values()):.3f} |\n" for r in rows)
    return head + body


if __name__ == "__main__":
    main()
