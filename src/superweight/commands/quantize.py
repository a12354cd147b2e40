"""`superweight quantize`: super-outlier-aware quantization, evaluated (Figure 7, Table 3), saved."""

from __future__ import annotations

from pathlib import Path

from superweight.commands._common import add_model_args, console, eprint, load_from_args, parse_list
from superweight.errors import SuperweightError

METHOD_CHOICES = ("rtn", "rtn-clip", "superweight", "hqq")


def register(sub) -> None:
    p = sub.add_parser("quantize", help="round-to-nearest quantization that keeps the super weights",
                       description="Fake-quantize every linear weight of the decoder layers (RTN, RTN "
                                   "with z-score clipping, or clipping with the super weights restored), "
                                   "evaluate, sweep block sizes (the paper's Figure 7), run W8A8 "
                                   "(Table 3), and save a quantized checkpoint.")
    add_model_args(p)
    p.add_argument("--bits", default="4", metavar="N[,N]",
                   help="weight bits, 2-8 (a list with --sweep, e.g. 4,3; default 4)")
    p.add_argument("--block", default="128", metavar="N",
                   help="block size: entries of the flattened weight per block (default 128)")
    p.add_argument("--granularity", default="block", choices=["block", "group", "channel", "tensor"],
                   help="block: flattened blocks (the paper); group: along the input dim (default block)")
    p.add_argument("--tail", default="ragged", choices=["ragged", "error"],
                   help="when the size does not divide: a shorter last block, or an error (default ragged)")
    p.add_argument("--method", default="superweight", choices=METHOD_CHOICES,
                   help="rtn, rtn-clip (clipping alone), superweight (clip + restore), hqq (default superweight)")
    p.add_argument("--z", default="10", metavar="Z", help="z-score clipping threshold per block (default 10)")
    p.add_argument("--keep", action="append", metavar="L,R,C",
                   help="super weight to keep (repeatable; default: detected)")
    p.add_argument("--keep-late", action="store_true",
                   help="also keep the late-layer spikes detection reports")
    p.add_argument("--include", default="", metavar="WHAT",
                   help="also quantize lm_head and/or embed (comma list; default: decoder linears only)")
    p.add_argument("--sweep", metavar="N,N,...", help="evaluate each method at each of these block sizes")
    p.add_argument("--methods", default="rtn,rtn-clip,superweight",
                   help="methods for --sweep (default rtn,rtn-clip,superweight; add hqq to compare)")
    p.add_argument("--w8a8", action="store_true",
                   help="W8A8 table: naive, the paper's super-activation method, SmoothQuant")
    p.add_argument("--act-granularity", default="tensor", choices=["tensor", "token"],
                   help="W8A8 activation ranges per tensor or per token (default tensor)")
    p.add_argument("--scheme", default="asym", choices=["asym", "sym"],
                   help="W8A8 rounding: asymmetric min-max (the paper) or symmetric absmax (default asym)")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength (default 0.5)")
    p.add_argument("--calib-tokens", type=int, default=512, metavar="N",
                   help="SmoothQuant calibration tokens, from the end of c4 (default 512)")
    p.add_argument("--quick", action="store_true", help="the quick evaluation preset")
    p.add_argument("--ppl", metavar="SOURCES", help="perplexity texts (comma list, or none)")
    p.add_argument("--tasks", metavar="TASKS", help="zero-shot tasks (comma list, or none)")
    p.add_argument("--limit", type=int, metavar="N", help="items per zero-shot task")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens of each perplexity text")
    p.add_argument("--seqlen", type=int, metavar="N", help="perplexity window (default 2048)")
    p.add_argument("--no-eval", action="store_true", help="quantize (and --save) without evaluating")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write the sweep plot (PNG) here")
    p.add_argument("--save", type=Path, metavar="DIR", help="save the quantized model (safetensors + manifest)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --save directory")
    p.set_defaults(func=run)


# --- parsing -------------------------------------------------------------------------------------

def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise SuperweightError(f"{what} must be a positive integer, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise SuperweightError(f"{what} must be a positive number, got {text!r}") from None


def parse_keep(items: list[str] | None):
    from superweight.records import SuperWeight

    out = []
    for item in items or []:
        parts = [p.strip() for p in item.split(",")]
        if len(parts) not in (3, 4) or not all(p.lstrip("-").isdigit() for p in parts):
            raise SuperweightError(f"--keep takes LAYER,ROW,COL[,EXPERT], got {item!r}")
        out.append(SuperWeight(*map(int, parts)))
    return out


def configs_from_args(args) -> dict:
    """Every number checked before the model is loaded: bits, blocks, z, methods."""
    from superweight.quantize import weight_config
    from superweight.tensor.quant import check_bits, check_size, check_z

    bits = [check_bits(_int(b, "bits")) for b in parse_list(args.bits, str, "bits")]
    if len(bits) > 1 and not args.sweep:
        raise SuperweightError("several --bits need --sweep")
    block = check_size(_int(args.block, "block size"), "block size")
    z = check_z(_float(args.z, "z"))
    blocks = ([check_size(_int(b, "block size"), "block size") for b in parse_list(args.sweep, str, "block size")]
              if args.sweep else [block])
    methods = parse_list(args.methods, str, "method") if args.sweep else [args.method]
    for m in methods:
        if m not in METHOD_CHOICES:
            raise SuperweightError(f"unknown method {m!r}; choose from {', '.join(METHOD_CHOICES)}")
    include = tuple(parse_list(args.include, str, "include")) if args.include.strip() else ()
    gran_size = None if args.granularity in ("channel", "tensor") else block
    single = weight_config(methods[0], bits=bits[0], block=gran_size, z=z, granularity=args.granularity,
                           tail=args.tail, include=include)
    if args.save and (args.sweep or args.w8a8):
        raise SuperweightError("--save writes one quantized model: use it without --sweep and --w8a8")
    if args.w8a8 and args.sweep:
        raise SuperweightError("run --w8a8 and --sweep separately")
    if args.w8a8:
        from superweight.quantize import SmoothQuantW8A8Config

        SmoothQuantW8A8Config(act_granularity=args.act_granularity, symmetric=args.scheme == "sym",
                              alpha=args.alpha, calib_tokens=args.calib_tokens)  # validates
    return {"bits": bits, "blocks": blocks, "z": z, "methods": methods, "single": single}


def make_evaluator(args):
    """lm -> summary dict, built from the evaluation module's `evaluate` and its QUICK preset."""
    try:
        from superweight import evaluate as ev

        evaluate = ev.evaluate
    except (ImportError, AttributeError):
        raise SuperweightError("evaluation is not available in this install (superweight.evaluate)") from None
    kw = dict(getattr(ev, "QUICK", {})) if args.quick else {}
    if args.ppl is not None:
        kw["ppl"] = () if args.ppl.strip() == "none" else tuple(parse_list(args.ppl, str, "text"))
    if args.tasks is not None:
        kw["tasks"] = () if args.tasks.strip() == "none" else tuple(parse_list(args.tasks, str, "task"))
    for key in ("limit", "max_tokens", "seqlen"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return (lambda lm: evaluate(lm, **kw).summary()), kw


# --- running -------------------------------------------------------------------------------------

def run(args) -> int:
    from superweight._io import result_header, write_json
    from superweight.quantize.export import check_output_dir

    cfg = configs_from_args(args)
    keep = parse_keep(args.keep)
    if args.save:
        check_output_dir(args.save, args.force, sources=(args.model,))
    evaluate, eval_kw = (None, {}) if args.no_eval else make_evaluator(args)
    if evaluate is None and (args.sweep or args.w8a8):
        raise SuperweightError("--sweep and --w8a8 evaluate; drop --no-eval")
    lm = load_from_args(args)
    sws = _super_weights(lm, args, keep, cfg["methods"])
    payload = result_header("quantize", model=lm.describe(), evaluation=eval_kw,
                            super_weights=[s.to_dict() for s in sws],
                            config={"bits": cfg["bits"], "blocks": cfg["blocks"], "z": cfg["z"],
                                    "methods": ["w8a8"] if args.w8a8 else cfg["methods"],
                                    "granularity": args.granularity, "tail": args.tail})
    if args.w8a8:
        rows = _run_w8a8(lm, args, evaluate)
    elif args.sweep:
        rows = _run_sweep(lm, args, cfg, sws, evaluate)
    else:
        rows = _run_single(lm, args, cfg["single"], sws, evaluate, payload)
    payload["rows"] = [r.to_dict() for r in rows]
    if args.w8a8:
        payload["share_kept"] = _share_kept(rows)
    if args.json:
        write_json(args.json, payload)
        eprint(f"wrote {args.json}")
    return 0


def _super_weights(lm, args, keep, methods):
    if keep:
        from superweight.interventions import check_coords

        check_coords(lm.view, keep)
        return keep
    if "superweight" not in methods or args.w8a8:
        return []  # W8A8's super-activation plan runs detection itself (early and late spikes)
    from superweight.detect import detect

    with console(stderr=True).status("Detecting super weights…"):
        found = detect(lm)
    sws = [s for s in found.super_weights if args.keep_late or not s.late]
    if not sws:
        raise SuperweightError("detection found no super weight to keep; give --keep LAYER,ROW,COL "
                               "or use --method rtn-clip")
    eprint("super weights kept: " + ", ".join(s.label() for s in sws))
    return sws


def _run_single(lm, args, config, sws, evaluate, payload):
    from superweight.quantize.export import save_checkpoint
    from superweight.quantize.sweep import Row, baseline
    from superweight.quantize.weights import quantized

    rows = [baseline(lm, evaluate)] if evaluate else []
    eprint(f"quantizing ({config.label()})…")
    with quantized(lm, config, sws) as report:
        row = Row(config.method, config.bits, config.block, evaluate(lm) if evaluate else {},
                  report.summary())
        rows.append(row)
        if args.save:
            kept = [{"layer": s.layer, "row": s.row, "col": s.col, "expert": s.expert,
                     "value": float(lm.view.down_proj(s.layer, s.expert).matrix()[s.row, s.col].detach())}
                    for s in report.super_weights] if config.method == "superweight" else []
            manifest = {"config": config.to_dict(), "super_weights_kept": kept,
                        "summary": report.summary(), "metrics": row.metrics}
            out = save_checkpoint(lm, args.save, manifest, force=args.force)
            eprint(f"saved the quantized model to {out}")
    payload["report"] = report.to_dict()
    _render(rows, f"{config.label()} on {lm.ref}")
    return rows


def _run_sweep(lm, args, cfg, sws, evaluate):
    from superweight.quantize.sweep import baseline, plot_sweep, weight_sweep

    rows = [baseline(lm, evaluate)]
    _progress(rows[0])
    rows += weight_sweep(lm, evaluate, cfg["bits"], cfg["blocks"], cfg["methods"], z=cfg["z"],
                         granularity=args.granularity, tail=args.tail, super_weights=sws, on_row=_progress)
    _render(rows, f"block-size sweep on {lm.ref} (z = {cfg['z']:g})")
    if args.plot:
        for metric in _metrics(rows):
            path = args.plot / f"quantize_sweep_{metric}.png"
            plot_sweep(rows, metric, path, f"{lm.ref}: {metric} vs block size")
            eprint(f"wrote {path}")
    return rows


def _run_w8a8(lm, args, evaluate):
    from superweight.quantize.sweep import baseline, w8a8_table

    rows = [baseline(lm, evaluate)]
    _progress(rows[0])
    rows += w8a8_table(lm, evaluate, on_row=_progress, act_granularity=args.act_granularity,
                       symmetric=args.scheme == "sym", alpha=args.alpha, calib_tokens=args.calib_tokens)
    _render(rows, f"W8A8 on {lm.ref} (activations per {args.act_granularity}, {args.scheme})")
    share = _share_kept(rows)
    for metric, value in share.items():
        console().print(f"share of SmoothQuant's {metric} improvement kept by the data-free method: "
                        + ("n/a" if value is None else f"{100 * value:.1f}%"))
    return rows


def _share_kept(rows) -> dict:
    """Share of SmoothQuant's improvement over naive W8A8 that ours keeps, for the average accuracy
    and each perplexity (also on log perplexity, which stays readable when naive W8A8 explodes);
    per-task accuracies on a few items are too noisy for a ratio."""
    import math

    from superweight.quantize.sweep import share_kept

    by = {r.method.split()[-1]: r.metrics for r in rows}
    if not all(k in by for k in ("naive", "smoothquant", "superact")):
        return {}
    out = {}
    for m in _metrics(rows):
        if m != "average" and not m.endswith("_ppl"):
            continue
        vals = [by[k].get(m) for k in ("naive", "smoothquant", "superact")]
        if None in vals:
            continue
        out[m] = share_kept(*vals)
        if m.endswith("_ppl") and min(vals) > 0:
            out[f"log_{m}"] = share_kept(*(math.log(v) for v in vals))
    return out


def _metrics(rows) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.metrics.items() if isinstance(v, (int, float)) and k not in keys]
    return keys


def _progress(row) -> None:
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in row.metrics.items() if isinstance(v, (int, float)))
    eprint(f"  {row.method} W{row.bits} block {row.block}: {shown or row.metrics} ({row.seconds:.0f}s)"
           if row.block else f"  {row.method}: {shown or row.metrics} ({row.seconds:.0f}s)")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _render(rows, title: str) -> None:
    from rich.table import Table

    metrics = _metrics(rows)
    t = Table(title=title)
    for col in ["method", "bits", "block", *metrics, "rel. error", "clipped", "kept"]:
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        q = r.quant if "mean_rel_error" in r.quant else {}
        err = r.metrics.get("error")
        t.add_row(r.method, str(r.bits or "—"), str(r.block or "—"),
                  *[_fmt(r.metrics[m]) if m in r.metrics else (err or "—")[:40] for m in metrics],
                  f"{q['mean_rel_error']:.4f}" if q else "—", str(q.get("clipped", "—")),
                  str(q.get("kept", "—")))
    console().print(t)
