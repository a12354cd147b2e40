"""Tiny Llama models with a super weight planted by hand, for the ablation tests (no downloads).

The plant: token `TRIGGER` has a large embedding on hidden channel `D`; layer `LAYER`'s MLP reads
that channel into intermediate feature `COL` through scaled gate/up rows, and the down projection
carries it to output channel `ROW` through one large weight W[ROW, COL] — a super weight that
creates a super activation at every position holding `TRIGGER`, and only there.
"""

from __future__ import annotations

import torch

LAYER, ROW, COL, D, TRIGGER = 2, 17, 45, 5, 3
SW_VALUE = 12.0


def planted_model(seed: int = 0, sw: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=TRIGGER, eos_token_id=10,
                      pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    if sw:
        with torch.no_grad():
            model.model.embed_tokens.weight[:, D] = 0.0  # only the trigger writes channel D ...
            model.model.embed_tokens.weight[TRIGGER, D] = 1.0
            for i in range(LAYER + 1):  # ... and no layer before the plant writes it
                model.model.layers[i].self_attn.o_proj.weight[D].zero_()
                if i < LAYER:
                    model.model.layers[i].mlp.down_proj.weight[D].zero_()
            mlp = model.model.layers[LAYER].mlp
            mlp.gate_proj.weight[COL].zero_()
            mlp.up_proj.weight[COL].zero_()
            mlp.gate_proj.weight[COL, D] = 6.0
            mlp.up_proj.weight[COL, D] = 6.0
            mlp.down_proj.weight[:, COL] = 0.0  # feature COL reaches channel ROW only ...
            mlp.down_proj.weight[ROW, COL] = SW_VALUE  # ... through the super weight
    return model


def byte_tokenizer():
    """A byte-level tokenizer with 256 ids (id = byte value) that starts every text with the trigger."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={ch: b for b, ch in chars.items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([chars[TRIGGER], chars[10], chars[0]])  # reuse the byte ids
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=chars[TRIGGER],
                                   eos_token=chars[10], pad_token=chars[0], add_bos_token=True)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def planted_lm(seed: int = 0, sw: bool = True):
    from superweight.model import wrap_model

    return wrap_model(planted_model(seed, sw), byte_tokenizer(), ref="planted-llama")


def save_planted(path, seed: int = 0, sw: bool = True):
    """Write a planted model + tokenizer as a local model directory; return the path."""
    model = planted_model(seed, sw)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
