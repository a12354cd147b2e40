"""`superweight trace`: a massive activation through the residual stream, original vs its weights zeroed."""

from __future__ import annotations


from superweight.commands._common import add_json_arg, add_model_args, console, folder, load_from_args, write_json_arg
from superweight.commands.detect import (add_detect_args, add_engine_args, config_from_args, engine_from_args,
                                         prompts_from_args)


def register(sub) -> None:
    p = sub.add_parser("trace", help="follow a massive activation through the residual stream",
                       description="Per layer: the residual stream's max |value|, its channel, position "
                                   "and typical magnitude, and the largest massive activation's value, with "
                                   "and without the weights that make it (when no weight makes it: the early "
                                   "super weight candidates) (Figure 4).")
    add_model_args(p)
    add_detect_args(p)
    add_engine_args(p)
    add_json_arg(p)
    p.add_argument("--plot", type=folder, metavar="DIR", help="write PNG plots (Figures 3 and 4) here")
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.activations import trace_prompts
    from superweight.report.detect_tables import render_trace

    config = config_from_args(args)
    prompts = prompts_from_args(args)
    choice = engine_from_args(args)
    out = console()
    if choice.engine == "llama.cpp":
        from superweight.runtime.detect import trace_gguf_prompts

        run = trace_gguf_prompts(choice.gguf, prompts, config, ref=args.model, model_id=choice.model_id,
                                 n_threads=args.threads, choice=choice)
    else:
        run = trace_prompts(load_from_args(args), prompts, config, choice=choice)
    results = run.traces
    for t in results:
        if str(args.json) != "-":  # stdout carries the JSON then
            render_trace(out, t)
    if args.plot:
        from superweight.report.detect_plots import plot_down_proj, plot_residual

        t = results[0]
        a = plot_down_proj(t.detection.layer_stats[0], f"{args.model}: down_proj spikes per layer",
                           args.plot / "down_proj_maxima.png", sorted({s.layer for s in t.detection.early}))
        b = plot_residual(t.original, t.pruned, f"{args.model}: residual stream",
                          args.plot / "residual_maxima.png", t.activation.channel if t.activation else None,
                          t.zeroed_label)
        console(stderr=True).print(f"Plots: {a}, {b}", markup=False)
    write_json_arg(args.json, run.to_dict())
    return 0
