"""Training text: the registered texts (PTB train / valid, the web text, ...), or a user's file.

Fine-tuning must not train on the text it is then evaluated on, so train on `ptb-train` (or
`ptb-valid`) and evaluate on `wiki` / `ptb` (the PTB *test* split): all of them are registered in
`superweight.evaluate.sources` (fetched with `superweight data fetch`, checksummed on every read), as
are `c4`; a local .txt / .jsonl / .parquet file works too. Texts of one sentence a line (PTB) are
cut into documents of `LINES_PER_DOC` lines, so that a bounded run tokenizes only what it reads.
The text is cut into token blocks of `seqlen` for the Trainer.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from superweight.errors import SuperweightError
from superweight.evaluate import sources
from superweight.evaluate.perplexity import tokenize, windows

LINES_PER_DOC = 100  # documents of 100 sentences (joined like perplexity joins documents)


def training_sources() -> list[str]:
    """Names `training_documents` accepts besides file paths."""
    return list(sources.TEXT_SOURCES)


def training_documents(source: str | os.PathLike) -> list[str]:
    """The documents of a training corpus: a registered text (`ptb-train`, `ptb-valid`, `wiki`,
    `c4`, `ptb`; fetched first, or an error naming the fetch command) or a local .txt / .jsonl /
    .parquet file. An empty corpus is an error.

    >>> len(training_documents("ptb-train"))  # doctest: +SKIP
    421
    """
    name = str(source)
    if name in sources.TEXT_SOURCES:
        docs = sources.documents(name)
        if sources.get_source(name, "text").lines:
            docs = line_documents(docs)
    elif sources.is_local_path(source):
        docs = sources.documents(source)
    else:
        raise SuperweightError(f"unknown training corpus {name!r}; use one of {', '.join(training_sources())} "
                               f"or a path to a {'/'.join(sources.LOCAL_TEXT_SUFFIXES)} file")
    check_corpus(docs, name)
    return docs


def line_documents(docs: Sequence[str], per_doc: int = LINES_PER_DOC) -> list[str]:
    """A text of one sentence a line as documents of `per_doc` non-blank lines each."""
    lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    return ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]


def check_corpus(docs: Sequence[str], name: str = "the training corpus") -> None:
    if isinstance(docs, (str, bytes)) or not all(isinstance(d, str) for d in docs):
        raise SuperweightError("the training corpus must be a list of text documents")
    if not any(d.strip() for d in docs):
        raise SuperweightError(f"{name} is empty: no text to train on")


def token_blocks(tokenizer, docs: Sequence[str], seqlen: int, max_tokens: int | None = None) -> torch.Tensor:
    """The corpus tokenized once (documents joined like perplexity joins them), cut into
    non-overlapping blocks `[n, seqlen]`; a corpus shorter than one block is one shorter block."""
    check_corpus(docs)
    return windows(tokenize(tokenizer, docs, max_tokens), seqlen)


class BlockDataset(torch.utils.data.Dataset):
    """Token blocks as causal-LM examples: `input_ids` and `labels` (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone()}
