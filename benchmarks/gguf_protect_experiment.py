"""Does keeping the super weight's tensors at a higher type help llama.cpp's quantization? A first,
small version on the default model, every protected variant next to its control.

For each llama.cpp type: the stock recipe; `weight` (the super weights' `ffn_down` at --protect-type);
`circuit` (also that layer's `ffn_gate` / `ffn_up`); and for each of the two its control — the same
overrides on a layer without a super weight whose stock types are the same (so the same size). Every
variant pins all other tensors at the stock file's types (llama.cpp would otherwise shift its mix, see
`superweight.runtime.quantize`). Source: the packaged Q4_1 file, requantized (allow_requantize), so
the reference for KL divergence is that Q4_1 file in llama.cpp. Windows: wiki, our tokenizer, our
windowing, second half of each window scored as llama-perplexity scores.

Run: python benchmarks/gguf_protect_experiment.py [--types Q4_K_M Q2_K] [--windows 8] [--seqlen 256]
Prints a markdown table and writes benchmarks/results/gguf_protect.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from superweight._io import result_header, write_json
from superweight.model import load_model
from superweight.model.load import alias_gguf
from superweight.records import SuperWeight
from superweight.runtime.protect import control_overrides, protect_overrides
from superweight.runtime.quantize import gguf_tensors, quantize_gguf
from superweight.runtime.scoring import SCORING, kl_divergences, paired_difference, text_windows

OUT = Path(__file__).parent / "results" / "gguf_protect.json"
SUPER_WEIGHTS = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]  # smollm2-135m, verified
N_LAYERS = 30


def variants(src: Path, ftype: str, folder: Path, protect_type: str, threads: int) -> list[dict]:
    tensors = gguf_tensors(src)
    stock = quantize_gguf(src, folder / f"{ftype}-stock.gguf", ftype, nthread=threads, allow_requantize=True)
    out = [dict(stock, variant="stock")]
    for protect in ("weight", "circuit"):
        plans = {protect: protect_overrides(SUPER_WEIGHTS, protect, protect_type=protect_type, names=list(tensors)),
                 f"control-{protect}": control_overrides(SUPER_WEIGHTS, protect, n_layers=N_LAYERS,
                                                         protect_type=protect_type, tensors=tensors,
                                                         stock_types=stock["tensors"])}
        for name, overrides in plans.items():
            r = quantize_gguf(src, folder / f"{ftype}-{name}.gguf", ftype, overrides=overrides,
                              nthread=threads, allow_requantize=True, pin_types=stock["tensors"],
                              pinned_from=f"{ftype}-stock.gguf", metadata={"protect": name})
            out.append(dict(r, variant=name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q2_K"])
    ap.add_argument("--protect-type", default="Q8_0")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    src = alias_gguf("smollm2-135m")
    lm = load_model("smollm2-135m", quiet=True)
    windows = text_windows(lm, "wiki", seqlen=args.seqlen, max_tokens=args.windows * args.seqlen)
    del lm
    rows = []
    with tempfile.TemporaryDirectory(dir=OUT.parent.parent) as tmp:
        made = [v for t in args.types for v in variants(src, t, Path(tmp), args.protect_type, args.threads)]
        scores = kl_divergences([m["path"] for m in made], src, windows, n_threads=args.threads,
                                per_token=True)
    by = {(m["ftype"], m["variant"]): s for m, s in zip(made, scores)}
    for m, s in zip(made, scores):
        t, v = m["ftype"], m["variant"]
        paired = {}
        if v in ("weight", "circuit"):  # a gain counts only where it beats its control
            paired = {"vs_control": paired_difference(s, by[(t, f"control-{v}")]),
                      "vs_stock": paired_difference(s, by[(t, "stock")])}
        rows.append({"type": t, "variant": v, "overridden": m["overridden"],
                     "pin_fallbacks": m["pin_fallbacks"], "fallbacks": m["fallbacks"],
                     "size_bytes": m["size_bytes"], "bits_per_weight": m["bits_per_weight"],
                     "note": m.get("note"), **paired, **{k: x for k, x in s.to_dict().items() if k != "extra"}})
    write_json(OUT, result_header("gguf-protect-experiment", model=str(src), super_weights=[
        sw.coord for sw in SUPER_WEIGHTS], protect_type=args.protect_type, windows=int(windows.shape[0]),
        seqlen=args.seqlen, text="wiki", scoring=SCORING, rows=rows))
    print(f"reference: {src.name} in llama.cpp, ppl {scores[0].ppl_reference:.3f}; "
          f"{windows.shape[0]} windows x {args.seqlen} tokens of wiki, {scores[0].tokens} scored tokens\n")
    print("| type | variant | kept at " + args.protect_type + " | size (bytes) | bpw | ppl | KLD mean ± se "
          "| KLD 99% | same top |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kept = ", ".join(n.replace(".weight", "") for n in r["overridden"]) or "—"
        print(f"| {r['type']} | {r['variant']} | {kept} | {r['size_bytes']:,} | {r['bits_per_weight']:.3f} "
              f"| {r['ppl']:.3f} | {r['kld_mean']:.4f} ± {r['kld_stderr']:.4f} | {r['kld_percentiles']['99']:.4f} "
              f"| {100 * r['same_top']:.1f}% |")
    print("\npaired over the same tokens (per-token KLD difference, mean ± standard error; negative: "
          "closer to the reference)\n")
    print("| type | variant | ΔKLD vs its control | ΔKLD vs stock | Δ same top vs control |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        if "vs_control" in r:
            c, k = r["vs_control"], r["vs_stock"]
            print(f"| {r['type']} | {r['variant']} | {c['kld_diff']:+.4f} ± {c['kld_diff_stderr']:.4f} "
                  f"| {k['kld_diff']:+.4f} ± {k['kld_diff_stderr']:.4f} "
                  f"| {100 * c['same_top_diff']:+.1f} ± {100 * c['same_top_diff_stderr']:.1f} pp |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
