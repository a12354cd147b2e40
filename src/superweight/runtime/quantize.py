"""Quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize`), a few tensors kept at
other types.

Nothing here quantizes a number: llama.cpp chooses every tensor's type from its stock recipe for the
file type (`Q4_K_M` keeps some `ffn_down` and `attn_v` at Q6_K, the output at Q6_K, ...), and our
only levers are the ones its C API offers — `tt_overrides` (regular expressions on tensor names,
searched as `std::regex_search` does, first matching pattern wins), an importance matrix
(`imatrix`: per tensor, the mean of the squared input activations per column) and `kv_overrides`
(metadata keys written into the output). Everything is checked before llama.cpp starts (types,
patterns, the imatrix, paths, free disk space), the file is written to a temporary file in the
output's folder and renamed into place, and what was done is read back from the written file with
`gguf` (per-tensor types, size, bits per weight).

One quirk of llama.cpp matters for comparisons: its stock mixes give some layers more bits by
counting tensors of a kind as it goes (`Q4_K_M` keeps every third or so `ffn_down` at Q6_K), and a
tensor whose type an override sets is not counted, so one override shifts the mix of every later
layer of that kind (measured: `blk.1.ffn_down` at Q8_0 turns `blk.2.ffn_down` from Q6_K into Q4_K).
`pin_types` ({tensor: type}, e.g. the stock file's types from `gguf_tensors`) fixes every other
tensor at its stock type, so that a protected file differs from the stock one on exactly the
protected tensors.

The manifest goes into the GGUF's own metadata under `superweight.*` (llama.cpp's `kv_overrides`
hold strings of at most 127 bytes, so each override is its own key) and, in the llama-quantize
convention, `quantize.imatrix.*`; the size and bits per weight are properties of the file and are
read from it (`read_manifest`).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

from superweight._io import check_output_file
from superweight.errors import SuperweightError

# llama_ftype names a user may pick (the binding's LLAMA_FTYPE_MOSTLY_<name>; F32 is ALL_F32)
GGUF_TYPES: tuple[str, ...] = (
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1",
    "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
    "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "F16", "BF16", "F32")
# llama-quantize refuses the very low-bit types without an importance matrix; we ask for one for
# every IQ type (the rule) and for Q2_K_S (llama-quantize's rule)
NEEDS_IMATRIX: frozenset[str] = frozenset(t for t in GGUF_TYPES if t.startswith("IQ")) | {"Q2_K_S"}
# ggml tensor types an override may ask for (gguf.GGMLQuantizationType names = ggml_type)
TENSOR_TYPES: tuple[str, ...] = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q5_1", "Q4_K", "Q4_0", "Q4_1", "Q3_K", "Q2_K",
    "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
MANIFEST_PREFIX = "superweight."
KV_STR_MAX = 127  # llama_model_kv_override.val_str is char[128]
HEADER_SLACK = 16 << 20  # bytes allowed for metadata and alignment in the disk-space bound


def ftype_value(name: str) -> int:
    """The llama_ftype number of a GGUF type name (`"Q4_K_M"` → 15), from the binding's constants."""
    from superweight.runtime.llamacpp import llama_cpp

    key = name.upper()
    if key not in GGUF_TYPES:
        raise SuperweightError(f"unknown GGUF type {name!r}; choose one of {', '.join(GGUF_TYPES)}")
    lib = llama_cpp()
    return getattr(lib, "LLAMA_FTYPE_ALL_F32" if key == "F32" else f"LLAMA_FTYPE_MOSTLY_{key}")


def tensor_type_value(name: str) -> int:
    """The ggml_type number of a tensor type name (`"Q8_0"` → 8)."""
    import gguf

    key = name.upper()
    if key not in TENSOR_TYPES:
        raise SuperweightError(f"unknown tensor type {name!r}; choose one of {', '.join(TENSOR_TYPES)}")
    return int(gguf.GGMLQuantizationType[key])


def gguf_tensors(path: str | os.PathLike) -> dict[str, dict]:
    """`{name: {"type": ggml type name, "shape": [ne0, ne1, ...], "elements": n, "bytes": n}}` of a GGUF."""
    return _read_header(path)[1]


def gguf_architecture(path: str | os.PathLike) -> str:
    """The GGUF's `general.architecture` (what `compute_imatrix(arch=...)` names tensors by)."""
    meta, _ = _read_header(path, keep=lambda k: k == "general.architecture")
    if "general.architecture" not in meta:
        raise SuperweightError(f"{path} does not say its architecture (general.architecture)")
    return meta["general.architecture"]


def matching(pattern: str, names: Sequence[str]) -> list[str]:
    """The tensor names a llama.cpp override pattern selects (`std::regex_search`: anywhere in the name)."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise SuperweightError(f"tensor pattern {pattern!r} is not a regular expression: {e}") from None
    return [n for n in names if rx.search(n)]


def assigned_types(overrides: Sequence[tuple[str, str]], names: Sequence[str]) -> dict[str, str]:
    """`{tensor: type}` that the overrides ask for: the first matching pattern wins, as in llama.cpp."""
    out: dict[str, str] = {}
    for pattern, kind in overrides:
        for name in matching(pattern, names):
            out.setdefault(name, kind.upper())
    return out


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, ftype: str, *,
                  overrides: Sequence[tuple[str, str]] = (), imatrix: dict | None = None,
                  imatrix_source: str | None = None, imatrix_chunks: int | None = None,
                  nthread: int | None = None, force: bool = False, allow_requantize: bool = False,
                  metadata: dict[str, str] | None = None, pin_types: dict[str, str] | None = None,
                  pinned_from: str | None = None) -> dict:
    """Quantize GGUF `src` into `dst` as llama.cpp's `ftype` (e.g. "Q4_K_M"), with per-tensor overrides.

    `overrides` are `(pattern, tensor type)` pairs (first matching pattern wins, each must match a
    tensor of `src`); `imatrix` is `{tensor name: float32 [in_features · experts]}` (`compute_imatrix`),
    named in the file by `imatrix_source`; `metadata` adds `superweight.<key>` strings to the file.
    `allow_requantize` lets an already quantized `src` be quantized again (quality is lost twice).
    `pin_types` ({tensor name: type}, say a stock file's, named by `pinned_from`) keeps every tensor
    that no override matches at that type (see the module's note on llama.cpp's counting).
    Returns the manifest: ftype, overrides, imatrix source, per-tensor types read back from `dst`,
    the tensors whose type an override set, size and bits per weight.

    >>> quantize_gguf("model-f32.gguf", "model-q4km.gguf", "Q4_K_M",
    ...               overrides=[(r"^blk\\.11\\.ffn_down\\.weight$", "Q8_0")])  # doctest: +SKIP
    """
    from superweight import _io
    from superweight.runtime.protect import tensor_pattern

    src, dst = Path(src), Path(dst)
    key = ftype.upper()
    ftype_value(key)  # unknown type → error
    overrides = [(str(p), str(t).upper()) for p, t in overrides]
    for _, kind in overrides:
        tensor_type_value(kind)
    if not src.is_file():
        raise SuperweightError(f"no GGUF file at {src}")
    if key in NEEDS_IMATRIX and not imatrix:
        raise SuperweightError(f"{key} needs an importance matrix (compute one from a text with --imatrix)")
    source = gguf_tensors(src)
    for pattern, _ in overrides:
        if not matching(pattern, list(source)):
            raise SuperweightError(f"tensor pattern {pattern!r} matches no tensor of {src.name}")
    pins = _pins(pin_types or {}, overrides, source)
    if imatrix:
        _check_imatrix(imatrix, source)
    quantized = sorted({t["type"] for t in source.values()} - {"F32", "F16", "BF16"})
    if quantized and not allow_requantize:
        raise SuperweightError(f"{src.name} is already quantized ({', '.join(quantized)}); requantizing "
                               "loses quality twice — allow it explicitly (allow_requantize)")
    check_output_file(dst, force, (src,))
    _check_space(dst, _size_bound(source, key, overrides + pins))

    kv = _manifest_kv(key, overrides, imatrix, imatrix_source, imatrix_chunks, metadata)
    if pins:
        kv += [(MANIFEST_PREFIX + "pinned", len(pins))]
        kv += [(MANIFEST_PREFIX + "pinned_from", _tail(pinned_from))] if pinned_from else []

    def write(tmp: Path) -> None:
        pin_patterns = [(tensor_pattern(n), t) for n, t in pins]
        _run_quantizer(src, tmp, key, overrides + pin_patterns, imatrix, kv, nthread, allow_requantize)

    _io.atomic_write(dst, write)
    manifest = read_manifest(dst)
    wanted = assigned_types(overrides, list(manifest["tensors"]))
    manifest["overridden"] = {n: manifest["tensors"][n] for n in wanted}
    manifest["fallbacks"] = {n: {"asked": t, "got": manifest["tensors"][n]}
                             for n, t in wanted.items() if manifest["tensors"][n] != t}
    manifest["source"] = str(src)
    manifest["pinned"] = dict(pins)
    manifest["pin_fallbacks"] = {n: {"asked": t, "got": manifest["tensors"][n]}
                                 for n, t in manifest["pinned"].items() if manifest["tensors"][n] != t}
    if quantized:
        manifest["note"] = (f"requantized from {', '.join(quantized)}: every quantized tensor was "
                            "dequantized and quantized again")
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """What a GGUF says of itself: `superweight.*` and `quantize.imatrix.*` metadata, per-tensor types,
    file size, parameters and bits per weight (8 · file bytes / parameters; `tensor_bits_per_weight`
    counts the tensors' bytes only, as llama.cpp's own "BPW" does)."""
    path = Path(path)
    meta, infos = _read_header(path, keep=lambda k: k.startswith((MANIFEST_PREFIX, "quantize.imatrix."))
                               or k == "general.file_type")
    tensors = {n: t["type"] for n, t in infos.items()}
    params = sum(t["elements"] for t in infos.values())
    tensor_bytes = sum(t["bytes"] for t in infos.values())
    size = path.stat().st_size
    overrides = [meta[k] for k in sorted((k for k in meta if k.startswith(MANIFEST_PREFIX + "override.")),
                                         key=lambda k: int(k.rsplit(".", 1)[1]))]
    return {"path": str(path), "ftype": meta.get(MANIFEST_PREFIX + "ftype"),
            "overrides": [tuple(o.rsplit("=", 1)) for o in overrides],
            "imatrix": meta.get("quantize.imatrix.dataset"), "metadata": meta, "tensors": tensors,
            "types": _type_counts(tensors), "size_bytes": size, "params": params,
            "bits_per_weight": 8 * size / params if params else 0.0,
            "tensor_bits_per_weight": 8 * tensor_bytes / params if params else 0.0}


def _pins(pin_types: dict[str, str], overrides, source: dict[str, dict]) -> list[tuple[str, str]]:
    """`(name, type)` for every pinned tensor no override matches (2-D and up only: llama.cpp never
    quantizes a vector)."""
    covered = set(assigned_types(overrides, list(source)))
    out = []
    for name, kind in pin_types.items():
        if name not in source:
            raise SuperweightError(f"pinned tensor {name} is not a tensor of the model")
        tensor_type_value(kind)
        if name not in covered and len(source[name]["shape"]) >= 2:
            out.append((name, kind.upper()))
    return out


def _tail(text: str) -> str:
    data = str(text).encode()
    return data[-KV_STR_MAX:].decode(errors="ignore") if len(data) > KV_STR_MAX else str(text)


# --- checks -----------------------------------------------------------------------------------------
def _check_imatrix(imatrix: dict, source: dict[str, dict]) -> None:
    for name, values in imatrix.items():
        if name not in source:
            raise SuperweightError(f"the importance matrix names {name!r}, which is not a tensor of the model")
        shape = source[name]["shape"]
        want = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if len(values) != want:
            raise SuperweightError(f"the importance matrix of {name} has {len(values)} values; "
                                   f"the tensor needs {want}")


def _size_bound(source: dict[str, dict], ftype: str, overrides) -> int:
    """An upper bound on the output's size: every tensor at the widest type that may be chosen."""
    import gguf

    def bytes_per_element(name: str) -> float:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
        return size / block

    kinds = ["F32" if ftype == "F32" else "F16" if ftype in ("F16", "BF16") else "Q8_0"]
    widest = max(bytes_per_element(k) for k in kinds + [t for _, t in overrides])
    total = sum(max(t["bytes"], int(t["elements"] * widest)) for t in source.values())
    return total + HEADER_SLACK


def _check_space(dst: Path, need: int) -> None:
    folder = dst.parent
    while not folder.exists() and folder != folder.parent:  # the folder atomic_write will create
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SuperweightError(f"not enough free disk space in {folder}: {free / 2**20:.0f} MiB free, "
                               f"up to {need / 2**20:.0f} MiB needed")


# --- the call ---------------------------------------------------------------------------------------
def _manifest_kv(ftype, overrides, imatrix, imatrix_source, imatrix_chunks, metadata) -> list[tuple[str, object]]:
    from superweight import __version__

    kv: list[tuple[str, object]] = [(MANIFEST_PREFIX + "tool_version", __version__),
                                    (MANIFEST_PREFIX + "ftype", ftype)]
    kv += [(f"{MANIFEST_PREFIX}override.{i}", f"{p}={t}") for i, (p, t) in enumerate(overrides)]
    kv += [(MANIFEST_PREFIX + k, str(v)) for k, v in (metadata or {}).items()]
    if imatrix:
        kv += [("quantize.imatrix.dataset", imatrix_source or "<in memory>"),
               ("quantize.imatrix.entries_count", len(imatrix))]
        if imatrix_chunks is not None:
            kv.append(("quantize.imatrix.chunks_count", int(imatrix_chunks)))
    for k, v in kv:
        if len(k.encode()) > KV_STR_MAX or (isinstance(v, str) and len(v.encode()) > KV_STR_MAX):
            raise SuperweightError(f"metadata {k}={v!r} is longer than llama.cpp's {KV_STR_MAX} bytes")
    return kv


def _kv_array(lib, kv):
    arr = (lib.llama_model_kv_override * (len(kv) + 1))()  # zeroed: the last one ends the list
    for i, (key, value) in enumerate(kv):
        arr[i].key = key.encode()
        if isinstance(value, str):
            arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = value.encode()
        else:
            arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_INT
            arr[i].value.val_i64 = int(value)
    return arr


def _tt_array(lib, overrides):
    arr = (lib.llama_model_tensor_override * (len(overrides) + 1))()  # NULL pattern ends the list
    for i, (pattern, kind) in enumerate(overrides):
        arr[i].pattern = pattern.encode()
        arr[i].type = tensor_type_value(kind)
    return arr


def _imatrix_array(lib, imatrix):
    import numpy as np

    keep = []  # the float buffers must outlive the call
    arr = (lib.llama_model_imatrix_data * (len(imatrix) + 1))()  # {NULL, NULL, 0} ends the list
    for i, (name, values) in enumerate(imatrix.items()):
        data = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(data)
        arr[i].name = name.encode()
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    return arr, keep


def _run_quantizer(src: Path, out: Path, ftype: str, overrides, imatrix, kv, nthread, allow_requantize) -> None:
    from superweight.runtime.llamacpp import llama_cpp

    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype_value(ftype)
    params.nthread = nthread or 0
    params.allow_requantize = allow_requantize
    kv_arr = _kv_array(lib, kv)
    params.kv_overrides = ctypes.cast(kv_arr, ctypes.POINTER(lib.llama_model_kv_override))
    tt_arr = _tt_array(lib, overrides) if overrides else None
    if tt_arr is not None:
        params.tt_overrides = ctypes.cast(tt_arr, ctypes.POINTER(lib.llama_model_tensor_override))
    im_arr, keep = _imatrix_array(lib, imatrix) if imatrix else (None, [])
    if im_arr is not None:
        params.imatrix = ctypes.cast(im_arr, ctypes.POINTER(lib.llama_model_imatrix_data))
    rc = lib.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    del keep
    if rc != 0:
        raise SuperweightError(f"llama.cpp could not quantize {src.name} to {ftype} (llama_model_quantize "
                               f"returned {rc}; a full disk, or a type this model's tensor shapes cannot take)")


# --- reading a GGUF's header ----------------------------------------------------------------------
# gguf.GGUFReader parses every metadata array element by element (the 49k-token vocabulary takes
# seconds); the quantizer needs only tensor names, types, shapes and a few keys, so the header is
# walked here once, arrays skipped by their size. Layout: the GGUF v2/v3 specification.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read_header(path, keep=lambda key: False) -> tuple[dict, dict[str, dict]]:
    """(`{key: value}` for the keys `keep` accepts (strings and scalars), `{tensor: info}`)."""
    import mmap
    import struct

    import gguf

    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise SuperweightError(f"{path} is not a GGUF file")
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version < 2:
                raise SuperweightError(f"{path} is GGUF version {version}; llama.cpp reads 2 and 3")
            pos = 24

            def string(at: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", buf, at)
                return buf[at + 8:at + 8 + n].decode("utf-8", errors="replace"), at + 8 + n

            def value(kind: int, at: int):
                if kind == _STRING:
                    return string(at)
                if kind == _ARRAY:
                    sub, n = struct.unpack_from("<IQ", buf, at)
                    at += 12
                    if sub in _SCALAR:
                        return None, at + n * struct.calcsize("<" + _SCALAR[sub])
                    if sub == _STRING:  # skipped unread: only each string's length is needed
                        length = struct.Struct("<Q").unpack_from
                        for _ in range(n):
                            at += 8 + length(buf, at)[0]
                        return None, at
                    for _ in range(n):
                        _, at = value(sub, at)
                    return None, at
                fmt = "<" + _SCALAR[kind]
                return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)

            meta = {}
            for _ in range(n_kv):
                key, pos = string(pos)
                (kind,) = struct.unpack_from("<I", buf, pos)
                val, pos = value(kind, pos + 4)
                if keep(key):
                    meta[key] = val
            infos = {}
            for _ in range(n_tensors):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                shape = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
                kind, _offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                qtype = gguf.GGMLQuantizationType(kind)
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                elements = 1
                for d in shape:
                    elements *= d
                infos[name] = {"type": qtype.name, "shape": shape, "elements": elements,
                               "bytes": elements // block * size}
    except (OSError, ValueError, struct.error) as e:
        raise SuperweightError(f"cannot read GGUF file {str(path)!r}: {e}") from None
    return meta, infos


def _type_counts(tensors: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in tensors.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
