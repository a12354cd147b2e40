"""Flags shared by `ablate`, `stopwords` and `scale`: which super weights, what to evaluate, where
to write. Everything is validated before the model loads, so a typo costs no time."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from superweight.commands._common import positive_int
from superweight.errors import SuperweightError

COORDS_HELP = "super weights as L,R,C[;L,R,C...] (layer, row = output channel, col = input channel)"


def add_super_weight_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--coords", metavar="L,R,C[;...]", help=COORDS_HELP + " (default: detect them)")
    g.add_argument("--catalog", action="store_true",
                   help="use the catalog's published coordinates for this model (see --model-id)")
    p.add_argument("--model-id", help="hub id to look up in the catalog (default: from the reference)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="the quick preset: fewer items per task and fewer perplexity tokens")
    p.add_argument("--tasks", metavar="T1,T2",
                   help="zero-shot tasks, comma-separated, or 'none' (default: the paper's seven)")
    p.add_argument("--ppl", metavar="S1,S2", help="perplexity texts (wiki, c4, ptb, or a .txt/.jsonl "
                   "file), comma-separated, or 'none' (default: wiki,c4)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="items per zero-shot task")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="tokens of each perplexity text")
    p.add_argument("--seqlen", type=positive_int, metavar="N",
                   help="perplexity window (default 2048, capped by the model's context)")




def add_out_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"write {what}.md, {what}.json and {what}.png into this folder")




def parse_coords(text: str) -> list:
    """'11,507,1229;2,3,4' → SuperWeight records; a one-line error for anything else."""
    from superweight.records import SuperWeight

    out = []
    for part in (t.strip() for t in re.split(r"[;\s]+", text.strip())):
        if not part:
            continue
        nums = [n.strip() for n in part.strip("()[]").split(",")]
        try:
            values = [int(n) for n in nums]
        except ValueError:
            raise SuperweightError(f"coordinate {part!r} is not L,R,C (three whole numbers)") from None
        if len(values) not in (3, 4):
            raise SuperweightError(f"coordinate {part!r} is not L,R,C (three whole numbers)")
        out.append(SuperWeight(*values[:3], expert=values[3] if len(values) == 4 else None))
    if not out:
        raise SuperweightError("--coords is empty; give L,R,C[;L,R,C...]")
    return out


def settings_from_args(args):
    """The evaluation settings: --quick's preset, then any explicit flag on top."""
    from superweight.ablation import EvalSettings

    base = quick_settings() if args.quick else EvalSettings()
    tasks = base.tasks if args.tasks is None else _names(args.tasks)
    ppl = base.ppl if args.ppl is None else _names(args.ppl)
    if tasks or ppl:
        from superweight.evaluate.suite import preflight

        ppl, tasks = map(tuple, preflight(ppl, tasks))  # unknown names, unfetched data: fail now
    return EvalSettings(tasks=tasks, ppl=ppl,
                        limit=args.limit if args.limit is not None else base.limit,
                        max_tokens=args.max_tokens if args.max_tokens is not None else base.max_tokens,
                        seqlen=args.seqlen if args.seqlen is not None else base.seqlen)


def quick_settings():
    """`--quick`: every task on its first items and short perplexity texts (the evaluation's preset)."""
    from superweight.ablation import EvalSettings
    from superweight.evaluate import QUICK

    names = set(EvalSettings.__dataclass_fields__)
    return EvalSettings(**{k: v for k, v in dict(QUICK).items() if k in names})


def _names(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("none", ""):
        return ()
    return tuple(t.strip() for t in text.split(",") if t.strip())


def super_weights_from_args(lm, args, err) -> tuple[list, str]:
    """(records, where they came from): --coords, the catalog, or detection on the loaded model."""
    from superweight.interventions import check_coords

    if args.coords:
        sws = parse_coords(args.coords)
        check_coords(lm.view, sws)
        return sws, "--coords"
    if args.catalog:
        from superweight import catalog

        model_id = args.model_id or lm.model_id
        entry = catalog.lookup(model_id)
        if entry is None:
            raise SuperweightError(f"the catalog has no entry for {model_id or lm.ref!r}; give --model-id "
                                   "or --coords, or run without --catalog to detect them")
        sws = entry.records()
        check_coords(lm.view, sws)
        return sws, f"catalog ({entry.source})"
    from superweight.detect import detect

    with err.status("Detecting super weights…"):
        result = detect(lm)
    return result.early, "detection"


def load_with_super_weights(args):
    """The start of every ablation command: consoles, the model and its super weights."""
    from superweight.commands._common import console, load_from_args

    out, err = console(), console(stderr=True)
    lm = load_from_args(args)
    sws, source = super_weights_from_args(lm, args, err)
    out.print(describe_super_weights(sws, source))
    return out, err, lm, sws, source


def describe_super_weights(sws, source: str) -> str:
    if not sws:
        return f"Super weights ({source}): none"
    return f"Super weights ({source}): " + ", ".join(s.label() for s in sws)


def write_outputs(out_dir: Path | None, what: str, markdown: str, payload: dict, plot) -> list[Path]:
    """Markdown, JSON and a PNG (via `plot(path)`), each written atomically; nothing when no --out."""
    if out_dir is None:
        return []
    from superweight._io import atomic_write, write_json

    if out_dir.exists() and not out_dir.is_dir():
        raise SuperweightError(f"--out {str(out_dir)!r} exists and is not a folder")
    paths = [atomic_write(out_dir / f"{what}.md", lambda tmp: tmp.write_text(markdown + "\n")),
             write_json(out_dir / f"{what}.json", payload)]
    paths.append(plot(out_dir / f"{what}.png"))
    return paths
