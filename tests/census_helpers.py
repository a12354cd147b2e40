"""Models for the census tests: tiny planted ones of several architectures, and one whose worker dies.

The dying model is the fault injected from outside the tool: a local folder whose model class (code
that ships with the folder, loaded with trust_remote_code) kills its own process with SIGKILL at the
first forward pass — as the kernel's out-of-memory killer would — and, when asked, only the first
time (a marker file remembers), so a retry or a re-run succeeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from superweight.testing import save_tiny

PLANTED = {"llama": (2, 7, 11), "qwen2": (1, 5, 20), "gpt2": (3, 9, 30)}

FAULT_CODE = '''
import os
import signal
from pathlib import Path

from transformers import LlamaForCausalLM


class KilledOnceLlama(LlamaForCausalLM):
    """Kills its own process at its first forward pass (every time unless `fault_once`)."""

    def forward(self, *args, **kwargs):
        marker = Path(self.config.fault_marker)
        if not marker.exists():
            if self.config.fault_once:
                marker.write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(*args, **kwargs)
'''


def planted_models(root: Path) -> list[str]:
    """One tiny planted model per architecture in `PLANTED`, saved as local folders."""
    return [save_tiny(root / arch, arch, plant=coord) for arch, coord in PLANTED.items()]


def killed_model(path: Path, once: bool = True) -> str:
    """A tiny Llama whose worker process is killed (SIGKILL) at its first forward pass."""
    save_tiny(path, "llama", plant=(2, 7, 11))
    (path / "modeling_fault.py").write_text(FAULT_CODE)
    config = json.loads((path / "config.json").read_text())
    config.update(auto_map={"AutoModelForCausalLM": "modeling_fault.KilledOnceLlama"},
                  fault_marker=str(path / "killed.marker"), fault_once=once)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return str(path)


def comparable(payload: dict) -> dict:
    """A detect payload without what differs between two runs of the same thing (the command line)."""
    return {k: v for k, v in payload.items() if k != "command"}
