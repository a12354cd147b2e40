"""Memory budgets: decide, before any weight loads, which layers stay in memory and which on disk.

The plan is accelerate's: an empty model is built on the meta device from the config alone
(`init_empty_weights`), its module sizes are computed at the load dtype, and `infer_auto_device_map`
(with the model's `_no_split_modules`, so a decoder layer is never cut in two) places modules on the
GPUs, then in CPU RAM up to the budget, then on "disk". Transformers' `from_pretrained` then loads
with that `device_map`; "disk" layers are not copied anywhere: accelerate reads them from the model's
own safetensors files when their forward runs, one module at a time (see `superweight.model.offload`).

The budget bounds the weights held in CPU RAM; accelerate keeps room in it for the largest layer
coming back from disk. A budget smaller than the largest piece that cannot be split is refused here,
before loading. Without `max_memory`, a model whose weights would not fit in the available RAM gets an
automatic budget, and the loader says so in one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from superweight.errors import SuperweightError

FIT_FRACTION = 0.8  # weights fit when they need at most this share of the available RAM ...
AUTO_BUDGET_FRACTION = 0.5  # ... otherwise the automatic budget is this share of it

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)\s*$", re.IGNORECASE)


def parse_size(size: str | int) -> int:
    """Bytes in a size such as '2GiB', '500MB', '1.5 GB' (units B, KB..TB = 10³.., KiB..TiB = 2¹⁰..).

    >>> parse_size("2GiB"), parse_size("500MB")
    (2147483648, 500000000)
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise SuperweightError(f"memory budget {size!r} is not a size: give a number and a unit, "
                                   "e.g. 2GiB or 500MB (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise SuperweightError(f"memory budget {size!r} must be larger than zero")
    return value


def format_size(n: int | float, up: bool = False) -> str:
    """'2.0 GiB', '512.0 MiB'; `up` rounds up to the tenth shown (for a size that must suffice)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{math.ceil(n * 10) / 10 if up else n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_ram() -> int:
    """Bytes of RAM the OS can give without swapping (psutil's `available`, i.e. MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass
class MemoryPlan:
    """Where the weights go: `device_map` None means the whole model on one device."""

    dtype: torch.dtype
    weights_bytes: int  # all parameters and buffers at `dtype`
    budget: int | None = None  # bytes of CPU RAM for weights; None: no budget
    source: str = "none"  # "given" (max_memory), "auto" (the model would not fit) or "none"
    device_map: dict | None = None
    largest: int = 0  # the largest piece that cannot be split, in bytes
    largest_names: list[str] = field(default_factory=list)
    available: int | None = None  # the available RAM that the automatic choice saw

    @property
    def offloads(self) -> bool:
        return self.device_map is not None and "disk" in self.device_map.values()

    def auto_message(self) -> str:
        return (f"note: the weights need {format_size(self.weights_bytes)} at {_dtype_name(self.dtype)} and "
                f"{format_size(self.available or 0)} of RAM is available: loading within a memory budget of "
                f"{format_size(self.budget or 0)}, layers beyond it stay on disk (choose with --max-memory)")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def empty_model(config, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules on the meta device: shapes and sizes, no memory, nothing read."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # not done on meta tensors; the device map must keep tied weights together
    return model


def _gpu_memory(device: str) -> dict:
    """{gpu index: free bytes} for the GPUs `device` names ("auto": all of them)."""
    from accelerate.utils import get_max_memory

    gpus = {k: v for k, v in get_max_memory().items() if isinstance(k, int)}
    if device == "auto":
        return gpus
    index = torch.device(device).index or 0
    return {index: gpus[index]} if index in gpus else {}


def checkpoint_bytes(files, dtype: torch.dtype) -> int:
    """The size at `dtype` of the tensors in safetensors `files`, from their headers alone (nothing
    else is read): what loading them takes, known without building the model."""
    import json
    import math
    import struct

    total = 0
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total * torch.empty((), dtype=dtype).element_size()


def plan_memory(config, dtype: torch.dtype, device: str = "cpu", max_memory: str | int | None = None,
                trust_remote_code: bool = False, weights_bytes: int | None = None) -> MemoryPlan:
    """Decide where each module goes, before loading; a clear error for an impossible budget.

    `device` "cpu", "cuda[:N]" or "auto" (every GPU, as device_map="auto"); `max_memory` the CPU RAM
    budget for weights ('2GiB'), or None for the automatic choice. `weights_bytes`, when the
    checkpoint's files say it (`checkpoint_bytes`), spares building an empty model for a model that
    fits on the CPU without a budget: the common case, decided from the files' headers alone.

    >>> from transformers import AutoConfig
    >>> plan = plan_memory(AutoConfig.from_pretrained(lm.source), torch.float32, max_memory="256MiB")
    >>> plan.device_map["model.embed_tokens"], plan.device_map["model.layers.29"]
    ('cpu', 'disk')
    """
    from accelerate.utils import compute_module_sizes, get_max_layer_size

    budget = parse_size(max_memory) if max_memory is not None else None
    if budget is None and device == "cpu" and weights_bytes is not None:
        available = available_ram()
        if weights_bytes <= FIT_FRACTION * available:  # fits: no device map, nothing more to plan
            return MemoryPlan(dtype, weights_bytes, available=available)
    meta = empty_model(config, dtype, trust_remote_code)
    sizes = compute_module_sizes(meta, dtype=dtype)
    plan = MemoryPlan(dtype, int(sizes[""]), budget, "given" if budget is not None else "none")
    gpus = _gpu_memory(device) if device == "auto" or device.startswith("cuda") else {}
    if budget is None:
        plan.available = available_ram()
        if plan.weights_bytes <= FIT_FRACTION * plan.available or sum(gpus.values()) >= plan.weights_bytes:
            if device == "auto" and gpus:  # spread over the GPUs, RAM for what does not fit
                plan.device_map = _device_map(meta, {**gpus, "cpu": int(FIT_FRACTION * plan.available)}, dtype)
            return plan
        plan.budget, plan.source = int(AUTO_BUDGET_FRACTION * plan.available), "auto"
    no_split = list(getattr(meta, "_no_split_modules", None) or [])
    plan.largest, plan.largest_names = get_max_layer_size(list(meta.named_children()), sizes, no_split)
    if not gpus and plan.budget < plan.largest:
        names = plan.largest_names[0] + (f" and {len(plan.largest_names) - 1} more"
                                         if len(plan.largest_names) > 1 else "")
        what = "memory budget" if plan.source == "given" else "automatic memory budget (half the free RAM)"
        raise SuperweightError(
            f"{what} {format_size(plan.budget)} is too small: the largest piece that cannot be split "
            f"({names}) needs {format_size(plan.largest)} at {_dtype_name(dtype)}; give --max-memory "
            f"{format_size(plan.largest, up=True).replace(' ', '')} or more")
    plan.device_map = _device_map(meta, {**gpus, "cpu": plan.budget}, dtype)
    return plan


def _device_map(meta: nn.Module, max_memory: dict, dtype: torch.dtype) -> dict:
    from accelerate import infer_auto_device_map

    no_split = list(getattr(meta, "_no_split_modules", None) or [])
    return dict(infer_auto_device_map(meta, max_memory=max_memory, no_split_module_classes=no_split,
                                      dtype=dtype))


def summarize_device_map(device_map: dict | None, layers_prefix: str, num_layers: int,
                         device: str) -> dict:
    """Compact: per device, how many decoder layers and which ("0-3,7"); other modules by name."""
    if not device_map:
        return {"layers": {device: {"count": num_layers, "which": _ranges(range(num_layers))}}, "other": {}}
    per_device: dict[str, set[int]] = {}
    other: dict[str, str] = {}
    prefix = layers_prefix + "."
    for name, dev in device_map.items():
        dev = str(dev) if not isinstance(dev, int) else f"cuda:{dev}"
        if name == "" or prefix.startswith(name + "."):  # the layers' parent (or the whole model)
            per_device.setdefault(dev, set()).update(range(num_layers))
        elif name.startswith(prefix):
            index = name[len(prefix):].split(".", 1)[0]
            if index.isdigit():
                per_device.setdefault(dev, set()).add(int(index))
                continue
        if name and name != layers_prefix:
            other[name] = dev
    return {"layers": {d: {"count": len(s), "which": _ranges(sorted(s))} for d, s in per_device.items()},
            "other": other}


def _ranges(values) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8'."""
    values = list(values)
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)
