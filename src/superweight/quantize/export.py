"""Save a fake-quantized model as a plain safetensors checkpoint that transformers loads as is.

The weights hold the dequantized values (fake quantization: same dtype and shapes as the original),
so any transformers user can load and evaluate it; a manifest next to them says how it was made and
which super weights were kept in full precision. The checkpoint is written into a temporary folder
beside the target and renamed into place, so an interrupted save leaves nothing half-written; an
existing non-empty target needs `force`, and a model's own folder is never written into.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from superweight._io import result_header, write_json
from superweight.errors import SuperweightError
from superweight.model.load import LoadedModel

MANIFEST_NAME = "superweight-quantization.json"


def check_output_dir(out: str | os.PathLike, force: bool, lm: LoadedModel | None = None,
                     sources: tuple[str, ...] = ()) -> Path:
    """Refuse a non-empty target without `force`, a file, or any model's own folder; before any work."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SuperweightError(f"--save target {str(out)!r} exists and is not a directory")
    protected = [Path(s).expanduser().resolve() for s in sources if s]
    if lm is not None and lm.kind != "hub":
        protected.append(Path(lm.source).expanduser().resolve())
    for p in protected:
        if out == p or p in out.parents or out in p.parents:
            raise SuperweightError(f"refusing to write into the model's own files ({p}); choose another --save DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SuperweightError(f"--save directory {str(out)!r} is not empty; add --force to replace it")
    return out


def save_checkpoint(lm: LoadedModel, out: str | os.PathLike, manifest: dict, force: bool = False) -> Path:
    """Write the model as it is in memory (+ tokenizer + manifest) to `out`, atomically."""
    out = check_output_dir(out, force, lm)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        lm.model.save_pretrained(tmp, safe_serialization=True, **_shard_kwargs(lm))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST_NAME, {**result_header("quantized-model", model=lm.describe()), **manifest})
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


def _shard_kwargs(lm: LoadedModel) -> dict:
    """Under a memory budget, shards of half the budget (transformers holds one shard in memory)."""
    from superweight.model.offload import model_is_offloaded

    if lm.plan is None or lm.plan.budget is None or not model_is_offloaded(lm.model):
        return {}
    return {"max_shard_size": max(lm.plan.budget // 2, lm.plan.largest)}


def quantization_manifest(lm: LoadedModel, config, report, metrics: dict | None = None) -> dict:
    """How a quantized model was made: the config, the super weights kept with their (exact) values,
    what quantization did, and its evaluation if there was one."""
    kept = [{"layer": s.layer, "row": s.row, "col": s.col, "expert": s.expert,
             "value": float(lm.view.down_proj(s.layer, s.expert).matrix()[s.row, s.col].detach())}
            for s in report.super_weights] if config.method == "superweight" else []
    return {"config": config.to_dict(), "super_weights_kept": kept, "summary": report.summary(),
            "metrics": metrics or {}}


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The quantization manifest of a saved checkpoint folder, if it has one."""
    import json

    f = Path(path) / MANIFEST_NAME
    return json.loads(f.read_text()) if f.is_file() else None
