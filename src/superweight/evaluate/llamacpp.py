"""Evaluation in the runtime people deploy with: a GGUF file run by llama.cpp, never converted.

Perplexity on our evaluator's windows (the same token ids as `superweight eval` in PyTorch: the
model's own tokenizer read from the GGUF's metadata, the same texts and cuts), scored as
`llama-perplexity` scores them — each window its own context, only its second half counted — and,
against a reference (another GGUF, or any model `superweight` loads, run in PyTorch), the statistics
`llama-perplexity --kl-divergence` prints: mean KL divergence with its error, median, 99th
percentile and maximum, the share of positions whose top token is the same, and the perplexity
ratio. Zero-shot tasks stay in PyTorch (lm-eval drives an in-memory model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from superweight._io import result_header
from superweight.errors import SuperweightError
from superweight.events import SCORE, OnEvent, emitter

DEFAULT_SEQLEN = 512  # llama-perplexity's default context
DEFAULT_MAX_TOKENS = 16384


@dataclass
class LlamaCppEval:
    """One GGUF measured in llama.cpp: per text, its perplexity, and the KL divergence to a reference."""

    model: str
    reference: str | None
    seqlen: int
    max_tokens: int | None
    texts: dict[str, dict] = field(default_factory=dict)  # text -> scoring.*.to_dict()
    seconds: float = 0.0
    scoring: str = ""
    hub: bool = False  # the texts came from the Hugging Face hub, not the fetched copies

    def to_dict(self) -> dict:
        """The result file of `superweight eval --runtime llama.cpp` (header, what was scored, how)."""
        config = {"ppl": list(self.texts), "seqlen": self.seqlen, "max_tokens": self.max_tokens, "hub": self.hub,
                  "reference": self.reference}
        return {**result_header("eval", config=config), "runtime": "llama.cpp", "model": self.model,
                "reference": self.reference, "seqlen": self.seqlen, "max_tokens": self.max_tokens,
                "scoring": self.scoring, "texts": self.texts, "seconds": round(self.seconds, 2)}


def gguf_tokenizer(path: str | Path):
    """The Hugging Face tokenizer a GGUF file carries (read from its metadata; no weights loaded)."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; one line for the user
        raise SuperweightError(f"cannot read the tokenizer of {path.name}: {str(e).splitlines()[0]}") from None


def evaluate_gguf(path: str | Path, texts: Sequence[str] = ("wiki",), *, reference=None,
                  seqlen: int = DEFAULT_SEQLEN, max_tokens: int | None = DEFAULT_MAX_TOKENS, hub: bool = False,
                  n_threads: int | None = None, tokenizer=None, on_event: OnEvent | None = None) -> LlamaCppEval:
    """Perplexity of GGUF `path` in llama.cpp on each text; with `reference` (a GGUF path or a
    `LoadedModel`) also the KL divergence from it, on the same windows. The text is tokenized by
    `tokenizer`, else the reference model's, else the one the GGUF carries. `on_event` hears each
    text scored ("score", ended with its figures as a dict; `superweight.events`).

    >>> r = evaluate_gguf("model-Q4_K_M.gguf", ["wiki"], reference="model-f32.gguf")  # doctest: +SKIP
    >>> r.texts["wiki"]["kld_mean"], r.texts["wiki"]["same_top"]  # doctest: +SKIP
    """
    from superweight.runtime.scoring import SCORING, gguf_perplexity, kl_divergence, text_windows

    path = Path(path).expanduser()
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise SuperweightError(f"--runtime llama.cpp evaluates a .gguf file; {path} is not one")
    if tokenizer is None:
        tokenizer = reference.tokenizer if hasattr(reference, "tokenizer") else gguf_tokenizer(path)
    ref = str(Path(reference).expanduser()) if isinstance(reference, (str, Path)) else reference
    start = time.perf_counter()
    out = LlamaCppEval(str(path), None if reference is None else getattr(reference, "ref", str(reference)),
                       seqlen, max_tokens, scoring=SCORING, hub=hub)
    emit = emitter(on_event)
    for i, text in enumerate(texts, 1):
        emit(SCORE, text, i, len(texts))
        windows = text_windows(None, text, seqlen=seqlen, max_tokens=max_tokens, hub=hub, tokenizer=tokenizer)
        if ref is None:
            out.texts[text] = gguf_perplexity(str(path), windows, n_threads=n_threads).to_dict()
        else:
            out.texts[text] = kl_divergence(str(path), ref, windows, n_threads=n_threads).to_dict()
        emit(SCORE, text, i, len(texts), out.texts[text], ended=True)
    out.seconds = time.perf_counter() - start
    return out
