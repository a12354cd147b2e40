"""Writing small llama.cpp GGUF files from Hugging Face models, so that GGUF loading is tested offline.

Test infrastructure, not a user-facing converter. It does what llama.cpp's `convert_hf_to_gguf.py`
does, as far as the tests need: llama.cpp's tensor names (`gguf.get_tensor_name_map`), the metadata
keys that transformers' GGUF config mapping reads (its `GGUF_CONFIG_MAPPING`, inverted), a byte-level
`gpt2` vocabulary (the 256 bytes and the tiny tokenizer's three specials), and the per-tensor changes
llama.cpp makes and transformers undoes when it loads a GGUF: the rotary q/k row permutation of the
`llama` architecture, the `+ 1` on Gemma's norm weights, GPT-2's transposed Conv1D weights, MoE experts
stored as separate gate / up stacks, and a squeezed shared-expert gate. Tensors of two or more
dimensions whose rows split into whole blocks are quantized (`gguf.quants.quantize`) to the asked
type; the rest stay F32, as llama.cpp keeps its norms.

>>> from superweight.testing import tiny_model
>>> path = write_gguf(tiny_model("llama", num_layers=2), "/tmp/tiny-llama.gguf", qtype="Q8_0")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from superweight.testing import BOS_ID, EOS_ID, PAD_ID, SPECIALS, _bytes_to_unicode

# Hugging Face model_type -> llama.cpp `general.architecture` (llama.cpp writes Mistral as llama)
GGUF_ARCH = {"mistral": "llama", "gemma3_text": "gemma3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
# model_type -> the section of transformers' GGUF_CONFIG_MAPPING that reads it back
_CONFIG_SECTION = {"gemma3_text": "gemma3"}
_PERMUTED_QK = ("llama",)  # llama.cpp arch whose q/k rows are permuted for its rotary layout
_NORM_PLUS_ONE = ("gemma2", "gemma3")  # llama.cpp arch storing RMSNorm weights as w + 1
_CONV1D_TRANSPOSED = ("gpt2",)


def write_gguf(model: nn.Module, path: str | Path, *, qtype: str = "F32", drop: tuple[str, ...] = ()) -> Path:
    """Write `model` (a tiny causal LM) as a llama.cpp GGUF file; tensors of ≥ 2 dims in `qtype`.

    `qtype` is a `gguf.GGMLQuantizationType` name: F32, F16, Q8_0, Q4_0, ...; `drop` names Hugging
    Face tensors to leave out (to make a file that lacks one).
    """
    import gguf

    config = model.config
    arch = GGUF_ARCH.get(config.model_type, config.model_type)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{config.model_type}")
    _add_config(writer, config, arch)
    _add_tokenizer(writer)
    names = gguf.get_tensor_name_map(_arch_enum(arch), _num_layers(config))
    kind = gguf.GGMLQuantizationType[qtype]
    for hf_name, tensor in model.state_dict().items():
        if hf_name in drop:
            continue
        for gguf_name, array in _llama_cpp_tensors(hf_name, tensor, names, arch, config):
            _add_tensor(writer, gguf_name, array, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _arch_enum(arch: str):
    import gguf

    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)


def _num_layers(config) -> int:
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def _add_config(writer, config, arch: str) -> None:
    """The `{arch}.*` keys transformers' GGUF config mapping turns back into this config."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    # an architecture transformers cannot read gets llama.cpp's common keys (those of `llama`)
    section = GGUF_CONFIG_MAPPING.get(_CONFIG_SECTION.get(config.model_type, config.model_type),
                                      GGUF_CONFIG_MAPPING["llama"])
    rope = getattr(config, "rope_parameters", None) or {}
    for gguf_key, hf_key in section.items():
        if hf_key is None:
            continue
        value = rope.get(hf_key) if hf_key == "rope_theta" else getattr(config, hf_key, None)
        if value is None or isinstance(value, (list, dict)):
            continue
        key = f"{arch}.{gguf_key}"
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)


def _add_tokenizer(writer) -> None:
    """The tiny byte tokenizer as a llama.cpp `gpt2` (byte-level BPE) vocabulary without merges."""
    tokens = [ch for _, ch in sorted(_bytes_to_unicode().items())] + list(SPECIALS)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * len(SPECIALS))  # 1 normal, 3 control
    writer.add_token_merges([])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)


def _llama_cpp_tensors(hf_name: str, tensor: torch.Tensor, names, arch: str, config):
    """[(gguf name, array)] for one Hugging Face tensor, changed as llama.cpp's converter changes it."""
    data = tensor.detach().float().numpy()
    base, suffix = hf_name.rsplit(".", 1) if hf_name.endswith((".weight", ".bias")) else (hf_name, "")
    suffix = f".{suffix}" if suffix else ""
    if base.endswith("mlp.experts.gate_up_proj"):  # fused in transformers, two stacks in llama.cpp
        block = base.split(".")[2]
        gate, up = np.split(data, 2, axis=1)
        return [(f"blk.{block}.ffn_gate_exps.weight", gate), (f"blk.{block}.ffn_up_exps.weight", up)]
    name = names.get_name(base)
    if name is None:  # e.g. the lm_head of an architecture llama.cpp always ties
        return []
    name += suffix or ".weight"  # a fused expert stack has no suffix in transformers
    if arch in _PERMUTED_QK and name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
        data = _permute(data, heads)
    if arch in _NORM_PLUS_ONE and name.endswith("norm.weight"):
        data = data + 1
    if arch in _CONV1D_TRANSPOSED and data.ndim == 2 and any(k in name for k in ("attn_qkv", "attn_output",
                                                                                  "ffn_up", "ffn_down")):
        data = data.T
    if name.endswith("ffn_gate_inp_shexp.weight"):
        data = data.reshape(-1)
    return [(name, np.ascontiguousarray(data))]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary halves interleaved, per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tensor(writer, name: str, data: np.ndarray, kind) -> None:
    import gguf

    block = gguf.GGML_QUANT_SIZES[kind][0]
    if data.ndim < 2 or kind == gguf.GGMLQuantizationType.F32 or data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
