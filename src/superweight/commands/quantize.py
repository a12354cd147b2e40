"""`superweight quantize`: super-outlier-aware quantization, evaluated (Figure 7, Table 3), saved."""

from __future__ import annotations

from pathlib import Path

from superweight.commands._common import (add_coords_args, add_eval_args, add_json_arg, add_model_args, console,
                                          coords_from_args, eval_flags_given, eval_settings, folder, load_from_args,
                                          parse_list, select_super_weights, show_tables, write_json_arg)
from superweight.errors import SuperweightError

WEIGHT_FLAGS = {"method": "--method", "block": "--block", "z": "--z", "granularity": "--granularity",
                "tail": "--tail", "include": "--include", "keep_late": "--keep-late", "sweep": "--sweep",
                "methods": "--methods", "save": "--save"}
W8A8_FLAGS = {"act_granularity": "--act-granularity", "scheme": "--scheme", "alpha": "--alpha",
              "calib_tokens": "--calib-tokens"}
GGUF_FLAGS = {"type": "--type", "protect": "--protect", "protect_type": "--protect-type",
              "tensor_type": "--tensor-type", "imatrix": "--imatrix", "imatrix_tokens": "--imatrix-tokens",
              "control": "--control", "no_pin": "--no-pin"}
GGUF_DEFAULT_TOKENS = 4096


def register(sub) -> None:
    from superweight.quantize import WEIGHT_METHODS
    from superweight.quantize.rtn import DEFAULT_BITS, DEFAULT_BLOCK
    from superweight.quantize.rtn_clip import DEFAULT_Z
    from superweight.quantize.sweep import SWEEP_METHODS
    from superweight.quantize.w8a8.core import ACT_GRANULARITIES
    from superweight.quantize.w8a8.smoothquant import DEFAULT_ALPHA, DEFAULT_CALIB_TOKENS
    from superweight.tensor.quant import GRANULARITIES, TAILS

    p = sub.add_parser("quantize", help="round-to-nearest quantization that keeps the super weights",
                       description="Fake-quantize every linear weight of the decoder layers (RTN, RTN "
                                   "with z-score clipping, clipping with the super weights restored, or "
                                   "HQQ), evaluate, sweep block sizes (the paper's Figure 7), run W8A8 "
                                   "(Table 3), and save a quantized checkpoint; or, with --format gguf, make a "
                                   "real llama.cpp GGUF with llama.cpp's own quantizer, the super weights' "
                                   "tensors (or their whole circuit) protected, measured in llama.cpp. "
                                   "Settings that do not apply to what is asked are errors, not ignored.")
    add_model_args(p)
    p.add_argument("--bits", metavar="N[,N]",
                   help=f"weight bits, 2-8 (a list with --sweep, e.g. 4,3; default {DEFAULT_BITS})")
    p.add_argument("--block", metavar="N",
                   help=f"block size: entries of the flattened weight per block (default {DEFAULT_BLOCK}; "
                        "block and group granularity only)")
    p.add_argument("--granularity", choices=GRANULARITIES,
                   help="block: flattened blocks (the paper); group: along the input dim (default block)")
    p.add_argument("--tail", choices=TAILS,
                   help="when the size does not divide: a shorter last block, or an error (default ragged)")
    p.add_argument("--method", choices=list(WEIGHT_METHODS),
                   help="rtn, rtn-clip (clipping alone), superweight (clip + restore), hqq (default superweight)")
    p.add_argument("--z", type=float, metavar="Z",
                   help=f"z-score clipping threshold per block (rtn-clip and superweight; default {DEFAULT_Z:g})")
    add_coords_args(p, default="detected; superweight method only")
    p.add_argument("--keep-late", action="store_true", help="also keep the late-layer spikes detection reports")
    p.add_argument("--include", metavar="WHAT",
                   help="also quantize lm_head and/or embed (comma list; default: decoder linears only)")
    p.add_argument("--sweep", metavar="N,N,...", help="evaluate each method at each of these block sizes")
    p.add_argument("--methods", help=f"methods for --sweep (default {','.join(SWEEP_METHODS)}; add hqq to compare)")
    p.add_argument("--w8a8", action="store_true",
                   help="W8A8 table: naive, the paper's super-activation method, SmoothQuant")
    p.add_argument("--act-granularity", choices=list(ACT_GRANULARITIES),
                   help="W8A8 activation ranges per tensor or per token (default tensor)")
    p.add_argument("--scheme", choices=["asym", "sym"],
                   help="W8A8 rounding: asymmetric min-max (the paper) or symmetric absmax (default asym)")
    p.add_argument("--alpha", type=float, help=f"SmoothQuant migration strength (default {DEFAULT_ALPHA})")
    p.add_argument("--calib-tokens", type=int, metavar="N",
                   help=f"SmoothQuant calibration tokens, from the end of c4 (default {DEFAULT_CALIB_TOKENS})")
    g = p.add_argument_group("llama.cpp GGUF (--format gguf)")
    g.add_argument("--format", choices=["safetensors", "gguf"],
                   help="what --save writes: safetensors (fake-quantized weights, any transformers user "
                        "loads them) or gguf (a real llama.cpp quantization; needs superweight[gguf])")
    g.add_argument("--type", help="llama.cpp file type, e.g. Q4_K_M, Q4_0, Q2_K, Q8_0, IQ4_XS (IQ types "
                                  "need --imatrix; default Q4_K_M)")
    g.add_argument("--protect", choices=["none", "weight", "circuit"],
                   help="none: llama.cpp's stock recipe; weight: the super weights' down projections at "
                        "--protect-type; circuit: also that layer's gate/up, which make the input spike "
                        "(default none)")
    g.add_argument("--protect-type", metavar="TYPE", help="tensor type of protected tensors (default Q8_0)")
    g.add_argument("--tensor-type", action="append", metavar="PATTERN=TYPE",
                   help="your own override: tensors whose GGUF name matches the regex get TYPE "
                        "(repeatable; before ours, first match wins), e.g. 'blk\\.3\\.ffn_down=Q6_K'")
    g.add_argument("--imatrix", metavar="TEXT",
                   help="compute llama.cpp's importance matrix from this text (wiki, c4, ptb, a file)")
    g.add_argument("--imatrix-tokens", type=int, metavar="N",
                   help="tokens of the imatrix text (default 16384)")
    g.add_argument("--no-pin", action="store_true",
                   help="let llama.cpp's recipe move other tensors' types around the overrides (by default "
                        "every tensor no override names keeps its stock type)")
    g.add_argument("--control", action="store_true",
                   help="the experiment's control: the same overrides on layers without a super weight")
    add_eval_args(p)
    p.add_argument("--no-eval", action="store_true", help="quantize (and --save) without evaluating")
    add_json_arg(p)
    p.add_argument("--plot", type=folder, metavar="DIR", help="write the sweep plots (PNG) here")
    p.add_argument("--save", type=Path, metavar="DIR", help="save the quantized model (safetensors + manifest)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --save directory")
    p.set_defaults(func=run)


# --- parsing -------------------------------------------------------------------------------------

def _given(args, flags: dict) -> list[str]:
    return [flag for key, flag in flags.items() if getattr(args, key, None) not in (None, False)]


def _refuse(flags: list[str], why: str) -> None:
    if flags:
        raise SuperweightError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply {why}")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise SuperweightError(f"{what} must be a positive integer, got {text!r}") from None


def plan_from_args(args) -> dict:
    """Every setting checked before the model is loaded, and every flag that would be silently
    ignored refused: what to run ("single", "sweep" or "w8a8") and its validated configs."""
    from superweight.quantize import weight_config
    from superweight.quantize.rtn import DEFAULT_BITS
    from superweight.quantize.sweep import SWEEP_METHODS, sweep_configs, w8a8_configs
    from superweight.tensor.quant import check_bits

    coords = coords_from_args(args)
    selecting = coords is not None or args.catalog or args.keep_late
    if args.format == "gguf":
        return _gguf_plan(args, coords)
    _refuse(_given(args, GGUF_FLAGS), "without --format gguf")
    if args.no_eval:
        if args.sweep or args.w8a8:
            raise SuperweightError("--sweep and --w8a8 evaluate; drop --no-eval")
        _refuse(eval_flags_given(args) + ["--plot"] * bool(args.plot), "with --no-eval")
    if args.w8a8:
        _refuse(_given(args, WEIGHT_FLAGS) + ["--bits"] * bool(args.bits) + ["--coords"] * selecting,
                "to --w8a8 (its weights are 8-bit per channel, its super activations come from detection)")
        settings = {"act_granularity": args.act_granularity or "tensor", "symmetric": args.scheme == "sym"}
        settings.update({k: getattr(args, k) for k in ("alpha", "calib_tokens") if getattr(args, k) is not None})
        return {"mode": "w8a8", "w8a8": settings, "configs": w8a8_configs(**settings), "coords": None}
    _refuse(_given(args, W8A8_FLAGS), "without --w8a8")
    bits = [check_bits(_int(b, "bits")) for b in parse_list(args.bits or str(DEFAULT_BITS), str, "bits")]
    include = tuple(parse_list(args.include, str, "include")) if args.include and args.include.strip() else ()
    common = {"granularity": args.granularity or "block", "tail": args.tail or "ragged"}
    if args.sweep:
        _refuse(["--method"] * bool(args.method) + ["--block"] * bool(args.block) + ["--save"] * bool(args.save)
                + ["--include"] * bool(include), "to --sweep (it takes --methods and its own block sizes)")
        blocks = [_int(b, "block size") for b in parse_list(args.sweep, str, "block size")]
        methods = parse_list(args.methods, str, "method") if args.methods else list(SWEEP_METHODS)
        configs = sweep_configs(bits, blocks, methods, args.z, **common)
        if selecting and not any(c.protects != "none" for c in configs):
            raise SuperweightError("--coords, --catalog and --keep-late choose super weights to keep, "
                                   "which only the superweight and circuit methods do")
        return {"mode": "sweep", "bits": bits, "blocks": blocks, "methods": methods, "z": args.z,
                "configs": configs, "coords": coords, **common}
    _refuse(["--methods"] * bool(args.methods), "without --sweep")
    if len(bits) > 1:
        raise SuperweightError("several --bits need --sweep")
    method = args.method or "superweight"
    block = _int(args.block, "block size") if args.block is not None else None
    config = weight_config(method, bits=bits[0], block=block, include=include,
                           **({"z": args.z} if args.z is not None else {}), **common)
    if selecting and config.protects == "none":
        raise SuperweightError(f"--coords, --catalog and --keep-late choose super weights to keep; "
                               f"the {method} method keeps none")
    if args.save:
        from superweight.quantize.export import check_output_dir

        check_output_dir(args.save, args.force, sources=(args.model,))
    return {"mode": "single", "config": config, "configs": [config], "coords": coords}


def _gguf_plan(args, coords) -> dict:
    """--format gguf: a llama.cpp quantization written to --save, measured in llama.cpp."""
    from superweight.quantize.gguf import GGUFQuantConfig
    from superweight.quantize.gguf import check_output_file

    fake = {**WEIGHT_FLAGS, **W8A8_FLAGS, "w8a8": "--w8a8", "bits": "--bits"}
    del fake["save"]
    _refuse(_given(args, fake), "to --format gguf (llama.cpp's type and recipe set the bits and blocks)")
    if not args.save:
        raise SuperweightError("--format gguf writes a file: give --save OUT.gguf")
    if args.tasks and args.tasks.strip().lower() != "none":
        raise SuperweightError("--format gguf is evaluated in llama.cpp on perplexity texts (--ppl); "
                               "zero-shot --tasks run in PyTorch: use `superweight eval` on the model")
    config = GGUFQuantConfig(args.type or "Q4_K_M", protect=args.protect or "none",
                             protect_type=args.protect_type or "Q8_0",
                             tensor_types=tuple(_tensor_type(t) for t in args.tensor_type or ()),
                             imatrix=args.imatrix,
                             **({"imatrix_tokens": args.imatrix_tokens} if args.imatrix_tokens else {}),
                             control=args.control, pin_stock=not args.no_pin)
    check_output_file(args.save, args.force, sources=(args.model,))
    _check_patterns(config, args.model)
    score = None
    if not args.no_eval:
        from superweight.evaluate.settings import EvalSettings

        ppl = parse_list(args.ppl, str, "text") if args.ppl else ["wiki"]
        settings = EvalSettings(tasks=(), ppl=tuple(ppl), max_tokens=args.max_tokens or GGUF_DEFAULT_TOKENS,
                                seqlen=args.seqlen or 512, hub=args.hub).checked()
        score = {"sources": list(settings.ppl), "seqlen": settings.seqlen, "max_tokens": settings.max_tokens,
                 "hub": settings.hub}
    return {"mode": "gguf", "config": config, "configs": [config], "coords": coords, "score": score}


def _check_patterns(config, model: str) -> None:
    """A GGUF model's tensor names are known before it loads: a pattern that matches none of them is
    refused now (for other models, once the GGUF is written, still before llama.cpp runs)."""
    from superweight.runtime.detect import gguf_of
    from superweight.runtime.quantize import gguf_tensors, matching

    path, _ = gguf_of(str(model))
    if path is None or not config.tensor_types or not path.is_file():
        return
    names = list(gguf_tensors(path))
    for pattern, _ in config.tensor_types:
        if not matching(pattern, names):
            raise SuperweightError(f"tensor pattern {pattern!r} matches no tensor of {path.name}")


def _tensor_type(text: str) -> tuple[str, str]:
    pattern, sep, kind = text.rpartition("=")
    if not sep or not pattern or not kind:
        raise SuperweightError(f"--tensor-type takes PATTERN=TYPE, got {text!r}")
    return pattern, kind


# --- running -------------------------------------------------------------------------------------

def run(args) -> int:
    plan = plan_from_args(args)
    if plan["mode"] == "gguf":
        return _run_gguf(args, plan)
    settings = None if args.no_eval else eval_settings(args)
    lm = load_from_args(args)
    selection = None
    if any(c.protects != "none" for c in plan["configs"]):
        selection = select_super_weights(lm, args, plan["coords"], include_late=args.keep_late)
        if not selection.super_weights:
            raise SuperweightError("detection found no super weight to keep; give --coords L,R,C "
                                   "or use --method rtn-clip")
        console(stderr=True).print(f"super weights kept ({selection.source}): "
                                   + ", ".join(s.label() for s in selection.super_weights), markup=False)
    if plan["mode"] == "single":
        result = _run_single(lm, args, plan["config"], selection, settings)
    else:
        result = _run_table(lm, plan, selection, settings)
    if result.rows:
        _show(args, result, lm, plan)
        if args.plot and plan["mode"] == "sweep":
            from superweight.report.quantize_plots import plot_sweep_metrics

            for path in plot_sweep_metrics(result, args.plot, lm.ref):
                console(stderr=True).print(f"Wrote {path}")
    write_json_arg(args.json, result.to_dict())
    return 0


def _run_gguf(args, plan) -> int:
    from superweight.quantize.api import export
    from superweight.quantize.gguf import gguf_steps
    from superweight.report.progress import RunProgress
    from superweight.report.tables import gguf_tables

    lm = load_from_args(args)
    config = plan["config"]
    selection = None
    if config.protect != "none":
        selection = select_super_weights(lm, args, plan["coords"], include_late=args.keep_late)
        console(stderr=True).print(f"super weights protected ({selection.source}): "
                                   + (", ".join(s.label() for s in selection.super_weights) or "none found"),
                                   markup=False)
    err = console(stderr=True)
    sws = selection.super_weights if selection else []
    steps = gguf_steps(config, sws) + list(plan["score"]["sources"] if plan["score"] else [])
    with RunProgress(f"{lm.ref}: llama.cpp {config.label()}", 1, steps) as progress:
        run = export(lm, config, selection, args.save, force=args.force, score=plan["score"], n_threads=args.threads,
                     on_event=progress.on_event)
    for note in run.result.notes + ([run.result.manifest["note"]] if run.result.manifest.get("note") else []):
        err.print(f"note: {note}", markup=False)
    err.print(f"wrote {run.result.path}", markup=False)
    show_tables(args, gguf_tables(run, lm.ref))
    write_json_arg(args.json, run.to_dict())
    return 0


def _progress(lm, plan, settings):
    from superweight.report.progress import RunProgress

    return RunProgress(f"{lm.ref}: quantization", len(plan["configs"]) + 1, settings.ppl + settings.tasks)


def _run_table(lm, plan, selection, settings):
    from superweight.quantize.sweep import run_sweep, run_w8a8

    with _progress(lm, plan, settings) as progress:
        evaluator = settings.evaluator(progress.on_event)
        if plan["mode"] == "w8a8":
            return run_w8a8(lm, evaluator, on_event=progress.on_event, **plan["w8a8"])
        return run_sweep(lm, evaluator, plan["bits"], plan["blocks"], plan["methods"], plan["z"],
                         plan["granularity"], plan["tail"], selection, on_event=progress.on_event)


def _run_single(lm, args, config, selection, settings):
    """One config: the model as loaded and quantized (evaluated unless --no-eval), saved if asked."""
    from superweight.quantize.sweep import run_single

    if settings is None:
        with console(stderr=True).status(f"quantizing ({config.label()})…"):
            result = run_single(lm, config, None, selection, save=args.save, force=args.force)
    else:
        with _progress(lm, {"configs": [config]}, settings) as progress:
            result = run_single(lm, config, settings.evaluator(progress.on_event), selection, save=args.save,
                                force=args.force, on_event=progress.on_event)
    if args.save:
        console(stderr=True).print(f"saved the quantized model to {args.save}", markup=False)
    return result


def _show(args, result, lm, plan) -> None:
    from superweight.report.tables import sweep_tables

    if plan["mode"] == "w8a8":
        w = plan["w8a8"]
        title = f"W8A8 on {lm.ref} (activations per {w['act_granularity']}, {'sym' if w['symmetric'] else 'asym'})"
    elif plan["mode"] == "sweep":
        z = next((c.z for c in plan["configs"] if hasattr(c, "z")), None)
        title = f"block-size sweep on {lm.ref}" + (f" (z = {z:g})" if z is not None else "")
    else:
        title = f"{plan['config'].label()} on {lm.ref}"
    show_tables(args, sweep_tables(result, title))
