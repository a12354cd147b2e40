"""Perplexity, zero-shot and the `evaluate` entry point on a tiny model and tiny data (no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eval_helpers import MAX_POSITIONS, PIQA_ROWS, install_fake_sources, one_thread, state_digest, tiny_lm
from superweight.errors import SuperweightError
from superweight.evaluate import EvalResult, evaluate, perplexity, zero_shot
from superweight.evaluate.perplexity import resolve_seqlen, tokenize, windows

TEXT = " ".join(f"Sentence number {i} talks about the weather, the sea and the mountains." for i in range(12))


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    install_fake_sources(tmp_path)
    return tmp_path / "cache"


def reference_ppl(lm, ids: torch.Tensor, seqlen: int) -> float:
    """A plain per-window loop with the model's own `labels=` loss."""
    losses = []
    with torch.no_grad():
        for i in range(ids.numel() // seqlen):
            w = ids[i * seqlen:(i + 1) * seqlen][None]
            losses.append(float(lm.model(input_ids=w, labels=w).loss))
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_perplexity_matches_per_window_labels_loss(lm, text_file, batch_size):
    r = perplexity(lm, text_file, seqlen=64, batch_size=batch_size)
    ids = tokenize(lm.tokenizer, [TEXT])
    assert r.windows == ids.numel() // 64 and r.windows > 3
    assert r.tokens == r.windows * 63 and r.input_tokens == r.windows * 64 and r.seqlen == 64
    assert r.ppl == pytest.approx(reference_ppl(lm, ids, 64), rel=1e-5)
    assert r.nll == pytest.approx(math.log(r.ppl))


def test_perplexity_is_deterministic_and_leaves_the_model_alone(lm, text_file):
    before = state_digest(lm.model)
    lm.model.train()
    a = perplexity(lm, text_file, seqlen=32)
    assert lm.model.training  # mode restored
    lm.model.eval()
    b = perplexity(lm, text_file, seqlen=32)
    assert a.ppl == b.ppl and state_digest(lm.model) == before


def test_edited_model_is_measured_in_memory(text_file):
    lm = tiny_lm(seed=1)
    base = perplexity(lm, text_file, seqlen=64).ppl
    w = lm.model.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(50.0)
    try:
        edited = perplexity(lm, text_file, seqlen=64).ppl
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert edited != pytest.approx(base, rel=1e-3)
    assert perplexity(lm, text_file, seqlen=64).ppl == base


def test_max_tokens_bounds_the_text(lm, text_file):
    r = perplexity(lm, text_file, seqlen=32, max_tokens=100)
    assert r.windows == 3 and r.input_tokens == 96
    short = perplexity(lm, text_file, seqlen=64, max_tokens=40)  # shorter than one window
    assert short.windows == 1 and short.seqlen == 40 and short.tokens == 39


def test_prefix_tokenization_equals_full_tokenization(lm):
    docs = [f"Document {i}: " + "words and more words " * (i % 7 + 1) for i in range(300)]
    full = tokenize(lm.tokenizer, docs)
    for n in (10, 500, 3000):
        assert torch.equal(tokenize(lm.tokenizer, docs, max_tokens=n), full[:n])


def test_windows_drop_the_tail():
    ids = torch.arange(10)
    assert windows(ids, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(ids, 20).shape == (1, 10)
    with pytest.raises(SuperweightError, match="too short"):
        windows(torch.arange(1), 4)


def test_seqlen_defaults_and_limits(lm, text_file):
    assert resolve_seqlen(lm.model, None) == MAX_POSITIONS  # 2048 capped by the model
    assert perplexity(lm, text_file).seqlen == MAX_POSITIONS
    with pytest.raises(SuperweightError, match=f"seqlen 4096 is longer than the model's maximum of {MAX_POSITIONS}"):
        perplexity(lm, text_file, seqlen=4096)
    with pytest.raises(SuperweightError, match="seqlen must be at least 2"):
        perplexity(lm, text_file, seqlen=1)


def test_bad_text_inputs(lm, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(SuperweightError, match="the text to score is empty"):
        perplexity(lm, tmp_path / "empty.txt")
    with pytest.raises(SuperweightError, match="the text to score is empty"):
        perplexity(lm, [])
    with pytest.raises(SuperweightError, match="batch size must be at least 1"):
        perplexity(lm, ["some text here"], batch_size=0)
    with pytest.raises(SuperweightError, match="max_tokens must be at least 2"):
        perplexity(lm, ["some text here"], max_tokens=1)


def test_zero_shot_through_lm_eval_on_local_files(lm, tmp_path):
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text("".join(json.dumps(r) + "\n" for r in PIQA_ROWS))
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n"
                       + json.dumps({"text": "a dog ran in the park"}) + "\n")
    before = state_digest(lm.model)
    pad_before = lm.tokenizer.pad_token
    out = zero_shot(lm, ["piqa", "lambada"], limit=2, data_files={"piqa": piqa, "lambada": lambada},
                    progress=False)
    assert list(out) == ["piqa", "lambada"]
    assert out["piqa"].task == "piqa" and out["lambada"].task == "lambada_openai"
    assert out["piqa"].items == 2 and out["lambada"].items == 2
    assert set(out["piqa"].metrics) == {"acc", "acc_norm"} and set(out["piqa"].stderr) == {"acc", "acc_norm"}
    assert set(out["lambada"].metrics) == {"acc", "perplexity"}
    assert 0.0 <= out["piqa"].acc <= 1.0 and out["lambada"].metrics["perplexity"] > 1.0
    assert out["piqa"].data == str(piqa) and len(out["piqa"].data_sha256) == 64
    assert state_digest(lm.model) == before and lm.tokenizer.pad_token == pad_before
    json.dumps({k: v.to_dict() for k, v in out.items()})


def test_zero_shot_bad_inputs(lm, tmp_path, monkeypatch):
    with pytest.raises(SuperweightError, match="unknown task 'boolq'; known: arc_challenge"):
        zero_shot(lm, ["piqa", "boolq"])
    with pytest.raises(SuperweightError, match="no tasks given"):
        zero_shot(lm, [])
    with pytest.raises(SuperweightError, match="limit must be at least 1"):
        zero_shot(lm, ["piqa"], limit=0)
    with pytest.raises(SuperweightError, match="does not exist"):
        zero_shot(lm, ["piqa"], data_files={"piqa": tmp_path / "nope.jsonl"})
    with pytest.raises(SuperweightError, match="tasks not requested: sciq"):
        zero_shot(lm, ["piqa"], data_files={"sciq": tmp_path / "x.jsonl"})
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SuperweightError, match="run `superweight data fetch hellaswag`"):
        zero_shot(lm, ["hellaswag"])


def test_evaluate_summary_and_json(lm, fake_cache, tmp_path):
    result = evaluate(lm, ppl=("wiki",), tasks=("lambada",), limit=3, seqlen=64, progress=False)
    assert isinstance(result, EvalResult)
    s = result.summary()
    assert set(s) == {"lambada", "average", "wiki_ppl"}
    assert s["average"] == s["lambada"] and s["wiki_ppl"] == result.perplexity["wiki"].ppl
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["kind"] == "eval" and payload["config"]["seqlen"] == 64
    assert payload["zero_shot"]["lambada"]["items"] == 3
    assert payload["model"]["ref"] == "tiny-llama"


def test_evaluate_reports_progress_and_fails_fast(lm, fake_cache, tmp_path):
    events = []
    result = evaluate(lm, ppl=("wiki",), tasks=(), on_event=events.append)
    steps = [(e.kind, e.name, e.index, e.total, e.ended) for e in events if e.kind != "batch"]
    assert steps == [("ppl", "wiki", 1, 1, False), ("ppl", "wiki", 1, 1, True)]
    assert events[-1].result is result.perplexity["wiki"]
    batches = [e for e in events if e.kind == "batch"]  # the windows scored, between the two
    assert batches and batches[-1].index == batches[-1].total == result.perplexity["wiki"].windows
    with pytest.raises(SuperweightError, match="run `superweight data fetch c4`"):
        evaluate(lm, ppl=("wiki", "c4"), tasks=(), on_event=lambda e: pytest.fail("ran before checking"))
    with pytest.raises(SuperweightError, match="run `superweight data fetch piqa`"):
        evaluate(lm, ppl=("wiki",), tasks=("piqa",), on_event=lambda e: pytest.fail("ran before checking"))
    with pytest.raises(SuperweightError, match="nothing to evaluate"):
        evaluate(lm, ppl=(), tasks=())


def test_evaluate_is_deterministic(lm, fake_cache):
    runs = [evaluate(lm, ppl=("wiki",), tasks=("lambada",), limit=3, seqlen=64, progress=False).summary()
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_quick_preset_fits_the_entry_point():
    import inspect

    from superweight.evaluate import QUICK, TASKS

    inspect.signature(evaluate).bind(object(), **QUICK)
    assert QUICK["tasks"] == TASKS and QUICK["ppl"] == ("wiki", "c4")
    assert QUICK["limit"] and QUICK["max_tokens"]
