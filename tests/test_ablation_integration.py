"""The paper's claims on the real default model (smollm2-135m), on short texts to stay quick."""

from __future__ import annotations

import pytest
import torch

from superweight.records import SuperWeight

pytestmark = pytest.mark.integration

SW = SuperWeight(11, 507, 1229)  # smollm2-135m's first super weight; detection also finds (11, 507, 1487)


@pytest.fixture(scope="module")
def sws(default_lm):
    from superweight.detect import find_super_weights

    found = find_super_weights(default_lm)
    assert SW.coord in [s.coord for s in found]
    return found


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def table(default_lm, sws, one_thread, fetched_data):
    from superweight.ablation import ablation_table
    from superweight.evaluate import perplexity

    def evaluator(lm):
        return {"wiki_ppl": perplexity(lm, "wiki", max_tokens=512, seqlen=256).ppl}

    before = {n: p.detach().clone() for n, p in default_lm.model.named_parameters()}
    result = ablation_table(default_lm, sws, evaluator)
    for n, p in default_lm.model.named_parameters():
        assert torch.equal(p, before[n]), n
    return {r.condition: r.summary["wiki_ppl"] for r in result.rows}


def test_pruning_the_super_weight_multiplies_perplexity_by_more_than_3(table):
    assert table["Prune SW"] > 3 * table["Original"]


def test_pruning_7000_other_weights_changes_perplexity_far_less(table):
    # measured: 17 → ~650 for the 7,000 others against 17 → ~2.6e5 for the two super weights
    assert table["Prune Non-SW"] < table["Prune SW"] / 10


def test_restoring_the_super_activation_recovers_part_of_the_loss(table):
    assert table["Original"] <= table["Prune SW + restore SA"] * 1.01
    assert table["Prune SW + restore SA"] < table["Prune SW"]


def test_stopword_probabilities_rise(default_lm, one_thread, fetched_data):
    """With the first super weight pruned (ppl 17 → ~60), the paper's Figure 5 shift: stopwords and
    punctuation gain. (With both detected weights pruned the model collapses, ppl ~1e5, and its
    probability goes to junk tokens instead; see the README.)"""
    from superweight.ablation import stopword_shift
    from superweight.evaluate import lambada_passages

    passages = lambada_passages(12)
    result = stopword_shift(default_lm, [SW], passages)
    assert result.groups["stopwords"]["ratio"] > 1.1
    assert result.groups["punctuation"]["ratio"] > 1.0
    the = next(t for t in result.named if t.token == " the")
    assert the.pruned > the.original
