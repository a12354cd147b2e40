"""`superweight check ORIGINAL OTHER`: did a quantized or fine-tuned copy keep the super weights?"""

from __future__ import annotations

from pathlib import Path

from superweight.commands._common import add_memory_arg, console, eprint


def register(sub) -> None:
    p = sub.add_parser("check", help="compare the super weights of a model and a copy (e.g. quantized, .gguf)",
                       description="For each super weight of ORIGINAL: its value in OTHER, the relative "
                                   "error, and whether the super activation survives in OTHER. "
                                   "Exit status 1 when one does not survive.")
    p.add_argument("original", help="the reference model: hub id, folder, .gguf file or alias")
    p.add_argument("other", help="the copy to check, loaded the same way")
    p.add_argument("--keep", action="append", metavar="L,R,C",
                   help="super weight to check (repeatable; default: detected in ORIGINAL)")
    p.add_argument("--prompt", help="prompt for the super activation (default: detection's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default="cpu")
    add_memory_arg(p, note="; split between the two models")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight._io import result_header, write_json
    from superweight.commands.quantize import parse_keep
    from superweight.model import load_model
    from superweight.model.budget import parse_size
    from superweight.quantize.check import SURVIVE_RATIO, check_models
    from superweight.quantize.export import read_manifest

    keep = parse_keep(args.keep) or None
    half = parse_size(args.max_memory) // 2 if args.max_memory else None
    a = load_model(args.original, dtype=args.dtype, device=args.device, quiet=False, max_memory=half)
    b = load_model(args.other, dtype=args.dtype, device=args.device, quiet=False, max_memory=half)
    rows = check_models(a, b, keep, args.prompt)
    _render(rows, args)
    manifest = read_manifest(b.source) if b.kind == "local" else None
    if args.json:
        write_json(args.json, {**result_header("check", original=a.describe(), other=b.describe(),
                                               survive_ratio=SURVIVE_RATIO),
                               "other_manifest": manifest, "rows": [r.to_dict() for r in rows]})
        eprint(f"wrote {args.json}")
    return 0 if all(r.survives for r in rows) else 1


def _render(rows, args) -> None:
    from rich.table import Table

    t = Table(title=f"super weights of {args.original} in {args.other}")
    for col in ("super weight", "original", "other", "rel. error", "input spike (orig)",
                "input spike (other)", "activation (orig)", "activation (other)", "ratio", "survives"):
        t.add_column(col, justify="right")
    for r in rows:
        e = f", {r.expert}" if r.expert is not None else ""
        t.add_row(f"({r.layer}, {r.row}, {r.col}{e})", f"{r.original:.6g}", f"{r.other:.6g}",
                  f"{r.rel_error:.2%}", f"{r.input_original:.5g}", f"{r.input_other:.5g}",
                  f"{r.activation_original:.5g}", f"{r.activation_other:.5g}",
                  f"{r.activation_ratio:.3f}", "yes" if r.survives else "NO")
    console().print(t)
