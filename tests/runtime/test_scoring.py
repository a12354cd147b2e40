"""Perplexity and KL divergence in llama.cpp on our windows, scored as llama-perplexity scores."""

import json
import math

import pytest

from superweight.runtime.llamacpp import LlamaCppModel
from superweight.runtime.quantize import quantize_gguf
from superweight.runtime.scoring import gguf_perplexity, kl_divergence, score_torch, text_windows
from superweight.errors import SuperweightError

TEXT = ["It was the best of times, it was the worst of times, it was the age of wisdom. " * 8]


@pytest.fixture(scope="module")
def windows(tiny_lm):
    return text_windows(tiny_lm, TEXT, seqlen=96)


def test_kld_of_a_model_against_itself_is_zero(tiny_gguf, tiny_lm, windows):
    r = kl_divergence(tiny_gguf, tiny_gguf, windows, n_threads=1)
    assert r.kld_mean == 0.0 and r.kld_max == 0.0 and r.same_top == 1.0
    assert r.ppl_ratio == 1.0 and r.delta_p_rms == 0.0
    assert r.tokens == windows.shape[0] * (96 - 1 - 48)
    t = kl_divergence(tiny_lm, tiny_lm, windows)
    assert t.kld_mean == 0.0 and t.same_top == 1.0
    json.dumps(r.to_dict())


def test_llama_cpp_perplexity_matches_ours_on_the_same_windows(tiny_gguf, tiny_lm, windows):
    ours = score_torch(tiny_lm, windows)  # PyTorch, second half of each window
    theirs = gguf_perplexity(tiny_gguf, windows, n_threads=1)
    assert theirs.tokens == ours.tokens and theirs.first_scored == 48
    assert abs(math.log(theirs.ppl / ours.ppl)) < 1e-4  # F32 in both: the same model to float rounding
    cross = kl_divergence(tiny_gguf, tiny_lm, windows, n_threads=1)  # PyTorch logits as the reference
    assert cross.kld_mean < 1e-6 and cross.same_top > 0.99


def test_a_quantized_model_diverges(tiny_gguf, windows, tmp_path):
    q = quantize_gguf(tiny_gguf, tmp_path / "q2.gguf", "Q2_K", nthread=1)["path"]
    with LlamaCppModel(q, n_ctx=96, n_threads=1) as m:  # an open model works as well as a path
        r = kl_divergence(m, tiny_gguf, windows, n_threads=1)
    assert r.kld_mean > 1e-6 and r.kld_percentiles["99"] >= r.kld_median >= r.kld_min >= 0
    assert r.kld_max >= r.kld_percentiles["99"] and 0 < r.same_top <= 1
    assert r.ppl_ratio == pytest.approx(r.ppl / r.ppl_reference)


def test_windows_too_short(tiny_gguf, windows):
    with pytest.raises(SuperweightError, match="at least 4 tokens"):
        gguf_perplexity(tiny_gguf, windows[:, :3])


def test_several_models_against_one_reference(tiny_gguf, windows, tmp_path):
    from superweight.runtime.scoring import kl_divergences

    q = quantize_gguf(tiny_gguf, tmp_path / "q4.gguf", "Q4_0", nthread=1)["path"]
    both = kl_divergences([tiny_gguf, q], tiny_gguf, windows, n_threads=1)
    alone = kl_divergence(q, tiny_gguf, windows, n_threads=1)
    assert both[0].kld_mean == 0.0 and both[0].same_top == 1.0
    assert both[1].kld_mean == alone.kld_mean and both[1].same_top == alone.same_top


def test_paired_difference(tiny_gguf, windows, tmp_path):
    from superweight.runtime.scoring import kl_divergences, paired_difference

    q = quantize_gguf(tiny_gguf, tmp_path / "q4.gguf", "Q4_0", nthread=1)["path"]
    same, quant = kl_divergences([tiny_gguf, q], tiny_gguf, windows, n_threads=1, per_token=True)
    d = paired_difference(same, quant)
    assert d["kld_diff"] == pytest.approx(-quant.kld_mean) and d["tokens"] == quant.tokens
    assert paired_difference(quant, quant)["kld_diff"] == 0.0
    with pytest.raises(SuperweightError, match="per-token"):
        paired_difference(kl_divergence(q, tiny_gguf, windows, n_threads=1), quant)
