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
    from superweight.quantize.check import check_copy
    from superweight.report.tables import check_tables

    from superweight.commands.detect import engine_from_args

    coords = coords_from_args(args)
    choice = engine_from_args(args, args.other)
    a = load_from_args(args, args.original, share=2 if choice.engine == "torch" else 1)
    selection = select_super_weights(a, args, coords)
    if choice.engine == "llama.cpp":
        from superweight.runtime.detect import check_gguf_copy

        result = check_gguf_copy(a, choice.gguf, selection, args.prompt, ref=args.other, n_threads=args.threads,
                                 choice=choice)
    else:
        result = check_copy(a, load_from_args(args, args.other, share=2), selection, args.prompt, choice=choice)
    tables = check_tables(result.rows, args.original, args.other, result.survive_ratio)
    if result.super_experts:
        from superweight.report.moe import expert_check_table

        tables.append(expert_check_table(result.super_experts, args.original, args.other))
    show_tables(args, tables)
    write_json_arg(args.json, result.to_dict())
    return 0 if result.survives else 1
