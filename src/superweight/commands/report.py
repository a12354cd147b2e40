"""`superweight report`: one page a person opens in a browser, about one model."""

from __future__ import annotations


from superweight.commands._common import (add_eval_args, add_json_arg, add_model_args, console, eval_flags_given,
                                          eval_settings, folder, load_from_args, output_file, parse_list,
                                          write_json_arg)
from superweight.commands.detect import add_detect_args, config_from_args, prompts_from_args


def register(sub) -> None:
    from superweight.overview import INCLUDABLE, REPORT_BITS, REPORT_BLOCKS
    from superweight.commands.detect import add_verdict_args

    p = sub.add_parser("report", help="write an HTML report: massive activations, super weights, figures, results",
                       description="Detect and verify the massive activations and super weights, trace the "
                                   "residual stream, compare with the catalog, and write one self-contained "
                                   "page (DIR/index.html: images embedded, no network needed to view it); add "
                                   "the results of earlier runs (--include) or run Table 1 (--ablate) and "
                                   "Figure 7 + Table 3 (--quantize) here.")
    add_model_args(p)
    add_detect_args(p)
    p.add_argument("--out", type=folder, metavar="DIR", required=True, help="write DIR/index.html")
    p.add_argument("--include", nargs="+", default=[], metavar="JSON",
                   help=f"result files of earlier runs (--json of {', '.join(INCLUDABLE)}) to show")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the causal check (zeroing candidates, ablating massive activations)")
    add_verdict_args(p)
    p.add_argument("--ablate", action="store_true", help="run Table 1 here (four evaluations)")
    p.add_argument("--quantize", action="store_true",
                   help="run Figure 7 (the model, then rtn / rtn-clip / superweight at each --blocks) and "
                        "Table 3 (W8A8: naive, data-free, SmoothQuant) here")
    p.add_argument("--bits", type=int, default=REPORT_BITS, metavar="N",
                   help=f"weight bits of the --quantize sweep (default {REPORT_BITS})")
    p.add_argument("--blocks", default=",".join(map(str, REPORT_BLOCKS)), metavar="N,N",
                   help=f"block sizes of the --quantize sweep (default {','.join(map(str, REPORT_BLOCKS))})")
    add_eval_args(p)
    p.add_argument("--screenshot", type=output_file, metavar="PNG",
                   help="also render the page in headless Chromium (network disabled) to this PNG")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from superweight.errors import SuperweightError
    from superweight.overview import OverviewConfig, gather, planned_evaluations, read_result
    from superweight.report.page import write_report
    from superweight.tensor.quant import check_bits

    detect_config = config_from_args(args)  # everything checked before the (slow) load
    for path in args.include:
        read_result(path)
    runs = args.ablate or args.quantize
    if not runs and eval_flags_given(args):
        raise SuperweightError(f"{', '.join(eval_flags_given(args))} set(s) the evaluation of --ablate and "
                               "--quantize; give one of them")
    blocks = tuple(parse_list(args.blocks, int, "block size"))
    if args.screenshot:  # no browser, or a file where the PNG's folder should be: fail before any work
        from superweight.report.browser import find_browser

        if find_browser() is None:
            raise SuperweightError("--screenshot needs a Chromium browser (Debian's `chromium` package)")
    config = OverviewConfig(prompts=tuple(prompts_from_args(args)), verify=not args.no_verify,
                            verify_threshold=args.verify_threshold, matters_threshold=args.matters_threshold,
                            ablate=args.ablate, quantize=args.quantize, bits=check_bits(args.bits),
                            blocks=blocks, include=tuple(args.include))
    settings = None
    if runs:
        if not eval_flags_given(args):
            args.quick = True
            console(stderr=True).print("note: evaluating with the quick preset (--quick); give --tasks, --ppl, "
                                       "--limit or --max-tokens to choose", markup=False)
        settings = eval_settings(args)
    lm = load_from_args(args)
    err = console(stderr=True)
    if settings is None:
        from superweight.report.progress import StatusLine

        with StatusLine("Detecting, verifying and tracing" if config.verify else "Detecting and tracing") as line:
            overview = gather(lm, config, detect_config, on_event=line.on_event)
    else:
        from superweight.report.progress import RunProgress

        err.print("Detecting, verifying and tracing, then evaluating…", markup=False)
        with RunProgress(f"{lm.ref}: report", planned_evaluations(config), settings.ppl + settings.tasks) as pr:
            overview = gather(lm, config, detect_config, settings.evaluator(pr.on_event), on_event=pr.on_event)
    payload = overview.to_dict()
    page = write_report(overview, args.out, payload.get("command"))
    err.print(f"Report: {page}", markup=False)  # stdout stays free for `--json -`
    write_json_arg(args.json, payload)
    if args.screenshot:
        from superweight.report.browser import screenshot

        err.print(f"Screenshot: {screenshot(page, args.screenshot)}", markup=False)
    return 0
