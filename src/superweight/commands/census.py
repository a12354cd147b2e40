"""`superweight census`: detection (+ verification, + the quick Table 1) on many models, one worker each."""

from __future__ import annotations

from superweight.commands._common import add_json_arg, console, folder, positive_int, write_json_arg


def register(sub) -> None:
    from superweight.model.gguf import CACHE_DTYPES
    from superweight.model.load import DTYPES
    from superweight.verify import VERIFY_THRESHOLD

    p = sub.add_parser("census", help="detect (and verify) super weights in many models: local workers or Ray",
                       description="Run detection on every model given (hub ids, local folders, .gguf files, "
                                   "aliases), each in its own worker process, so that a model that fails is "
                                   "recorded and the others go on. Results go into DIR/results/ as each model "
                                   "finishes; a re-run skips what is done. Writes the census table as "
                                   "DIR/census.json, DIR/census.csv and DIR/index.html.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="model references")
    p.add_argument("--from-file", action="append", default=[], metavar="FILE",
                   help="a file of model references, one per line (# comments); repeatable")
    p.add_argument("--out", type=folder, required=True, metavar="DIR", help="the census folder (resumable store)")
    p.add_argument("--verify", action="store_true", help="verify each candidate and massive activation causally")
    p.add_argument("--verify-threshold", type=float, default=VERIFY_THRESHOLD, metavar="X",
                   help=f"perplexity ratio of --verify (default {VERIFY_THRESHOLD:g})")
    p.add_argument("--ablate", choices=["quick"], help="also run Table 1 with the quick evaluation preset")
    from superweight.commands.detect import add_detect_args

    add_detect_args(p)
    p.add_argument("--dtype", default="float32", choices=[*DTYPES, "auto"], help="weights dtype (default float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (on Ray: a GPU per model unless cpu)")
    p.add_argument("--cache-dtype", default="float32", choices=list(CACHE_DTYPES),
                   help="dtype of the cached copy of a .gguf or alias (default float32)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    p.add_argument("--layers", dest="layers_path", metavar="PATH", help="override: decoder layer list path")
    p.add_argument("--down-proj", dest="down_proj_path", metavar="PATH", help="override: down projection path")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="local worker processes (default 1; on Ray, the cluster's resources decide)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="RAM for all local workers together (default: 80%% of the free RAM); each model reserves "
                        "its weights' size, one larger than a worker's share runs alone with all of it; on Ray, "
                        "the most one task may request")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch CPU threads per worker (default: the cores divided by the workers; on Ray: 1, "
                        "and the CPUs each task requests)")
    p.add_argument("--retry-failed", action="store_true", help="run again the models recorded as failed")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run as Ray tasks on the cluster at ADDRESS ('auto': the one `ray start --head` made)")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="on Ray: times a task is retried when its worker or node dies (default 1)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    pool = None
    if args.ray is None:  # the workers import torch while the input is checked; closed on any error
        from superweight.census.local import LocalPool

        pool = LocalPool(args.workers)
    try:
        return _run(args, pool)
    finally:
        if pool is not None:
            pool.close()


def _run(args, pool) -> int:
    from superweight.census import CensusConfig, read_refs, run_census
    from superweight.commands.detect import config_from_args, prompts_from_args
    from superweight.report.census import CensusProgress, census_table, write_outputs
    from superweight.report.tables import show

    refs = read_refs(args.models, args.from_file)  # everything checked before any model runs
    config = CensusConfig(detect=config_from_args(args).to_dict(), prompts=tuple(prompts_from_args(args)),
                          verify_threshold=args.verify_threshold if args.verify else None, ablate=args.ablate,
                          dtype=args.dtype, device=args.device, cache_dtype=args.cache_dtype,
                          trust_remote_code=args.trust_remote_code, layers=args.layers_path,
                          down_proj=args.down_proj_path)
    progress = CensusProgress(console(stderr=True))
    census = run_census(refs, config, args.out, workers=args.workers, max_memory=args.max_memory,
                        threads=args.threads, retry_failed=args.retry_failed, ray=args.ray, retries=args.retries,
                        on_event=progress.on_event, pool=pool)
    payload = census.to_dict()
    title = f"superweight census: {len(refs)} models"
    if str(args.json) != "-":
        show(console(), [census_table(census.rows, title)])
    written = write_outputs(args.out, payload, title, payload.get("command"))
    console(stderr=True).print("Wrote " + ", ".join(str(p) for p in written), markup=False)
    write_json_arg(args.json, payload)
    if census.failed:
        console(stderr=True).print(f"{len(census.failed)} of {len(refs)} model(s) failed (see the table); "
                                   "--retry-failed runs them again", markup=False)
        return 1
    return 0
