"""Writing a model as an unquantized llama.cpp GGUF (F32, F16 or BF16), one tensor at a time.

llama.cpp's own quantizer needs an unquantized GGUF to start from, and people hold their models in
two forms: a GGUF (often already quantized, like the default model) or a Hugging Face checkpoint.
Both are written here with the `gguf` package, never with llama.cpp's Python binding:

- from a `.gguf` file: its metadata is copied as it is (only `general.file_type` changes), its
  tensors keep their names and are dequantized (`gguf.quants.dequantize`) and stored in the asked
  type. The source's own types are recorded (`GGUFWriteResult.source_file_type`,
  `source_tensor_types`), since a quantized source gives the dequantized values, not the original
  weights.
- from a loaded Hugging Face model: transformers' own GGUF reading is inverted, so that
  `from_pretrained(gguf_file=...)` gives back exactly these weights. The names come from
  transformers' `get_gguf_hf_weights_map` (built on an empty model of the config), inverted; each
  tensor gets the inverse of transformers' `TENSOR_PROCESSORS` step for its architecture (the Llama
  rotary q/k row permutation, Gemma's `norm + 1`, GPT-2's transposed Conv1D weights, MoE expert
  stacks split into gate and up); the metadata holds llama.cpp's hyper-parameter keys (those its
  converter writes and those transformers reads back), and the tokenizer is copied from the source
  GGUF when the model came from one, else written from a byte-level BPE `tokenizer.json` or a
  SentencePiece `tokenizer.model` (`superweight.model.gguf_vocab`).

Tensors are stored as llama.cpp's converter stores them: 1-D tensors, norms, biases and MoE router
gates in F32, the rest in the asked type. The tensor infos are written first (shapes are known from
the config or the file header), then each tensor is produced, converted and appended, so the extra
memory is about one tensor (plus, for a GGUF, the pages of the mapped source). The file is written
under a temporary name in the output folder and renamed into place: an interrupted write, a full disk
or an error leaves nothing behind.

>>> from superweight.model import load_model
>>> result = write_gguf(load_model("smollm2-135m"), "/tmp/smollm2-f32.gguf")  # doctest: +SKIP
>>> result.source_file_type, result.tensors  # doctest: +SKIP
('MOSTLY_Q4_1', 272)
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from superweight._io import check_output_file
from superweight.errors import SuperweightError

DTYPES = ("F32", "F16", "BF16")
# the `general.file_type` (llama.cpp's LlamaFileType) of a file written in each type
_FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}
ENCODE_CHUNK_BYTES = 4 << 20  # float32 bytes converted to BF16 per call
SPARE_BYTES = 16 << 20  # room wanted beyond the tensors: metadata (a vocabulary is a few MB), slack
# Hugging Face model_type -> llama.cpp `general.architecture`, where the names differ (llama.cpp's
# converter writes Mistral as `llama`; transformers reads a `llama` file named "...mistral..." back
# as Mistral)
_ARCH = {"mistral": "llama", "gemma3_text": "gemma3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
         "cohere": "command-r"}
_MOE_STEM = ("_exps",)
_TORCH_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}  # a model's weights, in GGML's words  # GGUF stems transformers maps without a `.weight` suffix (expert stacks)


@dataclass
class GGUFWriteResult:
    """What was written: where, in which type, how much, and what the source was."""

    path: str
    dtype: str  # the type of the tensors of 2+ dims: F32, F16 or BF16
    architecture: str  # llama.cpp's `general.architecture`
    tensors: int
    bytes: int  # the file's size
    source: str  # the GGUF path, or the model reference
    source_kind: str  # "gguf" (a file's tensors, dequantized) or "hf" (a loaded model's weights)
    source_file_type: str | None = None  # the source GGUF's `general.file_type`, e.g. "MOSTLY_Q4_1"
    source_tensor_types: dict[str, int] = field(default_factory=dict)  # e.g. {"Q4_1": 210, "F32": 61}
    tokenizer: str = ""  # where the vocabulary came from

    @property
    def source_quantized(self) -> bool:
        return any(t not in ("F32", "F16", "BF16") for t in self.source_tensor_types)

    def note(self) -> str | None:
        """One line for a quantized source: the written values are its dequantized ones."""
        if not self.source_quantized:
            return None
        counts = ", ".join(f"{n} {t}" for t, n in sorted(self.source_tensor_types.items(), key=lambda kv: -kv[1]))
        kind = f" ({self.source_file_type})" if self.source_file_type else ""
        return (f"the source is already quantized{kind}: {counts} tensors; {self.dtype} holds their dequantized "
                "values, not the original weights")

    def to_dict(self) -> dict:
        return {**asdict(self), "source_quantized": self.source_quantized, "note": self.note()}


# --- the public entry points -------------------------------------------------------------------

def write_gguf(source, path: str | os.PathLike, *, dtype: str = "F32", force: bool = False) -> GGUFWriteResult:
    """Write `source` (a `.gguf` path or a `LoadedModel`) as an unquantized GGUF at `path`.

    `dtype` is the type of the tensors of two or more dimensions (F32, F16, BF16); 1-D tensors and
    norms stay F32, as llama.cpp's converter keeps them. An existing `path` is refused unless `force`,
    and is never the input. Raises `SuperweightError` (one line, nothing written) on bad input.

    >>> write_gguf("model.Q4_K_M.gguf", "model.f32.gguf").note()  # doctest: +SKIP
    'the source is already quantized (MOSTLY_Q4_K_M): ...'
    """
    if dtype not in DTYPES:
        raise SuperweightError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = Path(path).expanduser()
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).expanduser()
        if src.is_dir():
            raise SuperweightError(f"{str(src)!r} is a folder, not a GGUF file; load the model "
                                   "(superweight.model.load_model) and write the loaded model")
        check_output_file(path, force, (src,))
        plan = _gguf_source(src, dtype)
    else:
        check_output_file(path, force, (source_gguf_file(source),))
        plan = _hf_source(source, dtype)
    _write(plan, path)
    result = plan.result
    result.path, result.bytes = str(path), path.stat().st_size
    return result


def gguf_architecture(config) -> str:
    """llama.cpp's `general.architecture` for a Hugging Face config (e.g. "gemma3" for gemma3_text)."""
    return _ARCH.get(config.model_type, config.model_type)


def gguf_tensor_names(config) -> dict[str, str]:
    """{Hugging Face parameter name: GGUF tensor name} for a config, e.g.
    `model.layers.11.mlp.down_proj.weight` -> `blk.11.ffn_down.weight`.

    Built from transformers' own GGUF name map (the one it loads GGUF files with), inverted. Only
    one-to-one names are listed: a fused MoE `gate_up_proj`, which llama.cpp stores as two tensors
    (`ffn_gate_exps`, `ffn_up_exps`), is not. Layout: a GGUF tensor read as numpy (`GGUFReader`,
    dequantized) is `[out, in]` like a Hugging Face `Linear` weight, so a down projection's
    `(row, col)` is the same in both; GPT-2's Conv1D weights are the transpose of Hugging Face's, and
    the Llama-family q/k rows are permuted (llama.cpp's rotary layout).

    >>> from superweight.testing import tiny_model
    >>> gguf_tensor_names(tiny_model("llama", num_layers=1).config)["model.layers.0.mlp.down_proj.weight"]
    'blk.0.ffn_down.weight'
    """
    names = _NameMap.for_config(config)
    return {hf: targets[0] for hf, targets in names.targets.items() if len(targets) == 1}


def llama_cpp_tensors(model, *, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) for each weight of a Hugging Face model, as llama.cpp stores it.

    The inverse of transformers' GGUF loading (names and per-tensor processing); tied weights are
    left out (llama.cpp ties a missing `output.weight` to `token_embd.weight`), and so are the
    Hugging Face names in `skip`. `write_gguf` streams the same tensors.

    >>> from superweight.testing import tiny_model
    >>> next(llama_cpp_tensors(tiny_model("llama", num_layers=1)))[0]
    'token_embd.weight'
    """
    converter = _HFConverter(model.config)
    for hf_name, read in _hf_tensors(model):
        if hf_name not in skip:
            yield from converter.convert(hf_name, read())


def config_metadata(config) -> dict[str, tuple[object, object]]:
    """{GGUF key: (value, GGUFValueType)} of a config's hyper-parameters: the keys llama.cpp's converter
    writes for the architecture, plus those transformers reads back (its `GGUF_CONFIG_MAPPING`)."""
    return _config_metadata(config, gguf_architecture(config))


# --- the plan: what to write -------------------------------------------------------------------

@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order (rows last-but-one)
    qtype: object  # gguf.GGMLQuantizationType
    produce: Callable[[], np.ndarray]  # the float32 values, computed when the tensor is written

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape, dtype=np.int64)) // block * size


@dataclass
class _Plan:
    architecture: str
    metadata: list[tuple[str, object, object, object]]  # (key, value, type, sub type)
    tensors: list[_Tensor]
    result: GGUFWriteResult

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _out_type(name: str, ndim: int, dtype: str):
    """The type llama.cpp's converter stores a tensor in: F32 for 1-D tensors, norms, biases and
    router gates, else the asked type."""
    import gguf

    f32 = gguf.GGMLQuantizationType.F32
    if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or ".ffn_gate_inp." in name:
        return f32
    return gguf.GGMLQuantizationType[dtype]


# --- from a GGUF file --------------------------------------------------------------------------

_SKIPPED_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.alignment")


def _gguf_source(src: Path, dtype: str) -> _Plan:
    from superweight.model.gguf import _dequantize, _read, read_gguf

    reader = read_gguf(src)
    arch = _string_field(reader, "general.architecture", src)
    metadata = [entry for key, f in reader.fields.items() if not key.startswith(_SKIPPED_KEYS)
                for entry in [_copy_field(key, f)]]
    metadata.append(("general.file_type", _FILE_TYPES[dtype], _uint32(), None))
    file_type = _file_type_name(reader)
    types = Counter(t.tensor_type.name for t in reader.tensors)

    def produce(t) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            with open(src, "rb") as f:
                return _dequantize(_read(f, t, src), t.tensor_type).astype(np.float32, copy=False)
        return read

    tensors = []
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors.append(_Tensor(t.name, shape, _out_type(t.name, len(shape), dtype), produce(t)))
    result = GGUFWriteResult("", dtype, arch, len(tensors), 0, str(src), "gguf", file_type, dict(types),
                             tokenizer=f"copied from {src.name}")
    return _Plan(arch, metadata, tensors, result)


def _copy_field(key: str, f) -> tuple[str, object, object, object]:
    """A metadata field as (key, value, type, sub type) for `GGUFWriter.add_key_value`."""
    from gguf import GGUFValueType

    main = f.types[0]
    # an array's element type: its raw header (parts: key length, key, type, element type, count, ...),
    # which an empty array has too (`types` lists only the types of elements present)
    sub = GGUFValueType(int(f.parts[3][0])) if main == GGUFValueType.ARRAY else None
    if main == GGUFValueType.ARRAY and len(f.types) > 2:
        raise SuperweightError(f"GGUF metadata {key!r} is a nested array, which is not copied")
    return key, f.contents(), main, sub


def _string_field(reader, key: str, path: Path) -> str:
    f = reader.fields.get(key)
    if f is None:
        raise SuperweightError(f"GGUF file {str(path)!r} has no {key!r} in its metadata")
    return f.contents()


def _file_type_name(reader) -> str | None:
    import gguf

    f = reader.fields.get("general.file_type")
    if f is None:
        return None
    value = int(f.contents())
    try:
        return gguf.LlamaFileType(value).name
    except ValueError:
        return str(value)


def _uint32():
    from gguf import GGUFValueType

    return GGUFValueType.UINT32


# --- from a loaded Hugging Face model ----------------------------------------------------------

def _hf_source(lm, dtype: str) -> _Plan:
    """The plan for a `LoadedModel` (or a bare model with `.config`, for tests)."""
    import gguf

    model = getattr(lm, "model", lm)
    config = model.config
    quantized = getattr(config, "quantization_config", None)
    if quantized:
        method = quantized.get("quant_method") if isinstance(quantized, dict) else getattr(quantized, "quant_method", "")
        raise SuperweightError(f"the model is quantized ({method or 'quantization_config'}); write it from its "
                               "unquantized checkpoint or from its GGUF file")
    arch = gguf_architecture(config)
    converter = _HFConverter(config)
    metadata = [(key, value, kind, None) for key, (value, kind) in _config_metadata(config, arch).items()]
    name = (getattr(lm, "model_id", None) or getattr(lm, "ref", None) or getattr(config, "_name_or_path", "")
            or config.model_type)
    metadata.append(("general.name", str(name), gguf.GGUFValueType.STRING, None))
    metadata.append(("general.file_type", _FILE_TYPES[dtype], _uint32(), None))
    tokenizer_meta, tokenizer_from, source_gguf = _tokenizer_metadata(lm)
    metadata += tokenizer_meta

    tensors: list[_Tensor] = []
    hf_types: Counter = Counter()
    for hf_name, read in _hf_tensors(model):
        meta = read(meta=True)
        if not meta.dtype.is_floating_point:
            raise SuperweightError(f"the weight {hf_name!r} is {str(meta.dtype).removeprefix('torch.')}, not a float "
                                   "type; only unquantized models are written")
        hf_types[_TORCH_TYPES.get(meta.dtype, str(meta.dtype).removeprefix("torch."))] += 1
        for i, (gguf_name, shaped) in enumerate(converter.convert(hf_name, meta)):
            def produce(hf_name=hf_name, read=read, i=i) -> np.ndarray:
                return converter.convert(hf_name, read())[i][1].numpy()
            kind = _out_type(gguf_name, shaped.dim(), dtype)
            tensors.append(_Tensor(gguf_name, tuple(shaped.shape), kind, produce))
    for gguf_name, values in _extra_tensors(config, arch):
        tensors.append(_Tensor(gguf_name, tuple(values.shape), _out_type(gguf_name, values.dim(), dtype),
                               lambda values=values: values.numpy()))
    _check_unique(tensors)
    ref = getattr(lm, "ref", config.model_type)
    if source_gguf is not None:  # the weights are a GGUF's dequantized values: record what it was
        reader_types, file_type = _gguf_types(source_gguf)
        result = GGUFWriteResult("", dtype, arch, len(tensors), 0, ref, "hf", file_type, reader_types,
                                 tokenizer=tokenizer_from)
    else:
        result = GGUFWriteResult("", dtype, arch, len(tensors), 0, ref, "hf", None, dict(hf_types),
                                 tokenizer=tokenizer_from)
    return _Plan(arch, metadata, tensors, result)


def _gguf_types(path: Path) -> tuple[dict[str, int], str | None]:
    from superweight.model.gguf import read_gguf

    reader = read_gguf(path)
    return dict(Counter(t.tensor_type.name for t in reader.tensors)), _file_type_name(reader)


def _check_unique(tensors: list[_Tensor]) -> None:
    seen = Counter(t.name for t in tensors)
    twice = [n for n, c in seen.items() if c > 1]
    if twice:
        raise SuperweightError(f"two weights of the model map to the GGUF tensor {twice[0]!r}")


class _Read:
    """One weight of a model: its meta shape/dtype, or its values as float32 on the CPU."""

    def __init__(self, model, name: str, tensor: torch.Tensor):
        self.model, self.name, self.tensor = model, name, tensor

    def __call__(self, meta: bool = False) -> torch.Tensor:
        t = self.tensor
        if meta:
            return torch.empty(t.shape, dtype=t.dtype, device="meta")
        if t.device.type == "meta":  # offloaded by accelerate: read it from its offload storage
            from superweight.model.offload import read_param

            owner, _, attr = self.name.rpartition(".")
            t = read_param(self.model.get_submodule(owner), attr)
        return t.detach().to("cpu", torch.float32)


def _hf_tensors(model) -> Iterator[tuple[str, _Read]]:
    """(name, reader) for each tensor save_pretrained would keep (tied copies dropped)."""
    from superweight.model.gguf import _drop_tied

    state = _drop_tied(model.state_dict(), model)
    for name, tensor in state.items():
        yield name, _Read(model, name, tensor)


@dataclass
class _NameMap:
    """transformers' GGUF name map for a config, and its inverse."""

    processor: object  # transformers' TensorProcessor for the architecture
    targets: dict[str, list[str]]  # HF name -> GGUF tensor names (two for a fused MoE gate_up)

    @classmethod
    def for_config(cls, config) -> "_NameMap":
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        from superweight.model.gguf import _has_new_gguf_loader, _memoized_tensor_name_maps

        arch = gguf_architecture(config)
        if _has_new_gguf_loader(arch) or TENSOR_PROCESSORS.get(arch, TensorProcessor) not in _inverses():
            raise SuperweightError(f"writing a GGUF of a {config.model_type!r} model is not supported "
                                   f"(supported: {', '.join(_supported_types())})")
        processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            with _memoized_tensor_name_maps():
                to_hf = get_gguf_hf_weights_map(model, processor, model_type=arch)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise SuperweightError(f"writing a GGUF of a {config.model_type!r} model is not supported: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        targets: dict[str, list[str]] = {}
        for gguf_name, hf_name in to_hf.items():
            if gguf_name.endswith(_MOE_STEM):  # an expert stack: mapped by its stem
                gguf_name += ".weight"
            targets.setdefault(hf_name, []).append(gguf_name)
        for names in targets.values():
            names.sort(key=lambda n: ("up_exps" in n, n))  # gate before up, as the fused tensor holds them
        return cls(processor, targets)


class _HFConverter:
    """Turns Hugging Face weights into llama.cpp's: transformers' GGUF loading, inverted."""

    def __init__(self, config):
        self.config = config
        self.names = _NameMap.for_config(config)
        self.inverse = _inverses()[type(self.names.processor)]

    def convert(self, hf_name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        targets = self.names.targets.get(self.names.processor.preprocess_name(hf_name))
        if not targets:
            raise SuperweightError(f"the weight {hf_name!r} has no GGUF name for a {self.config.model_type!r} "
                                   "model in transformers' GGUF name map")
        return self.inverse(self.config, targets, tensor)


# --- transformers' TENSOR_PROCESSORS, inverted ---------------------------------------------------
# Each takes (config, GGUF names, HF tensor) and returns [(GGUF name, tensor)]; they work on meta
# tensors too (the shapes of the plan come from running them on the config's empty model).

def _identity(config, names, t):
    return [(names[0], t)]


def _llama(config, names, t):
    """llama.cpp's `LlamaModel.permute` of q/k rows (rotary halves interleaved per head); transformers'
    `LlamaTensorProcessor` undoes it with `n_head` for q and `n_kv_head` for k."""
    name = names[0]
    if ".attn_q." in name or ".attn_k." in name:
        heads = config.num_attention_heads
        if ".attn_k." in name:
            heads = getattr(config, "num_key_value_heads", None) or heads
        t = t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    return [(name, t)]


def _norm_plus_one(config, names, t):
    """Gemma (and Nemotron) store RMSNorm gains as `w + 1`; transformers subtracts 1."""
    return [(names[0], t + 1 if "norm.weight" in names[0] else t)]


def _gpt2(config, names, t):
    """GPT-2's Conv1D weights are [in, out]; llama.cpp stores them [out, in] and transformers transposes."""
    name = names[0]
    if any(k in name for k in ("attn_qkv.weight", "ffn_down.weight", "ffn_up.weight", "attn_output.weight")):
        t = t.T
    return [(name, t)]


def _qwen2_moe(config, names, t):
    """A fused expert `gate_up_proj` [E, 2I, H] is two stacks in llama.cpp (gate first); the shared
    expert's gate is a vector there ([H], transformers expands it to [1, H])."""
    if len(names) == 2:
        gate, up = t.chunk(2, dim=1)
        return [(names[0], gate), (names[1], up)]
    if "ffn_gate_inp_shexp" in names[0]:
        t = t.reshape(-1)
    return [(names[0], t)]


@functools.cache
def _inverses() -> dict:
    from transformers.modeling_gguf_pytorch_utils import (
        Gemma2TensorProcessor, GPT2TensorProcessor, LlamaTensorProcessor, NemotronTensorProcessor,
        Qwen2MoeTensorProcessor, TensorProcessor)

    return {TensorProcessor: _identity, LlamaTensorProcessor: _llama, Gemma2TensorProcessor: _norm_plus_one,
            NemotronTensorProcessor: _norm_plus_one, GPT2TensorProcessor: _gpt2,
            Qwen2MoeTensorProcessor: _qwen2_moe}


def _supported_types() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"bloom", "t5", "t5encoder", "mamba", "gpt_oss", "gpt-oss",
                                                        "lfm2", "minimax-m2", "minimax_m2", "umt5"})


# --- metadata ----------------------------------------------------------------------------------

def _config_metadata(config, arch: str) -> dict[str, tuple[object, object]]:
    """The hyper-parameter keys of llama.cpp's converter (`TextModel.set_gguf_parameters` and the
    architecture's additions), then any key transformers reads back that is still missing."""
    from gguf import GGUFValueType
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    c = config
    out: dict[str, tuple[object, object]] = {}

    def first(*names):
        return next((getattr(c, n) for n in names if getattr(c, n, None) is not None), None)

    def put(key: str, value) -> None:
        if value is None or isinstance(value, (list, dict, tuple)) or f"{arch}.{key}" in out:
            return
        if isinstance(value, bool):
            out[f"{arch}.{key}"] = (value, GGUFValueType.BOOL)
        elif isinstance(value, int):
            out[f"{arch}.{key}"] = (value, GGUFValueType.UINT32)
        elif isinstance(value, float):
            out[f"{arch}.{key}"] = (value, GGUFValueType.FLOAT32)
        elif isinstance(value, str):
            out[f"{arch}.{key}"] = (value, GGUFValueType.STRING)

    hidden = first("hidden_size", "n_embd")
    heads = first("num_attention_heads", "n_head")
    rope = _rope(c)
    put("block_count", first("num_hidden_layers", "n_layer"))
    put("context_length", first("max_position_embeddings", "n_ctx", "n_positions"))
    put("embedding_length", hidden)
    put("feed_forward_length", first("intermediate_size", "n_inner") or (4 * hidden if arch == "gpt2" else None))
    put("attention.head_count", heads)
    put("attention.head_count_kv", first("num_key_value_heads") or heads)
    if rope is not None:
        put("rope.freq_base", float(rope.get("rope_theta", 10000.0)))
    put("attention.layer_norm_rms_epsilon", first("rms_norm_eps"))
    put("attention.layer_norm_epsilon", first("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"))
    put("expert_count", first("num_experts", "num_local_experts"))
    put("expert_used_count", first("num_experts_per_tok"))
    put("expert_feed_forward_length", first("moe_intermediate_size"))
    put("expert_shared_feed_forward_length", first("shared_expert_intermediate_size"))
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    if getattr(c, "head_dim", None) is not None:
        put("attention.key_length", head_dim)
        put("attention.value_length", head_dim)
    if rope is not None and head_dim:
        put("rope.dimension_count", int(head_dim * float(first("partial_rotary_factor") or 1.0)))
        _rope_scaling(rope, put)
    if arch == "llama":
        put("vocab_size", first("vocab_size"))
    if arch in ("gemma2", "gemma3"):
        put("attention.sliding_window", first("sliding_window"))
        put("attn_logit_softcapping", first("attn_logit_softcapping"))
        put("final_logit_softcapping", first("final_logit_softcapping"))
    section = GGUF_CONFIG_MAPPING.get(c.model_type, GGUF_CONFIG_MAPPING.get(arch, {}))
    for gguf_key, hf_key in section.items():  # what transformers reads back
        if hf_key is not None:
            put(gguf_key, rope.get(hf_key) if rope and hf_key == "rope_theta" else getattr(c, hf_key, None))
    return out


def _rope(config) -> dict | None:
    """The rotary parameters of the full-attention layers (transformers 5 `rope_parameters`, or the
    older `rope_theta`/`rope_scaling` attributes); None for a model without rotary embeddings."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        if "full_attention" in params:  # per layer type (Gemma 3): llama.cpp's base is the global one
            params = params["full_attention"]
        return dict(params)
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        return None
    return {"rope_theta": theta, **(getattr(config, "rope_scaling", None) or {})}


def _rope_scaling(rope: dict, put) -> None:
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind in ("default", "llama3"):  # Llama 3's scaling is a tensor (`_extra_tensors`), not keys
        return
    if kind == "linear":
        put("rope.scaling.type", "linear")
        put("rope.scaling.factor", float(rope["factor"]))
        return
    raise SuperweightError(f"writing a GGUF of a model with {kind!r} rope scaling is not supported "
                           "(only unscaled and linear rotary embeddings are)")


def _extra_tensors(config, arch: str) -> list[tuple[str, torch.Tensor]]:
    """Tensors llama.cpp needs that the model has no weight for: Llama 3's rotary frequency factors
    (`rope_freqs.weight`, by which llama.cpp divides each rotary frequency), computed as transformers'
    `llama3` inverse frequencies over the unscaled ones."""
    rope = _rope(config) or {}
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return []
    if arch != "llama":
        raise SuperweightError(f"writing a GGUF of a {config.model_type!r} model with llama3 rope scaling is "
                               "not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * float(rope.get("partial_rotary_factor", 1.0)))
    plain = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return [("rope_freqs.weight", (plain / scaled.float()).float())]


# --- the tokenizer -----------------------------------------------------------------------------

def _tokenizer_metadata(lm) -> tuple[list, str, Path | None]:
    """(metadata entries, where they came from, the source GGUF if the model came from one)."""
    source = source_gguf_file(lm)
    if source is not None:
        from superweight.model.gguf import read_gguf

        reader = read_gguf(source)
        entries = [_copy_field(k, f) for k, f in reader.fields.items() if k.startswith("tokenizer.")]
        return entries, f"copied from {source.name}", source
    from superweight.model.gguf_vocab import bpe_metadata, spm_metadata

    tokenizer = getattr(lm, "tokenizer", None)
    try:
        return bpe_metadata(tokenizer), "written from the tokenizer's tokenizer.json (byte-level BPE)", None
    except SuperweightError:
        spm = _spm_file(lm)
        if spm is None:
            raise
    vocab_size = getattr(getattr(lm, "model", lm).config, "vocab_size", 0) or 0
    return spm_metadata(spm, tokenizer, vocab_size), f"written from {spm.name} (SentencePiece)", None


def _spm_file(lm) -> Path | None:
    """The model's SentencePiece `tokenizer.model`: in its folder, or in the hub cache."""
    source = getattr(lm, "source", None)
    if not source:
        return None
    if Path(source).is_dir():
        found = Path(source) / "tokenizer.model"
        return found if found.is_file() else None
    if getattr(lm, "kind", None) == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "tokenizer.model")
        return Path(found) if isinstance(found, str) else None
    return None


def source_gguf_file(lm) -> Path | None:
    """The GGUF file a `LoadedModel` was converted from (an alias or a .gguf reference), else None."""
    if getattr(lm, "kind", None) not in ("alias", "gguf"):
        return None
    from superweight.model.gguf import SOURCE_FILE

    marker = Path(lm.source) / SOURCE_FILE
    try:
        return Path(json.loads(marker.read_text())["converted_from"])
    except (OSError, ValueError, KeyError):
        raise SuperweightError(f"cannot tell which GGUF file {lm.ref!r} was converted from ({marker} is "
                               "missing or damaged)") from None


# --- writing -----------------------------------------------------------------------------------

def gguf_writer(path: str | os.PathLike, arch: str):
    """A `gguf.GGUFWriter` that also writes an empty array, as the format allows (type, count 0):
    gguf-py refuses one, but llama.cpp needs some keys present even when empty (the merges of a
    `gpt2` vocabulary without any)."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(str(path), arch)


def _write(plan: _Plan, path: Path) -> None:
    """Tensor infos first, then each tensor's data, into a temporary file renamed onto `path`."""
    from superweight._io import atomic_write

    need = plan.nbytes() + SPARE_BYTES
    where = path.parent.absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise SuperweightError(f"not enough disk space for {path.name}: it needs ~{_size(need)} and "
                               f"{_size(free)} is free in {where}")

    def write(tmp: Path) -> None:
        writer = gguf_writer(tmp, plan.architecture)
        for key, value, kind, sub in plan.metadata:
            writer.add_key_value(key, value, kind, sub_type=sub)
        for t in plan.tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in plan.tensors:
                data = t.produce()
                if data.shape != t.shape:
                    raise SuperweightError(f"tensor {t.name!r} has shape {data.shape}, expected {t.shape}")
                writer.write_tensor_data(_encode(data, t.qtype))
                del data
        finally:
            writer.close()

    try:
        atomic_write(path, write)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SuperweightError(f"the disk filled up while writing {path.name}; nothing was kept") from None
        raise SuperweightError(f"cannot write {str(path)!r}: {e.strerror or e}") from None


def _encode(data: np.ndarray, qtype) -> np.ndarray:
    """float32 values in the stored type: F16 by numpy's rounding, BF16 by gguf's round-to-nearest-even
    (a few MB of rows at a time: gguf's BF16 conversion makes 64-bit temporaries of its whole input)."""
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    rows = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    out = np.empty((rows.shape[0], rows.shape[1] * 2), dtype=np.uint8)
    step = max(1, ENCODE_CHUNK_BYTES // (rows.shape[1] * 4))
    for start in range(0, rows.shape[0], step):
        out[start:start + step] = gguf.quants.quantize(rows[start:start + step], qtype)
    return out.reshape(*data.shape[:-1], -1)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
