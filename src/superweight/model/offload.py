"""Weights that accelerate keeps off the module: read them, and edit them for the duration of a block.

A model loaded under a memory budget (`load_model(..., max_memory=...)`) is dispatched by accelerate:
every module of an offloaded layer holds `meta` placeholders and an `AlignDevicesHook`
(`module._hf_hook`) whose `weights_map` — a `PrefixedDataset` over one `OffloadedWeightsLoader` —
loads the real tensors at the start of the module's own forward (from the model's safetensors files,
by reference) and puts the placeholders back at its end. A PyTorch forward hook, or any code outside
that forward, therefore sees `meta` tensors. This module is the one place that knows it:

- `read_param(module, name)` gives the real values: the live parameter of a resident module, a fresh
  copy loaded from the weights map for an offloaded one.
- `Overrides` edits parameters for a block and restores the exact original bits on exit. A resident
  parameter is written in place (the entries it replaces are kept in memory, as every edit here did
  before offloading existed). An offloaded one is never written: the loader reads its in-memory
  `state_dict` before its on-disk `index` (accelerate's own precedence), so the edited tensor is put
  in `state_dict` (one matrix in memory per edited parameter) or, with `spill=True`, saved in a
  private temporary folder that `index` points to for the block (quantizing a whole model under a
  budget). On exit the previous entries are put back and the folder is removed: the model's own
  files are only ever read.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, MutableMapping

import torch
from torch import nn

from superweight._io import cache_dir
from superweight.errors import SuperweightError


def private_folder(kind: str) -> Path:
    """A new temporary folder under the cache's `offload/`, named with this process's id; folders
    left by processes that no longer run (killed before their clean-up) are removed first."""
    root = cache_dir("offload")
    for old in root.iterdir():
        parts = old.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_offload_hook(module: nn.Module) -> bool:
    from accelerate.utils import has_offloaded_params

    return has_offloaded_params(module)


def is_offloaded(module: nn.Module, name: str = "weight") -> bool:
    """True when `module.<name>` is a meta placeholder whose values accelerate keeps elsewhere."""
    t = getattr(module, name, None)
    return isinstance(t, torch.Tensor) and t.device.type == "meta" and _has_offload_hook(module)


def model_is_offloaded(model: nn.Module) -> bool:
    """True when some of the model's weights live off the modules (disk, or CPU behind a GPU)."""
    devices = set(getattr(model, "hf_device_map", {}).values())
    return "disk" in devices or ("cpu" in devices and len(devices) > 1)


def input_device(model: nn.Module) -> torch.device:
    """Where the model's input ids go: the input embedding's execution device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and _has_offload_hook(emb) and emb._hf_hook.execution_device is not None:
        return torch.device(emb._hf_hook.execution_device)
    if emb is not None and getattr(emb, "weight", None) is not None and emb.weight.device.type != "meta":
        return emb.weight.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


@dataclass
class _Slot:
    """Where an offloaded tensor is looked up: `store` (in memory, read first), then `index` (files)."""

    store: MutableMapping
    index: dict | None
    keys: list[str]  # the tensor's key, and those of tied weights that read the same stored tensor

    def memento(self) -> list[tuple]:
        return [(k, k in self.store, self.store.get(k), self.index is not None and k in self.index,
                 self.index.get(k) if self.index is not None else None) for k in self.keys]

    def put_back(self, memento: list[tuple]) -> None:
        for key, in_store, value, in_index, entry in memento:
            if in_store:
                self.store[key] = value
            else:
                self.store.pop(key, None)
            if self.index is not None:
                if in_index:
                    self.index[key] = entry
                else:
                    self.index.pop(key, None)

    def in_memory(self, t: torch.Tensor) -> None:
        for k in self.keys:
            self.store[k] = t

    def in_file(self, file: Path, dtype: torch.dtype) -> None:
        entry = {"safetensors_file": str(file), "weight_name": "w", "dtype": str(dtype).removeprefix("torch.")}
        for k in self.keys:
            self.store.pop(k, None)
            self.index[k] = entry


def _slot(module: nn.Module, name: str) -> _Slot:
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    if not _has_offload_hook(module):
        raise SuperweightError(f"{type(module).__name__}.{name} is on the meta device but accelerate does "
                               "not offload it: the model was not fully loaded")
    wm = module._hf_hook.weights_map
    if isinstance(wm, PrefixedDataset):
        base, key = wm.dataset, wm.prefix + name
    else:
        base, key = wm, name
    if isinstance(base, OffloadedWeightsLoader):
        store, index = base.state_dict, base.index
    elif isinstance(base, dict):
        store, index = base, None
    else:
        raise SuperweightError(f"cannot edit offloaded weights kept in a {type(base).__name__}")
    keys = [key]
    if index is not None and key not in store and key in index:  # tied weights: one stored tensor
        keys += [k for k, v in index.items() if k != key and k not in store and v == index[key]]
    elif key in store:
        keys += [k for k, v in store.items() if k != key and v is store[key]]
    return _Slot(store, index, keys)


def read_param(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The real values of `module.<name>`: the live tensor if resident, else a copy from the offload map.

    Writing into the copy changes nothing; edit through `Overrides`.
    """
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor) or t.device.type != "meta":
        return t
    slot = _slot(module, name)
    value = module._hf_hook.weights_map[name]
    if slot.keys[0] in slot.store:  # an in-memory tensor: hand out a copy, not the stored one
        value = value.clone()
    return value.detach()


class Overrides:
    """Parameter edits (whole tensors or some entries) that hold until `restore()` / the end of `with`.

    >>> proj = lm.view.down_proj(11)
    >>> with Overrides() as edits:  # the forward pass runs with the entry zeroed, resident or offloaded
    ...     edits.set_entries(proj.module, "weight", (507, 1229), 0.0)
    ...     float(proj.matrix()[507, 1229].detach())
    0.0
    >>> float(proj.matrix()[507, 1229].detach())  # every edited tensor is bit-identical to before again
    5.875732421875

    `spill=True` saves edited offloaded tensors in a private temporary folder instead of memory (for
    edits of many matrices, e.g. quantization). `keep=False` keeps no copy of resident originals and
    makes the edits permanent (`restore()` does nothing); spilled files then live as long as `owner`.
    """

    _files = itertools.count()

    def __init__(self, *, spill: bool = False, keep: bool = True, owner: object | None = None):
        if not keep and owner is None:
            raise ValueError("permanent edits (keep=False) need an owner for their files' lifetime")
        self.spill, self.keep, self.owner = spill, keep, owner
        self._undo: list[Callable[[], None]] = []
        self._mem: dict[tuple[int, str], torch.Tensor] = {}  # offloaded tensors this object put in memory
        self._dir: Path | None = None

    def __enter__(self) -> "Overrides":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def set(self, module: nn.Module, name: str, value: torch.Tensor) -> None:
        """Replace `module.<name>` by `value` (same shape; cast to the parameter's dtype)."""
        if is_offloaded(module, name):
            t = value.detach().to(getattr(module, name).dtype)
            self._install(module, name, t if self.spill else t.clone())
            return
        p = getattr(module, name)
        with torch.no_grad():
            if self.keep:
                self._undo.append(_copy_back(p, p.detach().clone()))
            p.copy_(value)

    def set_entries(self, module: nn.Module, name: str, index, values) -> None:
        """`module.<name>[index] = values` (any index torch takes: ints, tuples of index tensors)."""
        if not is_offloaded(module, name):
            p = getattr(module, name)
            with torch.no_grad():
                if self.keep:
                    self._undo.append(_copy_back(p, p[index].clone(), index))
                p[index] = values
            return
        t = self._mem.get((id(module), name))
        slot = _slot(module, name)
        installed = t is not None and slot.store.get(slot.keys[0]) is t  # still the one the forward reads:
        if not installed:  # later entries of it are written in place, else start from what is current
            t = read_param(module, name)  # a fresh copy
        with torch.no_grad():
            t[index] = values
        if not installed:
            self._install(module, name, t)

    def _install(self, module: nn.Module, name: str, t: torch.Tensor) -> None:
        slot = _slot(module, name)
        if self.keep:
            memento = slot.memento()
            self._undo.append(lambda: slot.put_back(memento))
        if self.spill and slot.index is not None:
            from safetensors.torch import save_file

            file = self._folder() / f"{next(self._files)}.safetensors"
            save_file({"w": t.contiguous().cpu()}, str(file))
            slot.in_file(file, t.dtype)
            self._mem.pop((id(module), name), None)
        else:
            slot.in_memory(t)
            self._mem[(id(module), name)] = t

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = private_folder("edits")
            if not self.keep:
                weakref.finalize(self.owner, shutil.rmtree, str(self._dir), True)
        return self._dir

    def restore(self) -> None:
        """Put every edited tensor back exactly as it was; remove the temporary folder."""
        if not self.keep:
            return
        try:
            with torch.no_grad():
                while self._undo:
                    self._undo.pop()()
        finally:
            self._mem.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


def _copy_back(p: torch.Tensor, old: torch.Tensor, index=None) -> Callable[[], None]:
    def undo() -> None:
        if index is None:
            p.copy_(old)
        else:
            p[index] = old
    return undo
