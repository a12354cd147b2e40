"""The vocabulary of a Hugging Face tokenizer as llama.cpp's GGUF `tokenizer.*` metadata.

llama.cpp re-implements each pre-tokenizer it supports and picks one by the name in
`tokenizer.ggml.pre`; its converter finds that name from a hash of the tokenizer's output on a test
text, against a table of known models. Here the name is found from the pre-tokenizer's own
description in tokenizer.json (its Split regex, a digit split, ByteLevel's own regex), for the shapes
llama.cpp implements that the common byte-level BPE models use (GPT-2, SmolLM, Llama 3, Qwen 2/2.5/3);
anything else is refused in one line rather than written with a pre-tokenizer that would tokenize
differently. SentencePiece vocabularies (Llama 2, Gemma, Mistral) are written from the model's
`tokenizer.model` as llama.cpp's `llama` tokenizer: pieces, scores and types as the sentencepiece
library reports them.
"""

from __future__ import annotations

import json
from pathlib import Path

from superweight.errors import SuperweightError

_HINT = ("a SentencePiece vocabulary is written from the model's tokenizer.model, which was not found; a "
         "model loaded from a GGUF file gets that file's vocabulary copied")

# pre-tokenizers of byte-level BPE tokenizers that llama.cpp implements, recognised by their shape in
# tokenizer.json: the Split regex (if any), whether digits are split one by one, whether ByteLevel
# splits with its own (GPT-2) regex
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    (None, False, True): "gpt-2",  # ByteLevel alone, with its regex (GPT-2)
    (None, True, True): "smollm",  # individual digits, then ByteLevel with its regex (SmolLM, StarCoder)
    (_LLAMA3_SPLIT, False, False): "llama-bpe",  # Llama 3
    (_QWEN2_SPLIT, False, False): "qwen2",  # Qwen 2, 2.5, 3
}


def bpe_metadata(tokenizer) -> list[tuple[str, object, object, object]]:
    """(key, value, type, sub type) of the `tokenizer.*` metadata of a byte-level BPE tokenizer (llama.cpp's
    `gpt2` model); a one-line `SuperweightError` for a tokenizer llama.cpp could not use as it is."""
    from gguf import GGUFValueType as T

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SuperweightError("writing a GGUF needs the model's fast tokenizer (tokenizer.json); "
                               f"{type(tokenizer).__name__ if tokenizer is not None else 'no tokenizer'} has none")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise SuperweightError(f"writing a GGUF supports byte-level BPE tokenizers only; this one is "
                               f"{model.get('type')!r} ({_HINT})")
    pre = _pre_tokenizer(spec)
    vocab = backend.get_vocab(with_added_tokens=True)  # token -> id
    size = max(max(vocab.values()) + 1, getattr(tokenizer, "vocab_size", 0))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # unused
        elif i in added:
            tokens.append(by_id[i])
            types.append(3 if added[i].get("special") else 4)  # control, user-defined
        else:
            tokens.append(by_id[i])
            types.append(1)  # normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    entries = [("tokenizer.ggml.model", "gpt2", T.STRING, None), ("tokenizer.ggml.pre", pre, T.STRING, None),
               ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
               ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
               ("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING)]
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            entries.append((f"tokenizer.ggml.{key}_token_id", value, T.UINT32, None))
    return entries + _bos_and_template(tokenizer)


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    try:
        ids = tokenizer("a").input_ids
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode says nothing about BOS
        return False
    return bool(ids) and ids[0] == bos


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json's pre-tokenizer, or a one-line refusal."""
    node = spec.get("pre_tokenizer") or {}
    steps = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node]
    split, digits, byte_regex, byte_level = None, False, False, False
    for step in steps:
        kind = step.get("type")
        if kind == "Split":
            pattern = step.get("pattern", {})
            split = pattern.get("Regex") or pattern.get("String")
        elif kind == "Digits":
            digits = bool(step.get("individual_digits"))
        elif kind == "ByteLevel":
            byte_level, byte_regex = True, step.get("use_regex", True)
        else:
            raise SuperweightError(f"the tokenizer's pre-tokenizer step {kind!r} has no llama.cpp equivalent here "
                                   f"({_HINT})")
    if not byte_level:
        raise SuperweightError("writing a GGUF supports byte-level BPE tokenizers only (no ByteLevel step in "
                               f"the tokenizer's pre-tokenizer; {_HINT})")
    name = _PRE_TOKENIZERS.get((split, digits, byte_regex))
    if name is None:
        raise SuperweightError("the tokenizer's pre-tokenizer is not one llama.cpp is known to implement "
                               f"(known: {', '.join(_PRE_TOKENIZERS.values())})")
    return name


# --- SentencePiece (llama.cpp's `llama` tokenizer model) ---------------------------------------

_SPM_TYPES = {1: "unigram", 2: "bpe"}  # sentencepiece TrainerSpec.ModelType values llama.cpp's SPM tokenizer takes


def spm_metadata(model_file: Path, tokenizer, vocab_size: int) -> list[tuple[str, object, object, object]]:
    """The `tokenizer.*` metadata of a SentencePiece model (`tokenizer.model`, llama.cpp's `llama`
    tokenizer): each piece with its score and type, the tokenizer's added tokens, padding to the
    model's `vocab_size`, and whether a space is prepended (`add_dummy_prefix`)."""
    from gguf import GGUFValueType as T

    proto, sp = _load_spm(model_file)
    normalizer = proto.normalizer_spec
    if normalizer.name not in ("identity", "") or normalizer.remove_extra_whitespaces:
        raise SuperweightError(f"the SentencePiece model {model_file.name} normalizes text ({normalizer.name!r}"
                               f"{', collapsing spaces' if normalizer.remove_extra_whitespaces else ''}), which "
                               "llama.cpp does not do; it is not written")
    if proto.trainer_spec.model_type not in _SPM_TYPES:
        raise SuperweightError(f"the SentencePiece model {model_file.name} is not a BPE or unigram model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 1)  # unknown, control, unused, byte, normal
    for i, added in sorted((getattr(tokenizer, "added_tokens_decoder", None) or {}).items()):
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]"), scores.append(-1000.0), types.append(5)
        kind = 3 if added.special else 4  # control, user-defined
        if i == len(tokens):
            tokens.append(added.content), scores.append(-1000.0), types.append(kind)
        elif tokens[i] != added.content:
            tokens[i], scores[i], types[i] = added.content, -1000.0, kind
    while len(tokens) < vocab_size:
        tokens.append(f"[PAD{len(tokens)}]"), scores.append(-1000.0), types.append(5)
    entries = [("tokenizer.ggml.model", "llama", T.STRING, None), ("tokenizer.ggml.pre", "default", T.STRING, None),
               ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
               ("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32),
               ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
               ("tokenizer.ggml.add_space_prefix", bool(normalizer.add_dummy_prefix), T.BOOL, None)]
    own = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unknown": sp.unk_id(), "padding": sp.pad_id()}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        value = value if isinstance(value, int) else own[key]
        if value >= 0:
            entries.append((f"tokenizer.ggml.{key}_token_id", value, T.UINT32, None))
    return entries + _bos_and_template(tokenizer)


def _load_spm(model_file: Path):
    try:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise SuperweightError("writing a SentencePiece vocabulary needs the sentencepiece package: "
                               "pip install sentencepiece") from None
    data = model_file.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
        return proto, sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # a damaged file: protobuf and sentencepiece raise their own types
        raise SuperweightError(f"{str(model_file)!r} is not a readable SentencePiece model: {e}") from None


def _bos_and_template(tokenizer) -> list:
    """Whether the tokenizer adds BOS, and its chat template when it has one (both vocabularies)."""
    from gguf import GGUFValueType as T

    out = [("tokenizer.ggml.add_bos_token", bool(_adds_bos(tokenizer)), T.BOOL, None)]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        out.append(("tokenizer.chat_template", template, T.STRING, None))
    return out
