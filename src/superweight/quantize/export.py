"""Save a fake-quantized model as a plain safetensors checkpoint that transformers loads as is.

The weights hold the dequantized values (fake quantization: same dtype and shapes as the original),
so any transformers user can load and evaluate it; a manifest next to them says how it was made and
which super weights were kept in full precision. The checkpoint is written into a temporary folder
beside the target and renamed into place, so an interrupted save leaves nothing half-written; an
existing non-empty target needs `force`, and a model's own folder is never written into (the one
writer every feature uses: `superweight.model.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path

from superweight._io import result_header
from superweight.model import checkpoint
from superweight.model.load import LoadedModel

MANIFEST_NAME = "superweight-quantization.json"
SAVE_TARGET = "--save directory"


def check_output_dir(out: str | os.PathLike, force: bool, lm: LoadedModel | None = None,
                     sources: tuple[str, ...] = ()) -> Path:
    """Refuse a non-empty target without `force`, a file, or any model's own folder; before any work."""
    return checkpoint.check_output_dir(out, force, lm, sources, what=SAVE_TARGET)


def save_checkpoint(lm: LoadedModel, out: str | os.PathLike, manifest: dict, force: bool = False) -> Path:
    """Write the model as it is in memory (+ tokenizer + manifest) to `out`, atomically."""
    return checkpoint.save_checkpoint(lm, out, MANIFEST_NAME,
                                      {**result_header("quantized-model", model=lm.describe()), **manifest},
                                      force=force, what=SAVE_TARGET)


def quantization_manifest(lm: LoadedModel, config, report, metrics: dict | None = None) -> dict:
    """How a quantized model was made: the config, the super weights kept with their (exact) values,
    what quantization did, and its evaluation if there was one."""
    kept = [{"layer": s.layer, "row": s.row, "col": s.col, "expert": s.expert,
             "value": lm.view.down_proj(s.layer, s.expert).value(s.row, s.col)}
            for s in report.super_weights] if config.protects != "none" else []
    return {"config": config.to_dict(), "super_weights_kept": kept, "summary": report.summary(),
            "metrics": metrics or {}}


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The quantization manifest of a saved checkpoint folder, if it has one."""
    import json

    f = Path(path) / MANIFEST_NAME
    return json.loads(f.read_text()) if f.is_file() else None
