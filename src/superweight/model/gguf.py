"""Converting a llama.cpp GGUF file into a safetensors directory, one tensor at a time.

Loading a GGUF through `from_pretrained(gguf_file=...)` dequantizes every tensor into one model, and
saving it as safetensors needs a second copy: 2.3x the model's fp32 size in memory, which rules out
the 3B-70B files people actually have. The weights of a GGUF need no model to be converted, only
names and a few per-tensor fixes, so here they stream: each tensor is read from the memory-mapped
file (`gguf.GGUFReader`), dequantized (`gguf.quants.dequantize`), given its Hugging Face name and
processed exactly as transformers processes it when it loads a GGUF — its own name map
(`get_gguf_hf_weights_map`, built on an empty model) and its own `TENSOR_PROCESSORS` (the Llama q/k
permutation, the Gemma norm offset, fused MoE experts, GPT-2's transposes...) — then renamed the way
`save_pretrained` renames (`revert_weight_conversion`) and appended to a ~1 GB safetensors shard.
Peak memory is one dequantized tensor plus one shard buffer (plus the pages of the mapped file). The
config and tokenizer come from transformers' GGUF support, as before; the output is bit-identical to
the whole-model path, which stays callable as `convert_gguf_reference` (tests and benchmarks compare).

The directory is written under a temporary name and renamed into place, so a crash, a full disk or a
corrupt file never leaves a partial cache entry. Full validation (the whole header parsed, every
tensor's data inside the file) happens here, once; later runs reuse the directory without reading
the GGUF again.
"""

from __future__ import annotations

import copy
import errno
import functools
import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from superweight.errors import SuperweightError

FORMAT_VERSION = 1  # bump when the converted directory's content changes; part of the cache key
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHARD_BYTES = 1 << 30
SOURCE_FILE = "superweight-source.json"  # written last: its presence marks a complete conversion
MAGIC = b"GGUF"
SPARE_BYTES = 64 << 20  # free space wanted beyond the weights: tokenizer, config, file-system slack
DEQUANT_CHUNK_BYTES = 4 << 20  # quantized bytes dequantized per call


def check_magic(path: Path) -> None:
    """The cheap check done on every run: the file exists and starts with the GGUF magic bytes."""
    if not path.is_file():
        raise SuperweightError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise SuperweightError(f"{str(path)!r} is not a GGUF file (bad magic bytes)")


def cache_torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--cache-dtype` name; a clear error for any other name."""
    if name not in CACHE_DTYPES:
        raise SuperweightError(f"unknown cache dtype {name!r}; choose one of {', '.join(CACHE_DTYPES)}")
    return CACHE_DTYPES[name]


def read_gguf(path: Path):
    """Parse the whole file with `gguf.GGUFReader` (memory-mapped); a clear error if it is damaged."""
    check_magic(path)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as e:  # gguf raises bare ValueErrors/IndexErrors on truncation
        raise SuperweightError(f"corrupt or truncated GGUF file {str(path)!r}: {_first_line(e)}") from e
    return reader


def gguf_config(path: Path, cache_dtype: str | None = None):
    """The model config a GGUF file describes (its metadata only; no tensor is read); with
    `cache_dtype`, as its converted copy will carry it (`converted_config`)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    check_magic(path)
    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        config = CONFIG_MAPPING[parsed["config"]["model_type"]].from_dict(dict(parsed["config"]))
    except Exception as e:  # unsupported architecture, missing metadata, truncation
        raise SuperweightError(f"could not read GGUF file {str(path)!r}: {_first_line(e)}") from e
    return config if cache_dtype is None else converted_config(config, cache_dtype)


def converted_config(config, cache_dtype: str):
    """`config` as a converted copy stores it: no quantization_config, `dtype` the cache dtype."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = cache_dtype
    return config


@dataclass
class GgufCheckpoint:
    """A GGUF file read once for its conversion (`read_for_conversion`): the whole header checked,
    its tensor table (memory-mapped, no data read) and transformers' plan for it. The loader sizes
    its memory plan from it, then hands it to `convert_gguf`, so the file is parsed once for both."""

    path: Path
    tensors: list  # gguf ReaderTensors
    plan: _Plan | None  # None: an architecture transformers converts with its newer machinery

    def config(self, cache_dtype: str):
        """The config the converted copy will carry (a copy: the conversion writes its own)."""
        if self.plan is None:
            return gguf_config(self.path, cache_dtype)
        return converted_config(copy.deepcopy(self.plan.config), cache_dtype)

    def nbytes(self, dtype: torch.dtype) -> int | None:
        """What the converted tensors take at `dtype`: the very shapes the conversion writes (tied
        weights once), as `budget.checkpoint_bytes` reads them back from the files; None when the
        reference path converts (its shapes are known only once the whole model is loaded)."""
        return self.plan.nbytes(dtype) if self.plan is not None else None


def read_for_conversion(path: Path) -> GgufCheckpoint:
    """Parse a GGUF file for `convert_gguf`: one clear error if it is damaged or unreadable."""
    reader = read_gguf(path)
    architecture = _field(reader, "general.architecture", path)
    tensors = reader.tensors
    del reader  # its metadata (a vocabulary is many small arrays) is parsed again by transformers
    return GgufCheckpoint(path, tensors, _plan(path, architecture, tensors))


def convert_gguf(path: Path | GgufCheckpoint, out: Path, *, cache_dtype: str = "float32",
                 shard_bytes: int = SHARD_BYTES, replace_partial: bool = False) -> Path:
    """Convert a GGUF file tensor by tensor into a safetensors directory `out`; return `out`.

    `path` is the file, or the file already read (`read_for_conversion`: the loader reads it once,
    for its memory plan and for this).

    Weights are stored in `cache_dtype`: float32 is exact (the dequantized values), bfloat16 halves
    the disk and rounds each value as `tensor.to(torch.bfloat16)` does. `out` must not exist or be an
    empty folder; only the cache (`replace_partial=True`) replaces a folder left without its marker
    file by an interrupted conversion.

    >>> convert_gguf(Path("model.Q4_K_M.gguf"), Path("/tmp/model"))  # doctest: +SKIP
    PosixPath('/tmp/model')
    """
    dtype = cache_torch_dtype(cache_dtype)
    _check_target(out, replace_partial)
    checkpoint = path if isinstance(path, GgufCheckpoint) else read_for_conversion(path)
    path, tensors, plan = checkpoint.path, checkpoint.tensors, checkpoint.plan
    if plan is None:  # an architecture transformers converts with its newer whole-model machinery
        return convert_gguf_reference(path, out, cache_dtype=cache_dtype, replace_partial=replace_partial)
    _check_space(out.parent, plan.nbytes(dtype), path)
    with _staging(out, path, replace_partial) as tmp:
        written = _write_shards(_stream(path, tensors, plan), plan, tmp, dtype, shard_bytes)
        missing = sorted(set(plan.expected) - set(written))
        if missing:
            raise SuperweightError(f"GGUF file {str(path)!r} lacks {len(missing)} tensor(s) the "
                                   f"{plan.model_type} model needs, e.g. {missing[0]!r}")
        _write_config(plan, tmp, cache_dtype)
        _write_tokenizer(path, tmp)
        _write_source(path, tmp, cache_dtype, converter="streaming")
    return out


def convert_gguf_reference(path: Path, out: Path, *, cache_dtype: str = "float32",
                           replace_partial: bool = False) -> Path:
    """The whole-model conversion (the reference, slow path): ~2.3x the fp32 model in memory.

    Loads the GGUF with `from_pretrained(gguf_file=...)` (every tensor dequantized into one float32
    model), copies it into a plain model of `cache_dtype` and `save_pretrained`s it. This was the only
    path before `convert_gguf`; it is kept to check `convert_gguf` against (tests, benchmarks) and for
    the architectures transformers loads with its newer GGUF machinery (none of the adapters').
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = cache_torch_dtype(cache_dtype)
    _check_target(out, replace_partial)
    read_gguf(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise SuperweightError(f"could not read GGUF file {str(path)!r}: {_first_line(e)}") from e
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    del model
    _check_space(out.parent, sum(t.nbytes for t in plain.state_dict().values()), path)
    with _staging(out, path, replace_partial) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _write_source(path, tmp, cache_dtype, converter="reference")
    return out


# --- the plan: names, processors and the expected output, from transformers --------------------

@dataclass
class _Plan:
    """What transformers would do with this file, worked out on an empty (meta) model."""

    model: object  # the Hugging Face model on the meta device
    config: object  # its PretrainedConfig
    processor: object  # transformers' TensorProcessor for the architecture
    name_map: dict[str, str]  # GGUF tensor name (or stem) -> Hugging Face name
    expected: dict[str, torch.Size]  # the names and shapes save_pretrained would write
    sources: Counter = field(default_factory=Counter)  # HF name -> how many GGUF tensors feed it

    @property
    def model_type(self) -> str:
        return self.config.model_type

    def nbytes(self, dtype: torch.dtype) -> int:
        return sum(shape.numel() for shape in self.expected.values()) * dtype.itemsize


def _plan(path: Path, architecture: str, tensors: list) -> _Plan | None:
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map, load_gguf_checkpoint)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if _has_new_gguf_loader(architecture):
        return None
    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        config = CONFIG_MAPPING[parsed["config"]["model_type"]].from_dict(dict(parsed["config"]))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
        with _memoized_tensor_name_maps():
            name_map = get_gguf_hf_weights_map(model, processor)
    except Exception as e:  # unsupported architecture, missing metadata, ...
        raise SuperweightError(f"could not read GGUF file {str(path)!r}: {_first_line(e)}") from e
    plan = _Plan(model, config, processor, name_map, _saved_shapes(model))
    plan.sources.update(t for t in (_target(name_map, x.name) for x in tensors) if t)
    return plan


@contextmanager
def _memoized_tensor_name_maps() -> Iterator[None]:
    """Build each gguf `TensorNameMap` once while transformers maps the names.

    `get_gguf_hf_weights_map` recurses into every submodule and builds a fresh
    `gguf.get_tensor_name_map(arch, n_blocks)` at each (~400 for a 30-layer Llama, each taking longer
    the deeper the model): 11 s for 30 layers and 80 s for 80 layers on this machine, against 0.1 s
    when each map, which depends only on its two arguments and is only read, is built once. The
    function is restored on exit; the resulting name map is the same.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _has_new_gguf_loader(architecture: str) -> bool:
    """Whether transformers loads this architecture with its newer (conversion-op) GGUF path."""
    try:
        from transformers.integrations.gguf import is_gguf_arch_supported
    except ImportError:
        return False
    return is_gguf_arch_supported(architecture)


def _saved_shapes(model) -> dict[str, torch.Size]:
    """The tensors `save_pretrained` would write for this model: tied copies dropped, names reverted."""
    state = _drop_tied(model.state_dict(), model)
    return {k: t.shape for k, t in _revert(model, state).items()}


def _drop_tied(state: dict, model) -> dict:
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    return remove_tied_weights_from_state_dict(state, model)


def _revert(model, state: dict) -> dict:
    """`save_pretrained`'s renaming back to the checkpoint format (e.g. fused MoE experts → one per expert)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5 keeps checkpoint names
        return state
    return revert_weight_conversion(model, state)


def _target(name_map: dict[str, str], gguf_name: str) -> str | None:
    """The HF name a GGUF tensor feeds (MoE stacks are mapped by their stem, without `.weight`)."""
    return name_map.get(gguf_name) or name_map.get(gguf_name.rsplit(".", 1)[0])


def _field(reader, key: str, path: Path) -> str:
    f = reader.fields.get(key)
    if f is None:
        raise SuperweightError(f"GGUF file {str(path)!r} has no {key!r} in its metadata")
    return bytes(f.parts[f.data[0]]).decode("utf-8")


# --- streaming the tensors ---------------------------------------------------------------------

def _stream(path: Path, tensors: list, plan: _Plan) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) in file order, processed as `load_gguf_checkpoint` processes them.

    Some processors assemble a tensor from several GGUF tensors themselves (Qwen2-MoE's gate and up
    expert stacks fill one `gate_up_proj`) in `parsed_parameters["tensors"]`; such a tensor is handed
    on once every GGUF tensor that feeds it has been seen.
    """
    import numpy as np

    assembled = {"tensors": {}}  # the `parsed_parameters` processors write into
    seen: Counter = Counter()
    with open(path, "rb") as f:
        for tensor in tensors:  # gguf's ReaderTensor: name, type, offset, shape
            weights = _dequantize(_read(f, tensor, path), tensor.tensor_type)
            result = plan.processor.process(weights=weights, name=tensor.name, tensor_key_mapping=plan.name_map,
                                            parsed_parameters=assembled)
            del weights
            seen[_target(plan.name_map, tensor.name)] += 1
            if result.name in plan.name_map:
                # transformers copies (`np.copy`) because its array may be a view of the mapped file;
                # ours is already a private array, so only a non-contiguous result needs the copy
                yield plan.name_map[result.name], torch.from_numpy(np.ascontiguousarray(result.weights)).float()
            del result
            for name in [n for n in assembled["tensors"] if seen[n] >= plan.sources[n]]:
                yield name, assembled["tensors"].pop(name).float()
    yield from assembled["tensors"].items()


def _read(f, tensor, path: Path):
    """One tensor's stored data, read from the file into private memory (pages of the mapped file
    would otherwise stay resident until the end), in the layout `GGUFReader` describes."""
    import numpy as np

    f.seek(tensor.data_offset)
    raw = np.fromfile(f, dtype=tensor.data.dtype, count=tensor.data.size)
    if raw.size != tensor.data.size:
        raise SuperweightError(f"corrupt or truncated GGUF file {str(path)!r}: tensor {tensor.name!r} is cut short")
    return raw.reshape(tensor.data.shape)


def _dequantize(raw, qtype, chunk_bytes: int | None = None):
    """`gguf.quants.dequantize`, a few MB of blocks at a time into one float32 array.

    Block formats dequantize each block on its own, so the values are the same as in one call; the
    chunks only keep gguf's temporaries (about the size of the output) small.
    """
    import numpy as np
    from gguf.quants import dequantize

    chunk_bytes = chunk_bytes or DEQUANT_CHUNK_BYTES
    if raw.dtype != np.uint8 or raw.ndim < 2 or raw.nbytes <= chunk_bytes:  # plain floats, or small
        return dequantize(raw, qtype)
    rows = raw.reshape(-1, raw.shape[-1])
    step = max(1, chunk_bytes // rows.shape[1])
    first = dequantize(rows[:step], qtype)
    out = np.empty((rows.shape[0], first.shape[1]), dtype=first.dtype)
    out[:step] = first
    for start in range(step, rows.shape[0], step):
        out[start:start + step] = dequantize(rows[start:start + step], qtype)
    return out.reshape(*raw.shape[:-1], first.shape[1])


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], plan: _Plan, tmp: Path, dtype: torch.dtype,
                  shard_bytes: int) -> set[str]:
    """Write the tensors into shards of at most `shard_bytes` (one larger tensor gets its own shard)
    named and indexed as `save_pretrained` names them; return the names written."""
    from safetensors.torch import save_file

    shards: list[list[str]] = []
    buffer: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal buffer, size
        if buffer:
            save_file(buffer, str(tmp / f".shard-{len(shards):05d}"), metadata={"format": "pt"})
            shards.append(list(buffer))
            buffer, size = {}, 0

    for hf_name, tensor in tensors:
        for name, t in _revert(plan.model, {hf_name: tensor}).items():
            if name not in plan.expected:  # a tensor the model has no place for: the reference drops it too
                continue
            if t.shape != plan.expected[name]:
                raise SuperweightError(f"tensor {name!r} of the GGUF has shape {tuple(t.shape)}, the "
                                       f"model its metadata describes expects {tuple(plan.expected[name])}")
            t = t.to(dtype).contiguous()
            if buffer and size + t.nbytes > shard_bytes:
                flush()
            buffer[name] = t
            size += t.nbytes
        del tensor
    flush()
    _name_shards(shards, tmp, plan, dtype)
    return {name for shard in shards for name in shard}


def _name_shards(shards: list[list[str]], tmp: Path, plan: _Plan, dtype: torch.dtype) -> None:
    if len(shards) == 1:
        os.replace(tmp / ".shard-00000", tmp / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(tmp / f".shard-{i:05d}", tmp / filename)
        weight_map.update(dict.fromkeys(names, filename))
    index = {"metadata": {"total_parameters": plan.model.num_parameters(), "total_size": plan.nbytes(dtype)},
             "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# --- config, tokenizer, provenance -------------------------------------------------------------

def _write_config(plan: _Plan, tmp: Path, cache_dtype: str) -> None:
    """config.json and generation_config.json, as `save_pretrained` writes them (no quantization_config)."""
    config = converted_config(plan.config, cache_dtype)
    config.architectures = [type(plan.model).__name__]
    config.save_pretrained(tmp)
    if plan.model.can_generate():
        plan.model.generation_config.save_pretrained(tmp)


def _write_tokenizer(path: Path, tmp: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise SuperweightError(f"could not read the tokenizer of GGUF file {str(path)!r}: {_first_line(e)}") from e
    tok.save_pretrained(tmp)


def _write_source(path: Path, tmp: Path, cache_dtype: str, converter: str) -> None:
    st = path.stat()
    meta = {"converted_from": str(path), "gguf_bytes": st.st_size, "gguf_mtime_ns": st.st_mtime_ns,
            "cache_dtype": cache_dtype, "converter": converter, "format_version": FORMAT_VERSION}
    (tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")


# --- disk space and atomic output --------------------------------------------------------------

def _check_space(where: Path, nbytes: int, path: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < nbytes + SPARE_BYTES:
        raise SuperweightError(
            f"not enough disk space to convert {path.name}: the cache needs ~{_gb(nbytes + SPARE_BYTES)} in "
            f"{where} and {_gb(free)} is free (free some space, point SUPERWEIGHT_CACHE elsewhere, or use "
            f"--cache-dtype bfloat16 to halve it)")


def _check_target(out: Path, replace_partial: bool) -> None:
    """Before any work: `out` may be missing or an empty folder (or, for the cache, a partial entry)."""
    if out.exists() and not out.is_dir():
        raise SuperweightError(f"output folder {str(out)!r} exists and is not a directory")
    if not replace_partial and out.is_dir() and any(out.iterdir()):
        raise SuperweightError(f"output folder {str(out)!r} is not empty; choose a new or empty folder")


@contextmanager
def _staging(out: Path, source: Path, replace_partial: bool = False) -> Iterator[Path]:
    """A temporary directory next to `out`, renamed onto `out` when the block succeeds and removed
    whatever happens; a full disk becomes a one-line SuperweightError. With `replace_partial` (the
    cache's own entries) a leftover `out` without its marker file is removed first; otherwise a
    non-empty `out` is refused. A complete entry that another run put in place meanwhile is kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if not (out / SOURCE_FILE).is_file():  # else another run has just finished the same entry
            if replace_partial and out.exists():  # a leftover without its marker file: incomplete
                shutil.rmtree(out)
            _move_into_place(tmp, out)
    except Exception as e:
        if _disk_full(e):
            raise SuperweightError(f"the disk filled up while converting {source.name} into {out.parent}; "
                                   "nothing was kept (free some space, point SUPERWEIGHT_CACHE elsewhere, "
                                   "or use --cache-dtype bfloat16)") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` onto `out` (missing or empty). Losing a race to another run that
    completed the same `out` is fine; any other occupant is refused, never removed."""
    try:
        os.replace(tmp, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if (out / SOURCE_FILE).is_file():
            return
        raise SuperweightError(f"output folder {str(out)!r} is not empty; choose a new or empty folder") from e


def _disk_full(error: BaseException) -> bool:
    """ENOSPC, raised as OSError by Python and as SafetensorError "(os error 28)" by safetensors."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return type(error).__name__ == "SafetensorError" and f"os error {errno.ENOSPC})" in str(error)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
