"""Perplexity the way the super weight paper (and GPTQ before it) measures it, on the model as it is.

The documents are joined with a blank line, tokenized once, cut into non-overlapping windows of
`seqlen` tokens (the tail shorter than a window is dropped, unless the text is shorter than one
window, in which case it is the only window), and perplexity is exp of the mean next-token NLL over
every predicted token. Windows are scored in batches under `torch.inference_mode()` with the model
in eval mode; nothing about the model is copied or changed, so an edited model is measured exactly as
it sits in memory. The result is the same as averaging the model's own `labels=` loss over windows.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from superweight.errors import SuperweightError
from superweight.evaluate import sources
from superweight.events import BATCH, OnEvent, emitter
from superweight.model.offload import input_device

DEFAULT_SEQLEN = 2048  # the paper's (and GPTQ's) context length for Wiki-2 / C4 perplexity
DEFAULT_BATCH_SIZE = 4  # windows per forward pass (logits of 4 × 2048 × 49k vocab ≈ 1.6 GB in fp32)
MIN_WINDOW = 2  # a window must predict at least one token
MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
TOKENIZE_CHUNK_DOCS = 64  # documents tokenized per step when only a prefix (max_tokens) is needed
TOKENIZE_MARGIN = 256  # extra tokens read past max_tokens so the cut never falls inside a document


@dataclass
class PerplexityResult:
    """Perplexity of one text: `ppl = exp(nll)`, `nll` the mean over `tokens` predicted tokens."""

    source: str
    ppl: float
    nll: float
    tokens: int  # predicted tokens (windows × (seqlen − 1))
    windows: int
    seqlen: int
    input_tokens: int  # tokens of the text that were scored (windows × seqlen)
    seconds: float
    hub: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def max_positions(model) -> int | None:
    """The longest context the model's config allows, if it says."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in MAX_POSITION_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_seqlen(model, seqlen: int | None) -> int:
    """`seqlen`, or the default capped by the model's maximum; an error if asked for more than it has."""
    limit = max_positions(model)
    if seqlen is None:
        return min(DEFAULT_SEQLEN, limit) if limit else DEFAULT_SEQLEN
    if seqlen < MIN_WINDOW:
        raise SuperweightError(f"seqlen must be at least {MIN_WINDOW}, got {seqlen}")
    if limit and seqlen > limit:
        raise SuperweightError(f"seqlen {seqlen} is longer than the model's maximum of {limit} positions")
    return seqlen


def tokenize(tokenizer, docs: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of the documents joined with a blank line, `[n]`; only a long-enough prefix if bounded."""
    text = sources.DOC_SEPARATOR.join(docs)
    if not text.strip():
        raise SuperweightError("the text to score is empty")
    if max_tokens is None:
        return _encode(tokenizer, text)
    need = max_tokens + TOKENIZE_MARGIN
    for end in range(TOKENIZE_CHUNK_DOCS, len(docs), TOKENIZE_CHUNK_DOCS):
        ids = _encode(tokenizer, sources.DOC_SEPARATOR.join(docs[:end]))
        if ids.numel() >= need:  # later documents cannot change these first tokens
            return ids[:max_tokens]
    return _encode(tokenizer, text)[:max_tokens]


def _encode(tokenizer, text: str) -> torch.Tensor:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Non-overlapping windows `[n_windows, seqlen]`; a text shorter than `seqlen` is one window."""
    if ids.numel() < MIN_WINDOW:
        raise SuperweightError(f"the text is too short to score: {ids.numel()} token(s)")
    if ids.numel() < seqlen:
        return ids[None, :]
    n = ids.numel() // seqlen
    return ids[: n * seqlen].view(n, seqlen)


def window_nll_sum(model, batch: torch.Tensor) -> float:
    """Summed next-token NLL of a batch of windows `[b, seqlen]` (float64 accumulation).

    The loss is taken one window at a time: `logits[i, :-1]` is a view, so the only extra memory is
    one window's log-softmax, not a copy of the whole batch's logits and its log-softmax (2.4 GB for
    two 2048-token windows of a 49k vocabulary)."""
    logits = model(input_ids=batch, use_cache=False).logits  # [b, seqlen, vocab]
    total = 0.0
    for i in range(logits.shape[0]):
        total += float(F.cross_entropy(logits[i, :-1].float(), batch[i, 1:], reduction="sum").double())
    return total


def score_windows(model, chunks: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
                  on_event: OnEvent | None = None, name: str = "windows") -> float:
    """Mean next-token NLL over all windows, scored `batch_size` windows at a time; `on_event`
    hears a "batch" event (windows done) after each batch."""
    if batch_size < 1:
        raise SuperweightError(f"batch size must be at least 1, got {batch_size}")
    device = input_device(model)  # also right when accelerate offloads some layers
    total = 0.0
    emit = emitter(on_event)
    with torch.inference_mode():
        for start in range(0, chunks.shape[0], batch_size):
            batch = chunks[start:start + batch_size].to(device)
            total += window_nll_sum(model, batch)
            emit(BATCH, name, min(start + batch_size, chunks.shape[0]), chunks.shape[0], ended=True)
    return total / (chunks.shape[0] * (chunks.shape[1] - 1))


def perplexity(lm, source: str | os.PathLike | Sequence[str] = "wiki", *, seqlen: int | None = None,
               max_tokens: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, hub: bool = False,
               on_event: OnEvent | None = None) -> PerplexityResult:
    """Perplexity of `lm` (a `LoadedModel`) on a registered text, a local file, or a list of documents.

    `seqlen=None` means 2048 capped by the model's context; `max_tokens` bounds the tokens scored.
    `on_event` hears the batches of windows scored (`superweight.events`).

    >>> r = perplexity(load_model(), "wiki", max_tokens=4096)  # doctest: +SKIP
    >>> r.ppl, r.windows, r.seqlen  # doctest: +SKIP
    """
    if max_tokens is not None and max_tokens < MIN_WINDOW:
        raise SuperweightError(f"max_tokens must be at least {MIN_WINDOW}, got {max_tokens}")
    model, tokenizer = lm.model, lm.tokenizer
    seqlen = resolve_seqlen(model, seqlen)
    name, docs = _documents(source, hub)
    start = time.perf_counter()
    chunks = windows(tokenize(tokenizer, docs, max_tokens), seqlen)
    was_training = model.training
    model.eval()
    try:
        nll = score_windows(model, chunks, batch_size, on_event, name)
    finally:
        model.train(was_training)
    n, width = chunks.shape
    return PerplexityResult(source=name, ppl=math.exp(nll), nll=nll, tokens=n * (width - 1), windows=n,
                            seqlen=width, input_tokens=n * width,
                            seconds=time.perf_counter() - start, hub=hub)


def _documents(source, hub: bool) -> tuple[str, list[str]]:
    if isinstance(source, (list, tuple)):
        if not all(isinstance(d, str) for d in source):
            raise SuperweightError("documents must be strings")
        return "<documents>", list(source)
    return str(source), sources.documents(source, hub=hub)
