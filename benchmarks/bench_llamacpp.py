"""llama.cpp bridge overhead on the default model: `quantize_gguf` against `llama_model_quantize` alone,
and llama.cpp perplexity against our PyTorch evaluator on the same windows.

Quantization: the default model's Q4_1 file requantized to --type (allow_requantize), best of
--repeat runs each (interleaved), ours (validation, the stock call, temp file + rename, read-back with gguf) against
the bare C call with the same parameters on the same file (target ratio ≤ 1.1). Perplexity: the same
token windows of wiki (our tokenizer, our windowing) scored by llama.cpp (`gguf_perplexity`, one
graph per window, second half scored) and by our evaluator's `score_windows` (PyTorch, float32, all
positions scored); a ratio > 1 means llama.cpp is faster. The two perplexities differ by design
(llama.cpp scores the second half of each window only); `score_torch` is the like-for-like
PyTorch figure. Timings on a shared CPU are noisy; the ratios, taken in one run, are the figures.

Run: python benchmarks/bench_llamacpp.py [--type Q4_K_M] [--windows 8] [--seqlen 256] [--threads 2]
     [--repeat 5] [--no-perplexity]
Prints a table and writes benchmarks/results/llamacpp.json.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import tempfile
import time
from pathlib import Path

import torch

from superweight._io import result_header, write_json
from superweight.evaluate.perplexity import score_windows
from superweight.model import load_model
from superweight.model.load import alias_gguf
from superweight.runtime.llamacpp import llama_cpp
from superweight.runtime.quantize import ftype_value, quantize_gguf
from superweight.runtime.scoring import gguf_perplexity, score_torch, text_windows

OUT = Path(__file__).parent / "results" / "llamacpp.json"


def bare_quantize(src: Path, dst: Path, ftype: str, nthread: int) -> None:
    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.allow_requantize = ftype_value(ftype), nthread, True
    if lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")


def best_interleaved(fns, repeat: int) -> list[float]:
    """The fastest of `repeat` runs of each function, the runs interleaved (a, b, a, b, ...) so that
    a change in the machine's load affects both alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-perplexity", action="store_true", help="time the quantizer only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = alias_gguf("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        ours_out, bare_out = Path(tmp, "ours.gguf"), Path(tmp, "bare.gguf")
        t_bare, t_ours = best_interleaved(
            [lambda: bare_quantize(src, bare_out, args.type, args.threads),
             lambda: quantize_gguf(src, ours_out, args.type, nthread=args.threads, force=True,
                                   allow_requantize=True)], args.repeat)
        same_size = ours_out.stat().st_size - bare_out.stat().st_size
    quantize = {"ours_s": t_ours, "llama_model_quantize_s": t_bare, "ratio": t_ours / t_bare,
                "size_difference_bytes": same_size}
    print(f"quantize {args.type} (requantizing {src.name}, {args.threads} threads, best of {args.repeat}, "
          "interleaved)")
    print(f"  quantize_gguf          {t_ours:.2f} s")
    print(f"  llama_model_quantize   {t_bare:.2f} s   ratio {t_ours / t_bare:.3f}")
    if args.no_perplexity:
        write_json(OUT.with_name("llamacpp-quantize.json"), result_header(
            "bench-llamacpp", model=str(src), type=args.type, threads=args.threads, quantize=quantize))
        return
    lm = load_model("smollm2-135m", quiet=True)
    windows = text_windows(lm, "wiki", seqlen=args.seqlen, max_tokens=args.windows * args.seqlen)
    t = time.perf_counter()
    lcpp = gguf_perplexity(src, windows, n_threads=args.threads)
    t_lcpp = time.perf_counter() - t
    t = time.perf_counter()
    nll = score_windows(lm.model, windows, batch_size=1)
    t_torch = time.perf_counter() - t
    like = score_torch(lm, windows)
    result = result_header("bench-llamacpp", model=str(src), type=args.type, threads=args.threads,
                           windows=int(windows.shape[0]), seqlen=args.seqlen,
                           quantize=quantize,
                           perplexity={"llama_cpp_s": t_lcpp, "pytorch_s": t_torch,
                                       "speed_ratio": t_torch / t_lcpp,
                                       "llama_cpp_ppl_second_half": lcpp.ppl,
                                       "pytorch_ppl_second_half": like.ppl,
                                       "pytorch_ppl_all_positions": math.exp(nll)})
    write_json(OUT, result)
    p = result["perplexity"]
    print(f"perplexity, {windows.shape[0]} windows x {args.seqlen} tokens of wiki")
    print(f"  llama.cpp (Q4_1 file)  {t_lcpp:.2f} s   ppl {lcpp.ppl:.3f} (second half)")
    print(f"  PyTorch (float32)      {t_torch:.2f} s   ppl {math.exp(nll):.3f} (all positions), "
          f"{like.ppl:.3f} (second half)")
    print(f"  speed ratio (PyTorch time / llama.cpp time) {p['speed_ratio']:.2f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
