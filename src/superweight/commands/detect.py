"""`superweight detect`: massive activations, what makes them, and the super weights behind them."""

from __future__ import annotations

import argparse

from superweight.commands._common import add_json_arg, add_model_args, console, folder, load_from_args, write_json_arg
from superweight.errors import SuperweightError


def add_verdict_args(p) -> None:
    """The verdict scale (`verify.VerdictScale`), shared by `detect --verify` and `report`."""
    from superweight.verify import MATTERS_THRESHOLD, VERIFY_THRESHOLD

    p.add_argument("--verify-threshold", type=float, default=VERIFY_THRESHOLD, metavar="X",
                   help="perplexity ratio from which a candidate is a super weight and a massive activation "
                        f"needed (default {VERIFY_THRESHOLD:g})")
    p.add_argument("--matters-threshold", type=float, default=None, metavar="X",
                   help="perplexity ratio from which a candidate or a massive activation matters, below "
                        f"--verify-threshold (default {MATTERS_THRESHOLD:g}); below it: not needed / spike only")


def register(sub) -> None:
    p = sub.add_parser("detect", help="find massive activations, what makes them, and super weights (data-free)",
                       description="Find massive activations in the residual stream and what makes each "
                                   "one (a super weight, one input feature's column, a norm's gain, "
                                   "attention, the embedding), and the down projection spikes, with one "
                                   "forward pass per round; --verify checks which the model needs.")
    add_model_args(p)
    add_detect_args(p)
    add_engine_args(p)
    p.add_argument("--verify", action="store_true",
                   help="zero each candidate and ablate each massive activation; measure perplexity "
                        "on a short real text")
    add_verdict_args(p)
    p.add_argument("--model-id", help="exact hub id to look up in the catalog (default: from the reference)")
    p.add_argument("--save-catalog", action="store_true",
                   help="add the early super weights found to your local catalog")
    from superweight.moe import SuperExpertConfig

    e = SuperExpertConfig()
    g = p.add_argument_group("mixture of experts (super experts, Su et al. 2025)")
    g.add_argument("--expert-percentile", type=float, default=e.percentile, metavar="P",
                   help=f"a super expert's max |output| is above this percentile of all experts' (default {e.percentile:g}) ...")
    g.add_argument("--expert-fraction", type=float, default=e.fraction, metavar="F",
                   help=f"... and above this fraction of the largest (default {e.fraction:g}) ...")
    g.add_argument("--expert-ratio", type=float, default=e.min_ratio, metavar="X",
                   help=f"... and this many times the median expert's (ours; default {e.min_ratio:g})")
    g.add_argument("--expert-depth", type=float, default=e.depth, metavar="F",
                   help=f"super experts sit in the first F of the layers, outlier experts after (default {e.depth:g})")
    g.add_argument("--expert-draws", type=int, default=3, metavar="N",
                   help="with --verify: seeded draws of random experts to prune as the control (default 3)")
    add_json_arg(p)
    p.add_argument("--plot", type=folder, metavar="DIR",
                   help="write PNG plots (Figure 3 style; for a MoE also the layer x expert heatmap) here")
    p.set_defaults(func=run)


def add_detect_args(p: argparse.ArgumentParser) -> None:
    """Prompt and threshold flags, shared by `detect` and `trace`."""
    from superweight.detect import DEFAULT_PROMPT, DetectConfig

    d = DetectConfig()
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help=f"prompt to run (repeatable; default {DEFAULT_PROMPT!r})")
    p.add_argument("--prompts", action="store_true",
                   help="run the built-in set of varied prompts and report which coordinates all share")
    p.add_argument("--min-output", type=float, default=d.min_output, metavar="X",
                   help=f"absolute floor for an output spike (default {d.min_output:g})")
    p.add_argument("--output-ratio", type=float, default=d.output_ratio, metavar="X",
                   help=f"output spike must be this many times the median layer's (default {d.output_ratio:g})")
    p.add_argument("--min-input", type=float, default=d.min_input, metavar="X",
                   help=f"absolute floor for the input spike (default {d.min_input:g})")
    p.add_argument("--input-ratio", type=float, default=d.input_ratio, metavar="X",
                   help=f"input spike must be this many times the median layer's (default {d.input_ratio:g})")
    p.add_argument("--max-rounds", type=int, default=d.max_rounds, metavar="N",
                   help=f"zero what was found and search again up to N times (default {d.max_rounds})")
    p.add_argument("--only-layers", metavar="L,L,...",
                   help="hook only these layers (comma list; medians are then over these layers)")
    p.add_argument("--late-fraction", type=float, default=d.late_fraction, metavar="F",
                   help=f"layers past this fraction of depth hold late spikes (default {d.late_fraction:g})")
    p.add_argument("--massive-floor", type=float, default=d.massive_floor, metavar="X",
                   help=f"a massive activation's |value| is above this (default {d.massive_floor:g}) ...")
    p.add_argument("--massive-ratio", type=float, default=d.massive_ratio, metavar="X",
                   help=f"... and this many times the median |value| of its hidden state "
                        f"(default {d.massive_ratio:g})")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine and --no-cache, shared by `detect` and `trace`."""
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "llama.cpp"],
                   help="what runs the model: torch (a .gguf is converted once into a cached copy), "
                        "llama.cpp (a .gguf or alias run as it is, mmap'd, no conversion; needs "
                        "llama-cpp-python), or auto (default: llama.cpp for a .gguf file it can run, "
                        "unless a torch-only option is set; torch otherwise)")
    p.add_argument("--no-cache", action="store_true",
                   help="never convert a .gguf into a cached copy (implies the llama.cpp engine)")


def engine_from_args(args, ref: str | None = None):
    """The `EngineChoice` for the command's model (`ref`: another of its models), validated before
    anything heavy is loaded."""
    from superweight.runtime.detect import choose_engine

    torch_only = [flag for flag, on in (
        ("--max-memory", getattr(args, "max_memory", None) is not None),
        ("--device", getattr(args, "device", "cpu") != "cpu"),
        ("--dtype", getattr(args, "dtype", "float32") != "float32"),
        ("--cache-dtype", getattr(args, "cache_dtype", "float32") != "float32"),
        ("--layers", getattr(args, "layers_path", None) is not None),
        ("--down-proj", getattr(args, "down_proj_path", None) is not None)) if on]
    return choose_engine(ref or args.model, args.engine, no_cache=getattr(args, "no_cache", False),
                         cache_dtype=getattr(args, "cache_dtype", "float32"), torch_only=torch_only)


def config_from_args(args):
    from superweight.commands._common import parse_list
    from superweight.detect import DetectConfig

    layers = tuple(parse_list(args.only_layers, int, "layer")) if args.only_layers else None
    return DetectConfig(min_output=args.min_output, output_ratio=args.output_ratio,
                        min_input=args.min_input, input_ratio=args.input_ratio,
                        max_rounds=args.max_rounds, late_fraction=args.late_fraction, layers=layers,
                        massive_floor=args.massive_floor, massive_ratio=args.massive_ratio)


def prompts_from_args(args) -> list[str]:
    from superweight.detect import DEFAULT_PROMPT, PROMPT_SET

    prompts = list(args.prompt or [])
    if any(not p.strip() for p in prompts):  # before the (slow) load
        raise SuperweightError("the prompt is empty")
    if args.prompts:
        prompts += [p for p in PROMPT_SET if p not in prompts]
    return prompts or [DEFAULT_PROMPT]


def run(args) -> int:
    from superweight.detect import run_detection
    from superweight.report.detect_tables import render_detection
    from superweight.report.progress import StatusLine
    from superweight.verify import VerdictScale

    from superweight.moe import SuperExpertConfig

    config = config_from_args(args)  # validate before the (slow) load
    prompts = prompts_from_args(args)
    VerdictScale(args.verify_threshold, args.matters_threshold)  # checked before the load
    experts = SuperExpertConfig(percentile=args.expert_percentile, fraction=args.expert_fraction,
                                min_ratio=args.expert_ratio, depth=args.expert_depth,
                                massive_floor=config.massive_floor, massive_ratio=config.massive_ratio)
    if args.expert_draws < 1:
        raise SuperweightError(f"--expert-draws must be at least 1, got {args.expert_draws}")
    choice = engine_from_args(args)
    if choice.engine == "llama.cpp":
        return _run_llamacpp(args, choice, config, prompts)
    out = console()
    lm = load_from_args(args)
    model_id = args.model_id or lm.model_id
    with StatusLine("Detecting and verifying" if args.verify else "Detecting") as status:
        run = run_detection(lm, prompts, config, model_id=model_id,
                            verify_threshold=args.verify_threshold if args.verify else None,
                            matters_threshold=args.matters_threshold, experts=experts,
                            expert_draws=args.expert_draws, choice=choice, on_event=status.on_event)
    result = run.result
    if str(args.json) != "-":  # stdout carries the JSON then
        render_detection(out, lm, run)
    _save_and_plot(args, result, model_id or lm.ref, lm.ref, "", f"weights sha256 {lm.weights_hash()[:12]}")
    if args.plot:
        if run.experts is not None:
            from superweight.report.moe import plot_expert_heatmap

            marked = [s.key for s in run.experts.super_experts + run.experts.outliers]
            png = plot_expert_heatmap(run.experts.profile, f"{lm.ref}: max |expert output| per layer and expert",
                                      args.plot / "expert_maxima.png", marked)
            console(stderr=True).print(f"Plot: {png}", markup=False)
    write_json_arg(args.json, run.to_dict())
    return 0


def _save_and_plot(args, result, catalog_id: str, ref: str, engine: str, digest: str) -> None:
    """`--save-catalog` and `--plot` (Figure 3), the same for both engines."""
    from superweight import catalog

    if args.save_catalog and result.early:
        path = catalog.add(catalog_id, [s.coord for s in result.early],
                           f"superweight detect{engine}{' --verify' if args.verify else ' (not verified: candidates)'}"
                           f" on {ref} ({digest})")
        console(stderr=True).print(f"Added to the local catalog: {path}", markup=False)
    if args.plot:
        from superweight.report.detect_plots import plot_down_proj

        png = plot_down_proj(result.layer_stats[0], f"{ref}: down_proj spikes per layer",
                             args.plot / "down_proj_maxima.png", sorted({s.layer for s in result.early}))
        console(stderr=True).print(f"Plot: {png}", markup=False)


def _run_llamacpp(args, choice, config, prompts) -> int:
    """`detect` with llama.cpp running the GGUF as it is (`superweight.runtime.detect`)."""
    from superweight.report.detect_tables import detection_tables
    from superweight.report.progress import StatusLine
    from superweight.report.tables import show
    from superweight.runtime.detect import run_detection_gguf

    out = console()
    with StatusLine(("Detecting and verifying" if args.verify else "Detecting") + " in llama.cpp") as status:
        run = run_detection_gguf(
            choice.gguf, prompts, config, model_id=args.model_id or choice.model_id, n_threads=args.threads,
            verify_threshold=args.verify_threshold if args.verify else None, matters_threshold=args.matters_threshold,
            ref=args.model, choice=choice, on_event=status.on_event)
    result = run.result
    if str(args.json) != "-":
        show(out, detection_tables(run.model, run))
    _save_and_plot(args, result, args.model_id or choice.model_id or args.model, args.model, " --engine llama.cpp",
                   f"file sha256 {run.model['weights_sha256'][:12]}")
    write_json_arg(args.json, run.to_dict())
    return 0
