"""Tiny planted Llama models and a small corpus for the fine-tuning tests (no downloads)."""

from __future__ import annotations

import torch

from superweight.finetune.data import token_blocks
from superweight.finetune.train import iter_batches
from superweight.model import wrap_model
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. " * 6,
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. " * 6,
]
LAYER, ROW, COL = 2, 7, 11  # the planted super weight
LR, WD = 0.02, 0.5  # large on purpose: weight decay alone moves an unguarded weight by lr·wd per step


def planted_lm(seed: int = 0):
    """A tiny Llama with one super weight planted at (2, 7, 11); returns (lm, record)."""
    model = tiny_model("llama", seed=seed)
    sw = plant_super_weight(model, LAYER, ROW, COL)
    return wrap_model(model, tiny_tokenizer(), ref="planted-llama"), sw


def batches(lm, n: int, batch_size: int = 2, seqlen: int = 32):
    blocks = token_blocks(lm.tokenizer, TEXTS, seqlen)
    return list(iter_batches(blocks, batch_size, n))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sw_value(lm, sw) -> torch.Tensor:
    return lm.view.down_proj(sw.layer).matrix()[sw.row, sw.col].detach().clone()
