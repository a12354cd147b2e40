"""`superweight check ORIGINAL OTHER`: did a quantized or fine-tuned copy keep the super weights?"""

from __future__ import annotations

from superweight.commands._common import (add_coords_args, add_json_arg, add_model_args, coords_from_args,
                                          load_from_args, select_super_weights, show_tables, write_json_arg)


def register(sub) -> None:
    p = sub.add_parser("check", help="compare the super weights of a model and a copy (e.g. quantized, .gguf)",
                       description="For each super weight of ORIGINAL: its value in OTHER, the relative "
                                   "error, and whether the super activation survives in OTHER. "
                                   "Exit status 1 when one does not survive. The loading flags apply "
                                   "to both models.")
    add_model_args(p, models=("original", "other"))
    add_coords_args(p, default="detected in ORIGINAL")
    p.add_argument("--prompt", help="prompt whose activations are compared (default: detection's)")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "llama.cpp"],
                   help="what runs OTHER: llama.cpp runs a .gguf as it is (no conversion), torch converts "
                        "it once; auto (default): llama.cpp for a .gguf it can run")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight._io import result_header
    from superweight.quantize.check import SURVIVE_RATIO, check_models
    from superweight.model.checkpoint import read_manifest
    from superweight.report.tables import check_tables

    from superweight.commands.detect import engine_from_args

    coords = coords_from_args(args)
    choice = engine_from_args(args, args.other)
    a = load_from_args(args, args.original, share=2 if choice.engine == "torch" else 1)
    selection = select_super_weights(a, args, coords)
    experts = None
    if choice.engine == "llama.cpp":
        from superweight.runtime.detect import LlamaCppEngine, check_against_gguf

        with LlamaCppEngine(choice.gguf, n_threads=args.threads) as engine:
            rows = check_against_gguf(a, engine, selection.super_weights, args.prompt)
            other, manifest = {**engine.describe(), "ref": args.other}, None
        tables = check_tables(rows, args.original, args.other, SURVIVE_RATIO)
    else:
        b = load_from_args(args, args.other, share=2)
        rows = check_models(a, b, selection.super_weights, args.prompt)
        other, manifest = b.describe(), read_manifest(b.source) if b.kind == "local" else None
        tables = check_tables(rows, args.original, args.other, SURVIVE_RATIO)
        if a.view.is_moe:  # a mixture of experts: did the super experts keep their massive output?
            from superweight.moe import check_super_experts
            from superweight.report.moe import expert_check_table

            _, experts = check_super_experts(a, b, args.prompt, survive_ratio=SURVIVE_RATIO)
            if experts:
                tables.append(expert_check_table(experts, args.original, args.other))
    show_tables(args, tables)
    payload = {**result_header("check", original=a.describe(), other=other, engine=choice.to_dict(),
                               survive_ratio=SURVIVE_RATIO, super_weight_source=selection.source),
               "other_manifest": manifest, "rows": [r.to_dict() for r in rows]}
    if experts is not None:
        payload["super_experts"] = [r.to_dict() for r in experts]
    write_json_arg(args.json, payload)
    return 0 if all(r.survives for r in rows) and all(r.survives for r in experts or []) else 1
