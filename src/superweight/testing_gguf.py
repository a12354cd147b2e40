"""Writing small llama.cpp GGUF files from Hugging Face models, so that GGUF loading is tested offline.

Test infrastructure, not a user-facing converter: the Hugging Face → llama.cpp inversion (tensor
names, the per-tensor changes transformers undoes when it loads a GGUF, the hyper-parameter keys) is
`superweight.model.gguf_write`'s, the one implementation. What is test-only here: the tiny byte-level
`gpt2` vocabulary (the 256 bytes and the tiny tokenizer's three specials, no merges), whole-file
writing (no streaming needed for tiny models), leaving tensors out (`drop`), and quantizing tensors of
two or more dimensions whose rows split into whole blocks (`gguf.quants.quantize`) to the asked type;
the rest stay F32, as llama.cpp keeps its norms.

>>> from superweight.testing import tiny_model
>>> path = write_gguf(tiny_model("llama", num_layers=2), "/tmp/tiny-llama.gguf", qtype="Q8_0")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from superweight.model.gguf_write import config_metadata, gguf_architecture, gguf_writer, llama_cpp_tensors
from superweight.testing import BOS_ID, EOS_ID, PAD_ID, SPECIALS, _bytes_to_unicode


def write_gguf(model: nn.Module, path: str | Path, *, qtype: str = "F32", drop: tuple[str, ...] = ()) -> Path:
    """Write `model` (a tiny causal LM) as a llama.cpp GGUF file; tensors of ≥ 2 dims in `qtype`.

    `qtype` is a `gguf.GGMLQuantizationType` name: F32, F16, Q8_0, Q4_0, ...; `drop` names Hugging
    Face tensors to leave out (to make a file that lacks one).
    """
    import gguf

    config = model.config
    path = Path(path)
    writer = gguf_writer(path, gguf_architecture(config))
    writer.add_name(f"tiny-{config.model_type}")
    for key, (value, kind) in config_metadata(config).items():
        writer.add_key_value(key, value, kind)
    _add_tokenizer(writer)
    kind = gguf.GGMLQuantizationType[qtype]
    for name, tensor in llama_cpp_tensors(model, skip=drop):
        _add_tensor(writer, name, np.ascontiguousarray(tensor.numpy()), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer) -> None:
    """The tiny byte tokenizer as a llama.cpp `gpt2` (byte-level BPE) vocabulary without merges."""
    import gguf

    tokens = [ch for _, ch in sorted(_bytes_to_unicode().items())] + list(SPECIALS)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * len(SPECIALS))  # 1 normal, 3 control
    writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.STRING)  # empty, but present (llama.cpp needs it)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(True)  # as the tiny tokenizer does: llama.cpp then tokenizes the same way


def _add_tensor(writer, name: str, data: np.ndarray, kind) -> None:
    import gguf

    block = gguf.GGML_QUANT_SIZES[kind][0]
    if data.ndim < 2 or kind == gguf.GGMLQuantizationType.F32 or data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
