"""The ablation library (Table 1, Figure 5, Figure 6) on tiny planted models, with evaluators
that report the model state they saw, so each row is checked to run under its own intervention."""

from __future__ import annotations

import json

import pytest
import torch

from superweight.ablation import (CONDITIONS, NO_SUPER_WEIGHT, ORIGINAL, PRUNE_NON_SW, PRUNE_SW,
                                  RESTORE_SA, ScaleResult, ablation_table, next_token_distribution,
                                  scale_sweep, stopword_list, stopword_shift, strip_last_word)
from superweight.errors import SuperweightError
from superweight.evaluate import EvalSettings, Evaluator
from superweight.evaluate.metrics import AVERAGE, describe, other, perplexity_metric
from superweight.evaluate.perplexity import perplexity
from superweight.model import wrap_model
from superweight.model.hooks import observe_down_projs
from superweight.report.tables import ablation_tables, scale_tables, stopword_tables, summary_table, to_markdown
from superweight.records import SuperWeight
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

LAYER, ROW, COL, SW_VALUE = 2, 17, 45, 50.0
SW = SuperWeight(LAYER, ROW, COL)
DOCS = ["The cat sat on the mat. It was a sunny day, and the birds sang in the trees.",
        "Numbers: one, two, three, four. Letters: a, b, c, d, e, f, g."] * 4
WIKI = perplexity_metric("wiki_ppl", "wiki ppl (offline stand-in)")


@pytest.fixture(scope="module")
def lm():
    model = tiny_model("llama")
    plant_super_weight(model, LAYER, ROW, COL, weight=SW_VALUE)
    return wrap_model(model, tiny_tokenizer(), ref="planted-llama")


def state_evaluator(calls: list) -> Evaluator:
    """Report what the model looked like while being evaluated, plus a real perplexity."""
    def run(lm) -> dict:
        seen = {}
        ids = lm.tokenizer("abc", return_tensors="pt")["input_ids"]
        with torch.no_grad(), observe_down_projs(lm.view, lambda p, x, y, pos: seen.setdefault("y", y), [LAYER]):
            lm.model(input_ids=ids)
        zeros = sum(int((m.weight == 0).sum()) for _, m in lm.view.decoder_linears())
        calls.append(1)
        return {"sw": lm.view.down_proj(LAYER).matrix()[ROW, COL].item(), "zeros": zeros,
                "sa": seen["y"][0, ROW].item(), "wiki_ppl": perplexity(lm, DOCS, seqlen=32).ppl,
                "average": 0.5}
    return Evaluator(run, [AVERAGE, WIKI])


def snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_table1_each_row_runs_under_its_own_intervention(lm):
    before = snapshot(lm)
    calls = []
    # attention only: the planted gate/up rows (6.0) would otherwise be among the largest weights
    result = ablation_table(lm, [SW], state_evaluator(calls), k=100, modules=["*.self_attn.*"])
    assert [r.condition for r in result.rows] == list(CONDITIONS) and len(calls) == 4
    orig, pruned, non_sw, restored = (result.row(c).summary for c in CONDITIONS)
    zeros0 = orig["zeros"]
    assert orig["sw"] == SW_VALUE and orig["sa"] > 1e3
    assert pruned["sw"] == 0.0 and pruned["zeros"] == zeros0 + 1 and abs(pruned["sa"]) < 0.05 * orig["sa"]
    assert non_sw["sw"] == SW_VALUE and non_sw["zeros"] == zeros0 + 100 and non_sw["sa"] > 1e3
    assert restored["sw"] == 0.0 and restored["sa"] == orig["sa"]  # the SA is back, exactly
    assert result.row(PRUNE_NON_SW).detail["k"] == 100
    assert result.row(RESTORE_SA).detail["restored"] >= 1
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), n
    md = to_markdown(ablation_tables(result))
    assert "| Condition | Avg | sw | zeros | sa | wiki ppl (offline stand-in) |" in md and "Wiki-2" not in md
    assert [m["name"] for m in result.to_dict()["metrics"]] == ["average", "sw", "zeros", "sa", "wiki_ppl"]
    json.dumps(result.to_dict())


def test_table1_without_super_weights_still_shows_original(lm):
    calls = []
    result = ablation_table(lm, [], state_evaluator(calls), k=10)
    assert len(calls) == 2
    assert result.row(ORIGINAL).summary and result.row(PRUNE_NON_SW).summary
    for c in (PRUNE_SW, RESTORE_SA):
        assert result.row(c).summary is None and result.row(c).note == NO_SUPER_WEIGHT
    md = to_markdown(ablation_tables(result))
    assert f"| {PRUNE_SW} | — ({NO_SUPER_WEIGHT}) |" in md and "| Original | 50.00 |" in md


@pytest.mark.parametrize("k, match", [(10**9, "larger than the"), (0, "K must be"), (None, "K must be")])
def test_table1_checks_k_before_evaluating(lm, k, match):
    calls = []
    with pytest.raises(SuperweightError, match=match):
        ablation_table(lm, [SW], state_evaluator(calls), k=k)
    assert calls == []


def test_table1_refuses_coordinates_outside_the_model(lm):
    with pytest.raises(SuperweightError, match="outside"):
        ablation_table(lm, [(LAYER, 64, 0)], state_evaluator([]))


def test_scale_sweep_scales_and_marks_the_best(lm):
    calls = []
    result = scale_sweep(lm, [SW], [0, "0.5", 1, 2, 1], state_evaluator(calls))
    assert result.factors == [0.0, 0.5, 1.0, 2.0] and len(calls) == 4
    assert [s["sw"] for s in result.summaries] == [0.0, SW_VALUE / 2, SW_VALUE, 2 * SW_VALUE]
    assert result.best_by == "average" and result.best in result.factors
    md = to_markdown(scale_tables(result))
    assert "(original)" in md and "(best)" in md and "Best factor by Avg" in md
    json.dumps(result.to_dict())


def test_scale_sweep_picks_lowest_perplexity_without_tasks(lm):
    def ppl(lm):
        return {"wiki_ppl": 10 + abs(lm.view.down_proj(LAYER).matrix()[ROW, COL].item() - SW_VALUE)}
    result = scale_sweep(lm, [SW], [0, 1, 3], Evaluator(ppl, [WIKI]))
    assert result.best_by == "wiki_ppl" and result.best == 1.0


def test_scale_sweep_needs_a_figure_it_can_rank(lm):
    """A plain callable's keys are not known to be accuracies or perplexities: nothing to rank by."""
    with pytest.raises(SuperweightError, match="neither an accuracy nor a perplexity"):
        scale_sweep(lm, [SW], [0, 1], lambda lm: {"loss": 1.0})


@pytest.mark.parametrize("factors, match", [(["x"], "not a number"), ([], "no scaling factor"),
                                            ([float("nan")], "finite")])
def test_scale_sweep_bad_factors(lm, factors, match):
    with pytest.raises(SuperweightError, match=match):
        scale_sweep(lm, [SW], factors, state_evaluator([]))


def test_scale_sweep_without_super_weights(lm):
    with pytest.raises(SuperweightError, match=NO_SUPER_WEIGHT):
        scale_sweep(lm, [], [1.0], state_evaluator([]))


def test_batched_next_token_distribution_matches_one_by_one(lm):
    prompts = ["a", "hello there", "the quick brown fox jumps"]
    one = next_token_distribution(lm, prompts, batch_size=1)
    batched = next_token_distribution(lm, prompts, batch_size=3)
    assert torch.allclose(one, batched, atol=1e-6) and one.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_stopword_shift_on_a_planted_model(lm):
    before = snapshot(lm)
    result = stopword_shift(lm, [SW], DOCS, top=5)
    assert result.passages == len(DOCS) and len(result.rising) == len(result.falling) == 5
    assert result.rising[0].pruned >= result.rising[0].original
    assert result.falling[0].pruned <= result.falling[0].original
    assert set(result.groups) == {"stopwords", "punctuation"} and result.groups["punctuation"]["tokens"] > 0
    assert result.groups["stopwords"]["ratio"] is None  # a byte tokenizer has no " the" token
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert "| punctuation |" in to_markdown(stopword_tables(result))
    json.dumps(result.to_dict(), allow_nan=False)


def test_stopword_helpers():
    words = stopword_list()
    assert len(words) == 179 and "the" in words and "wouldn't" in words
    assert strip_last_word("He looked at the robot ") == "He looked at the"


def test_columns_are_ordered_by_what_they_are_not_by_their_spelling():
    s = EvalSettings(tasks=("piqa", "arc_easy"), ppl=("wiki", "notes.txt"))
    cols = describe(["wiki_ppl", "average", "loss", "piqa", "notes_ppl", "arc_easy"], s.metrics())
    assert [m.name for m in cols] == ["arc_easy", "piqa", "average", "loss", "wiki_ppl", "notes_ppl"]  # the paper's order
    assert [m.kind for m in cols] == ["accuracy"] * 3 + ["other"] + ["perplexity"] * 2
    assert describe(["x_ppl"])[0] == other("x_ppl")  # an undescribed key is never taken for a perplexity
    md = to_markdown([summary_table("", "Condition", [("x", None, "why")], cols)])
    assert "| x | — (why) |" in md


@pytest.mark.parametrize("kw, match", [({"tasks": (), "ppl": ()}, "nothing to evaluate"),
                                       ({"limit": 0}, "limit"), ({"max_tokens": -1}, "max_tokens")])
def test_eval_settings_are_validated(kw, match):
    with pytest.raises(SuperweightError, match=match):
        EvalSettings(**kw)


def test_best_factor_breaks_ties_by_perplexity_then_closeness_to_one():
    same = {"average": 0.6}
    r = ScaleResult([0.5, 1.0, 1.5, 3.0], [{**same, "wiki_ppl": 17.7}, {**same, "wiki_ppl": 13.57},
                                          {**same, "wiki_ppl": 13.41}, {**same, "wiki_ppl": 13.62}],
                    [], "average", metrics=[AVERAGE, WIKI])
    assert r.best == 1.5
    r = ScaleResult([0.0, 1.0, 2.0], [{"average": 0.6}] * 3, [], "average", metrics=[AVERAGE])
    assert r.best == 1.0
