"""Writing unquantized GGUF files (`superweight.model.gguf_write`).

- Hugging Face → GGUF → transformers gives the same weights, bit for bit in F32, for every
  architecture transformers reads from GGUF and the adapters know; F16/BF16 give the rounded weights.
- GGUF → GGUF (dequantizing) keeps the metadata and the tensor names; a model loaded from a GGUF is
  written with the same tensors and its tokenizer copied.
- llama.cpp loads what is written (tiny models of four architectures, and the default model), tokenizes
  as the Hugging Face tokenizer does (byte-level BPE of four pre-tokenizer kinds, SentencePiece with
  and without a space prefix), and its logits match transformers' within `LOGIT_TOLERANCE`; Llama 3
  rope scaling reaches it as frequency factors.
- Bad input is one line and leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from superweight.errors import SuperweightError
from superweight.model import gguf_write as gw
from superweight.model.gguf_write import gguf_tensor_names, write_gguf
from superweight.model.load import wrap_model
from superweight.testing import SPECIALS, TINY_CONFIGS, _bytes_to_unicode, tiny_model
from superweight.testing_gguf import write_gguf as write_quantized_gguf

# (model_type, config overrides). Overrides where transformers' GGUF config mapping does not read a
# size back and falls back to its default: qwen3's head_dim (128), GPT-2's n_inner and n_positions,
# Qwen2-MoE's expert sizes.
ARCHS = [
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"tie_word_embeddings": False}),
    ("mistral", {}),  # written as llama.cpp's `llama`; transformers reads it back as a Llama
    ("qwen2", {}),
    ("qwen3", {"head_dim": 128}),
    ("gemma2", {}),
    ("gemma3_text", {}),
    ("phi3", {}),
    ("gpt2", {"n_inner": None, "n_positions": 1024}),
    ("qwen2_moe", {"moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632}),
    ("stablelm", {}),
    # no adapter here (written all the same: the writer needs only the model and its tokenizer)
    ("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 768, "head_dim": 128}),
    ("starcoder2", {}),
]
NORM_PLUS_ONE = ("gemma2", "gemma3_text")  # llama.cpp stores 1 + w; transformers loads (1 + w) - 1
# llama.cpp's logits against transformers' on the written F32 file: max |difference| over the largest
# |logit|. Measured: 1.5e-4 to 6e-4 on the tiny models (llama.cpp keeps its KV cache in F16 and
# computes GELU from an F16 table; with an F32 cache the tiny Llama agrees to 3e-7), 6.6e-4 on the
# default model. A layout mistake (an unreversed permutation) moves logits by their own size (~1).
LOGIT_TOLERANCE = 2e-3
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "1 2", "3 4")  # digit merges: tokens depend on how digits are split
TEXT = "in the then the thin 12 345!"


def bpe_tokenizer(pre_tokenizer=None):
    """A tiny byte-level BPE tokenizer with merges (GPT-2's pre-tokenizer unless another is given): the
    256 bytes, <s> </s> <pad>, then one token per merge. llama.cpp needs merges to load a `gpt2`
    vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({s: 256 + i for i, s in enumerate(SPECIALS)})
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split()) for m in MERGES]))
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build(model_type: str, num_layers: int = 2, **overrides) -> torch.nn.Module:
    """A tiny model with the BPE tokenizer's vocabulary and random norm gains (not all ones or zeros,
    so that Gemma's `+ 1` is exercised); types without a tiny config are built from the Llama sizes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = overrides.pop("vocab_size", 256 + len(SPECIALS) + len(MERGES))
    if model_type in TINY_CONFIGS:
        model = tiny_model(model_type, num_layers=num_layers, vocab_size=vocab, **overrides)
    else:
        config = AutoConfig.for_model(model_type, **{**TINY_CONFIGS["llama"], "vocab_size": vocab, "bos_token_id": 256,
                                                     "eos_token_id": 257, "pad_token_id": 258,
                                                     "num_hidden_layers": num_layers, **overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(p + 0.1 * torch.randn_like(p))
    return model


def loaded(model: torch.nn.Module, tokenizer):
    """`wrap_model`, or for an architecture without an adapter the two things the writer reads."""
    from types import SimpleNamespace

    from superweight.model.adapters import known_model_types

    if model.config.model_type in known_model_types():
        return wrap_model(model, tokenizer)
    return SimpleNamespace(model=model, tokenizer=tokenizer)


def read_back(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- Hugging Face -> GGUF -> transformers --------------------------------------------------------

@pytest.mark.parametrize("model_type,overrides", ARCHS,
                         ids=[f"{a}-tied" if o.get("tie_word_embeddings") else a for a, o in ARCHS])
def test_round_trip_is_bit_identical(tmp_path, model_type, overrides):
    model = build(model_type, **overrides)
    result = write_gguf(loaded(model, bpe_tokenizer()), tmp_path / "m.gguf")
    back = read_back(tmp_path / "m.gguf")
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        if model_type in NORM_PLUS_ONE and "norm" in name:  # (1 + w) - 1 rounds; the gain 1 + w is exact
            assert torch.equal(1 + theirs[name], 1 + t) and not torch.equal(t, torch.zeros_like(t)), name
        else:
            assert torch.equal(theirs[name], t), name
    # the read-back weights compute the same logits, bit for bit (Gemma's included), in the original
    # config (transformers' GGUF config mapping drops some of it: Gemma's query_pre_attn_scalar, and
    # float32 metadata rounds the norm epsilon)
    same = type(model)(model.config).eval()
    same.load_state_dict(theirs)
    ids = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 259, 262]])
    with torch.no_grad():
        assert torch.equal(same(input_ids=ids).logits, model(input_ids=ids).logits)
    assert result.dtype == "F32" and result.source_kind == "hf" and result.note() is None
    assert result.bytes == (tmp_path / "m.gguf").stat().st_size and leftovers(tmp_path) == ["m.gguf"]


@pytest.mark.parametrize("dtype,torch_dtype", [("F16", torch.float16), ("BF16", torch.bfloat16)])
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_f16_and_bf16_store_the_rounded_weights(tmp_path, model_type, dtype, torch_dtype):
    import gguf

    model = build(model_type)
    write_gguf(wrap_model(model, bpe_tokenizer()), tmp_path / "m.gguf", dtype=dtype)
    back = read_back(tmp_path / "m.gguf").state_dict()
    for name, t in model.state_dict().items():
        if t.dim() >= 2:  # stored in the asked type
            assert torch.equal(back[name], t.to(torch_dtype).float()), name
        elif model_type not in NORM_PLUS_ONE:  # 1-D tensors stay F32, as llama.cpp keeps them
            assert torch.equal(back[name], t), name
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == dtype and types["blk.0.attn_norm.weight"] == "F32"


def test_gguf_tensor_names_map_the_super_weight_layers():
    names = gguf_tensor_names(tiny_model("llama", num_layers=2).config)
    assert names["model.layers.1.mlp.down_proj.weight"] == "blk.1.ffn_down.weight"
    assert names["model.layers.0.self_attn.q_proj.weight"] == "blk.0.attn_q.weight"
    assert names["model.embed_tokens.weight"] == "token_embd.weight"
    moe = gguf_tensor_names(tiny_model("qwen2_moe", num_layers=1).config)
    assert moe["model.layers.0.mlp.experts.down_proj"] == "blk.0.ffn_down_exps.weight"
    assert "model.layers.0.mlp.experts.gate_up_proj" not in moe  # two GGUF tensors: not one-to-one


# --- GGUF -> GGUF --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_gguf_to_gguf_dequantizes_and_keeps_metadata_and_names(tmp_path, dtype):
    import gguf
    from gguf.quants import dequantize

    source = write_quantized_gguf(build("qwen2"), tmp_path / "q.gguf", qtype="Q8_0")
    result = write_gguf(source, tmp_path / "out.gguf", dtype=dtype)
    a, b = gguf.GGUFReader(source), gguf.GGUFReader(tmp_path / "out.gguf")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        values = dequantize(x.data, x.tensor_type)
        stored = dequantize(y.data, y.tensor_type)
        expected = values.astype(np.float16).astype(np.float32) if y.tensor_type.name == "F16" else values
        assert np.array_equal(stored, expected), x.name
        assert y.tensor_type.name in (dtype, "F32")
    fields_a = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")}
    fields_b = {k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.")}
    assert fields_b.pop("general.file_type") == {"F32": 0, "F16": 1}[dtype]
    fields_a.pop("general.file_type", None)
    assert fields_a == fields_b
    assert result.source_kind == "gguf" and result.source_tensor_types["Q8_0"] > 0 and result.source_quantized
    assert "Q8_0" in result.note() and result.to_dict()["tensors"] == len(b.tensors)


def test_model_loaded_from_a_gguf_is_written_with_its_tensors_and_tokenizer(tmp_path, monkeypatch):
    import gguf

    from superweight.model import load_model

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    source = write_quantized_gguf(build("llama"), tmp_path / "q.gguf", qtype="Q8_0")
    from_file = write_gguf(source, tmp_path / "direct.gguf")
    from_model = write_gguf(load_model(str(source), quiet=True), tmp_path / "model.gguf")
    a, b = gguf.GGUFReader(tmp_path / "direct.gguf"), gguf.GGUFReader(tmp_path / "model.gguf")
    assert {t.name: t.data.tobytes() for t in a.tensors} == {t.name: t.data.tobytes() for t in b.tensors}
    tokenizer = {k: f.contents() for k, f in gguf.GGUFReader(source).fields.items() if k.startswith("tokenizer.")}
    assert tokenizer == {k: f.contents() for k, f in b.fields.items() if k.startswith("tokenizer.")}
    assert from_model.source_tensor_types == from_file.source_tensor_types and from_model.source_quantized


# --- bad input: one line, nothing written -------------------------------------------------------

@pytest.fixture
def tiny_lm():
    return wrap_model(build("llama"), bpe_tokenizer())


def test_existing_output_needs_force(tmp_path, tiny_lm):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(SuperweightError, match="exists; choose another file or replace it") as info:
        write_gguf(tiny_lm, out)
    assert "\n" not in str(info.value) and out.read_bytes() == b"keep me"
    write_gguf(tiny_lm, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF" and leftovers(tmp_path) == ["m.gguf"]


def test_output_that_is_the_input_is_refused_even_with_force(tmp_path):
    source = write_quantized_gguf(build("llama"), tmp_path / "q.gguf", qtype="Q8_0")
    before = source.read_bytes()
    with pytest.raises(SuperweightError, match="is the input"):
        write_gguf(source, tmp_path / "." / "q.gguf", force=True)
    assert source.read_bytes() == before and leftovers(tmp_path) == ["q.gguf"]


def test_disk_too_small_is_refused_before_writing(tmp_path, tiny_lm, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(gw.shutil, "disk_usage", lambda where: usage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(SuperweightError, match="not enough disk space for m.gguf: it needs"):
        write_gguf(tiny_lm, tmp_path / "out" / "m.gguf")
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, "enospc"])
def test_interrupted_or_full_disk_write_leaves_no_partial_file(tmp_path, tiny_lm, monkeypatch, error):
    encode, calls = gw._encode, []

    def failing(data, qtype):  # the third tensor fails: the header and two tensors are on disk
        calls.append(1)
        if len(calls) == 3:
            if error == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise error()
        return encode(data, qtype)

    monkeypatch.setattr(gw, "_encode", failing)
    if error == "enospc":
        with pytest.raises(SuperweightError, match="the disk filled up while writing m.gguf; nothing was kept"):
            write_gguf(tiny_lm, tmp_path / "m.gguf")
    else:
        with pytest.raises(KeyboardInterrupt):
            write_gguf(tiny_lm, tmp_path / "m.gguf")
    assert leftovers(tmp_path) == []


def test_a_missing_or_foreign_source_file_is_one_line(tmp_path):
    with pytest.raises(SuperweightError, match="is a folder, not a GGUF file"):
        write_gguf(str(tmp_path), tmp_path / "m.gguf")
    with pytest.raises(SuperweightError, match="does not exist"):
        write_gguf(tmp_path / "missing.gguf", tmp_path / "m.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf")
    with pytest.raises(SuperweightError, match="not a GGUF file"):
        write_gguf(tmp_path / "text.gguf", tmp_path / "m.gguf")
    assert leftovers(tmp_path) == ["text.gguf"]


def test_a_quantized_hugging_face_model_is_refused(tmp_path, tiny_lm):
    tiny_lm.model.config.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(SuperweightError, match=r"the model is quantized \(bitsandbytes\); write it from"):
        write_gguf(tiny_lm, tmp_path / "m.gguf")
    assert leftovers(tmp_path) == []


def test_unknown_dtype_and_unsupported_architecture(tmp_path, tiny_lm):
    with pytest.raises(SuperweightError, match="unknown GGUF dtype 'Q4_0'; choose one of F32, F16, BF16"):
        write_gguf(tiny_lm, tmp_path / "m.gguf", dtype="Q4_0")
    with pytest.raises(SuperweightError, match="writing a GGUF of a 'gpt_neox' model is not supported"):
        write_gguf(wrap_model(tiny_model("gpt_neox", num_layers=1), bpe_tokenizer()), tmp_path / "m.gguf")
    assert leftovers(tmp_path) == []


def test_tokenizers_llama_cpp_cannot_take_are_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = build("llama")
    unigram = Tokenizer(models.Unigram([("a", -1.0), ("b", -2.0)], unk_id=0))
    with pytest.raises(SuperweightError, match="byte-level BPE tokenizers only; this one is 'Unigram'"):
        write_gguf(wrap_model(model, PreTrainedTokenizerFast(tokenizer_object=unigram)), tmp_path / "m.gguf")
    odd = bpe_tokenizer()
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(r"\s+", behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)])
    with pytest.raises(SuperweightError, match="not one llama.cpp is known to implement"):
        write_gguf(wrap_model(model, odd), tmp_path / "m.gguf")
    assert leftovers(tmp_path) == []


# --- llama.cpp loads what is written ------------------------------------------------------------

def llama_cpp_logits(path: Path, ids: list[int], text: str | None = None) -> tuple[np.ndarray, list[int] | None]:
    """llama.cpp's logits for `ids` (and its tokenization of `text`), with the high-level binding."""
    from superweight.runtime.llamacpp import llama_cpp

    try:
        binding = llama_cpp()
    except SuperweightError as e:
        pytest.skip(str(e))
    model = binding.Llama(model_path=str(path), logits_all=True, n_ctx=max(64, len(ids) + 8), n_threads=1,
                          verbose=False)
    try:
        tokens = model.tokenize(text.encode(), add_bos=False, special=False) if text is not None else None
        model.eval(ids)
        return np.array(model.scores[:len(ids)], dtype=np.float64), tokens
    finally:
        model.close()


def assert_close_logits(ours: np.ndarray, theirs: np.ndarray) -> None:
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error <= LOGIT_TOLERANCE, f"max |Δlogit| / max |logit| = {error:.2e}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("model_type,overrides,dtype", [
    ("llama", {}, "F32"), ("qwen2", {}, "F32"), ("qwen3", {"head_dim": 128}, "F32"), ("gemma3_text", {}, "F32"),
    ("llama", {}, "F16"),
])
def test_llama_cpp_loads_the_written_file(tmp_path, model_type, overrides, dtype):
    model = build(model_type, **overrides)
    tokenizer = bpe_tokenizer()
    write_gguf(wrap_model(model, tokenizer), tmp_path / "m.gguf", dtype=dtype)
    ids = tokenizer(TEXT).input_ids
    logits, tokens = llama_cpp_logits(tmp_path / "m.gguf", ids, TEXT)
    assert tokens == ids  # the vocabulary, merges and pre-tokenizer reached llama.cpp
    if dtype != "F32":  # compare with the weights llama.cpp holds
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.copy_(p.half().float())
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert_close_logits(logits, expected)


@pytest.mark.integration
def test_default_model_written_as_f32_loads_in_llama_cpp_and_in_transformers(tmp_path, default_lm, monkeypatch):
    from superweight.model import load_model
    from superweight.model.load import alias_gguf

    result = write_gguf(alias_gguf("smollm2-135m"), tmp_path / "smollm2-f32.gguf")
    assert result.source_file_type == "MOSTLY_Q4_1" and result.source_tensor_types["Q4_1"] == 210
    assert "already quantized" in result.note()
    text = "The capital of France is Paris. The super weight is a single scalar that matters."
    ids = default_lm.tokenizer(text).input_ids
    logits, tokens = llama_cpp_logits(tmp_path / "smollm2-f32.gguf", ids, text)
    assert tokens == ids
    with torch.no_grad():
        expected = default_lm.model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert_close_logits(logits, expected)
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    back = load_model(str(tmp_path / "smollm2-f32.gguf"), quiet=True).model.state_dict()
    for name, t in default_lm.model.state_dict().items():
        assert torch.equal(back[name], t), name


def test_llama3_rope_scaling_is_written_as_llama_cpp_frequency_factors(tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 10000.0}  # short: most frequencies scaled
    model, plain = build("llama", rope_parameters=rope), build("llama")  # the same weights
    tokenizer = bpe_tokenizer()
    import gguf

    write_gguf(wrap_model(model, tokenizer), tmp_path / "m.gguf")
    factors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}["rope_freqs.weight"]
    assert factors.data.shape == (model.config.head_dim // 2,) and factors.data.max() > 1
    ids = tokenizer(TEXT * 3).input_ids
    logits, _ = llama_cpp_logits(tmp_path / "m.gguf", ids)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        unscaled = plain(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert_close_logits(logits, expected)
    # the check can see the scaling: without it, transformers' logits move by more than the tolerance
    assert np.abs(unscaled - expected).max() / np.abs(expected).max() > 2 * LOGIT_TOLERANCE


def test_local_model_offloaded_or_not_is_written_the_same(tmp_path, monkeypatch):
    """A model folder (tokenizer.json read back from disk), loaded whole and with its layers offloaded
    by a memory budget: the offloaded weights are read one by one, and the files are the same."""
    import gguf

    from superweight.model import load_model

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    build("llama", num_layers=8, hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4,
          num_key_value_heads=2).save_pretrained(folder)
    bpe_tokenizer().save_pretrained(folder)
    full = load_model(str(folder), quiet=True)
    offloaded = load_model(str(folder), quiet=True, max_memory=full.plan.weights_bytes // 3)
    assert offloaded.memory()["offloaded"]
    write_gguf(full, tmp_path / "full.gguf")
    write_gguf(offloaded, tmp_path / "offloaded.gguf")
    assert (tmp_path / "full.gguf").read_bytes() == (tmp_path / "offloaded.gguf").read_bytes()
    fields = gguf.GGUFReader(tmp_path / "full.gguf").fields
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2" and len(fields["tokenizer.ggml.merges"].data) == len(MERGES)


def pre_tokenizer(name: str):
    """The tokenizer.json pre-tokenizers of GPT-2, SmolLM, Llama 3 and Qwen 2 (the shapes, on the tiny vocabulary)."""
    from tokenizers import Regex, pre_tokenizers as pt

    from superweight.model.gguf_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    return {"gpt-2": pt.ByteLevel(add_prefix_space=False, use_regex=True),
            "smollm": pt.Sequence([pt.Digits(individual_digits=True),
                                   pt.ByteLevel(add_prefix_space=False, use_regex=True)]),
            "llama-bpe": pt.Sequence([pt.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]),
            "qwen2": pt.Sequence([pt.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level])}[name]


@pytest.mark.parametrize("name", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_is_named_so_that_llama_cpp_tokenizes_the_same(tmp_path, name):
    import gguf

    tokenizer = bpe_tokenizer(pre_tokenizer(name))
    write_gguf(wrap_model(build("llama"), tokenizer), tmp_path / "m.gguf")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents() == name
    text = "12345 in 1234 the  then\n\n I've 3412 THE'S x2 12\t34"
    ids = tokenizer(text).input_ids
    _, tokens = llama_cpp_logits(tmp_path / "m.gguf", ids, text)
    assert tokens == ids


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_a_super_weight_keeps_its_row_and_column_in_the_gguf(tmp_path, model_type):
    import gguf

    from superweight.testing import plant_super_weight

    model = build(model_type, num_layers=3)
    plant_super_weight(model, 1, 7, 11)
    value = model.model.layers[1].mlp.down_proj.weight[7, 11].item()
    write_gguf(wrap_model(model, bpe_tokenizer()), tmp_path / "m.gguf")
    name = gguf_tensor_names(model.config)["model.layers.1.mlp.down_proj.weight"]
    tensor = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}[name]
    data = np.asarray(tensor.data)
    assert name == "blk.1.ffn_down.weight" and data.shape == tuple(model.model.layers[1].mlp.down_proj.weight.shape)
    assert data[7, 11] == value and np.abs(data).argmax() == np.ravel_multi_index((7, 11), data.shape)


def test_bf16_is_encoded_in_chunks_with_the_same_bits(monkeypatch):
    import gguf

    data = np.random.default_rng(0).standard_normal((37, 64)).astype(np.float32)
    whole = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
    monkeypatch.setattr(gw, "ENCODE_CHUNK_BYTES", 3 * 64 * 4)  # 3 rows a call, the last call 1 row
    chunked = gw._encode(data, gguf.GGMLQuantizationType.BF16)
    assert chunked.shape == whole.shape and np.array_equal(chunked, whole)
    as_torch = torch.from_numpy(data).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(37, -1)
    assert np.array_equal(chunked, as_torch)  # the same rounding as tensor.to(torch.bfloat16)


SPM_TEXT = ("The quick brown fox jumps over the lazy dog. Super weights are single scalars in the down "
            "projection. Numbers like 12345 and 678 appear, as do words such as then, thin, there, and the.")


def spm_folder(folder: Path, model_type: str) -> Path:
    """A model folder with a tiny SentencePiece BPE `tokenizer.model` (byte fallback, identity
    normalizer): Llama's prepends a space (add_dummy_prefix), Gemma's does not."""
    import io

    import sentencepiece as spm

    folder.mkdir(parents=True)
    prefix = model_type == "llama"
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([SPM_TEXT] * 50), model_writer=model, vocab_size=300,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=3, add_dummy_prefix=prefix, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer" if prefix else "GemmaTokenizer", "bos_token": "<s>",
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    build(model_type, vocab_size=304).save_pretrained(folder)  # 4 ids past the pieces: padded as unused
    return folder


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_sentencepiece_vocabulary_is_written_from_tokenizer_model(tmp_path, model_type, monkeypatch):
    import gguf
    import sentencepiece as spm

    from superweight.model import load_model

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    folder = spm_folder(tmp_path / "model", model_type)
    lm = load_model(str(folder), quiet=True)
    result = write_gguf(lm, tmp_path / "m.gguf")
    assert result.tokenizer == "written from tokenizer.model (SentencePiece)"
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "llama" and len(fields["tokenizer.ggml.tokens"].data) == 304
    assert fields["tokenizer.ggml.add_space_prefix"].contents() == (model_type == "llama")
    text = "the  thin 12345\n x Then, there!"
    ids = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)
    assert lm.tokenizer(text).input_ids[-len(ids):] == ids
    logits, tokens = llama_cpp_logits(tmp_path / "m.gguf", ids, text)
    assert tokens == ids
    with torch.no_grad():
        expected = lm.model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert_close_logits(logits, expected)
