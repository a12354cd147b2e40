"""Writing a model that was changed in memory (quantized, fine-tuned) as a plain checkpoint folder.

One writer for every feature that saves a model: `save_pretrained` (safetensors), the tokenizer and
one manifest JSON go into a temporary folder beside the target, which is then renamed into place,
so an interrupted or failed save leaves nothing half-written (and a replaced checkpoint is put back).
`check_output_dir` refuses, before any work, a target that is a file, a non-empty folder without
`force`, or any model's own folder (inside it or around it): nothing writes into a model's files.

>>> out = check_output_dir("tuned/", force=False, lm=lm)  # doctest: +SKIP
>>> save_checkpoint(lm, out, "superweight-finetune.json", {"kind": "finetuned-model"})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from superweight._io import write_json
from superweight.errors import SuperweightError
from superweight.model.load import LoadedModel


def check_output_dir(out: str | os.PathLike, force: bool, lm: LoadedModel | None = None,
                     sources: Iterable[str] = (), what: str = "output folder") -> Path:
    """The resolved target, after refusing a file, a non-empty folder without `force`, or the model's
    own folder (`lm`'s files, or any of the model references in `sources`). `what` names the target
    in messages the way the user gave it ("--save directory")."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SuperweightError(f"{what} {str(out)!r} exists and is not a directory")
    protected = [Path(s).expanduser().resolve() for s in sources if s and Path(s).expanduser().exists()]
    if lm is not None and lm.kind not in ("hub", "memory"):
        protected.append(Path(lm.source).expanduser().resolve())
    for p in protected:
        if out == p or p in out.parents or out in p.parents:
            raise SuperweightError(f"refusing to write into the model's own files ({p}); choose another {what}")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SuperweightError(f"{what} {str(out)!r} is not empty; add --force (force=True) to replace it")
    return out


def save_checkpoint(lm: LoadedModel, out: str | os.PathLike, manifest_name: str, manifest: dict, *,
                    force: bool = False, what: str = "output folder") -> Path:
    """Write the model as it is in memory, its tokenizer and `manifest` (as `manifest_name`) to
    `out`, atomically; the target is checked again first (see `check_output_dir`)."""
    out = check_output_dir(out, force, lm, what=what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        with _no_bar():
            lm.model.save_pretrained(tmp, safe_serialization=True, **_shard_kwargs(lm))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)
        write_json(tmp / manifest_name, manifest)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old / out.name, out)  # put the previous checkpoint back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


@contextmanager
def _no_bar() -> Iterator[None]:
    """transformers' 'Writing model shards' bar off (the caller's progress display says what is saved)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _shard_kwargs(lm: LoadedModel) -> dict:
    """Under a memory budget, shards of half the budget (transformers holds one shard in memory)."""
    from superweight.model.offload import model_is_offloaded

    if lm.plan is None or lm.plan.budget is None or not model_is_offloaded(lm.model):
        return {}
    return {"max_shard_size": max(lm.plan.budget // 2, lm.plan.largest)}


MANIFEST_GLOB = "superweight-*.json"  # superweight-quantization.json, superweight-finetune.json


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest a superweight feature wrote into a checkpoint folder (how it was made), if any."""
    import json

    folder = Path(path)
    found = sorted(folder.glob(MANIFEST_GLOB)) if folder.is_dir() else []
    return json.loads(found[0].read_text()) if found else None
