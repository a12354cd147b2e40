"""`superweight census` and `catalog add --from` as a user runs them, on tiny planted models."""

from __future__ import annotations

import csv
import json

import pytest

from census_helpers import comparable, planted_models
from superweight.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    return planted_models(tmp_path_factory.mktemp("planted"))


def test_census_from_a_file_writes_table_csv_html_and_exits_1_when_one_failed(tiny, tmp_path, capsys):
    listing = tmp_path / "models.txt"
    listing.write_text("\n".join(["# planted", *tiny[:2], "/no/such/model"]) + "\n")
    out = tmp_path / "census"
    argv = ["census", "--from-file", str(listing), "--out", str(out), "--workers", "2", "--threads", "1",
            "--verify", "--json", str(tmp_path / "c.json")]
    assert main(argv) == 1
    cap = capsys.readouterr()
    text = " ".join(cap.out.split())
    assert "superweight census: 3 models" in text
    assert "/no/such/model: model path '/no/such/model' does not exist" in text
    assert "[3/3]" in cap.err and "left" in cap.err and "1 of 3 model(s) failed" in cap.err
    payload = json.loads((out / "census.json").read_text())
    assert payload == json.loads((tmp_path / "c.json").read_text())
    assert payload["kind"] == "census" and payload["command"].startswith("superweight census --from-file")
    assert [r["status"] for r in payload["rows"]] == ["done", "done", "failed"]
    assert payload["rows"][0]["verified"] is not None  # verification ran
    rows = list(csv.DictReader((out / "census.csv").open()))
    assert [r["ref"] for r in rows] == [*tiny[:2], "/no/such/model"] and rows[0]["architecture"] == "llama"
    page = (out / "index.html").read_text()
    assert "Census" in page and page.count("data:image/png;base64,") == 2 and "/no/such/model" in page

    # the per-model result is the one `detect --verify` writes
    entry = next(e for e in map(lambda p: json.loads(p.read_text()), (out / "results").iterdir())
                 if e["ref"] == tiny[1])
    alone = tmp_path / "alone.json"
    assert main(["detect", tiny[1], "--verify", "--threads", "1", "--json", str(alone)]) == 0
    assert comparable(entry["detect"]) == comparable(json.loads(alone.read_text()))
    capsys.readouterr()

    # a re-run does nothing new; --retry-failed tries the failure again (and it fails again)
    assert main(argv[:-2]) == 1
    err = capsys.readouterr().err
    assert err.count("already in the store") == 3 and "0 model(s) to run" in err
    assert main([*argv[:-2], "--retry-failed"]) == 1
    assert "1 model(s) to run" in capsys.readouterr().err


def test_census_json_on_stdout_and_exit_0(tiny, tmp_path, capsys):
    assert main(["census", tiny[2], "--out", str(tmp_path / "c"), "--threads", "1", "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (row,) = payload["rows"]
    assert row["architecture"] == "gpt2" and row["super_weights"] == [[3, 9, 30]] and row["verified"] is None


def test_catalog_add_from_census_takes_only_verified_results(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "catalog.json"))
    out = tmp_path / "c"
    assert main(["census", tiny[0], "--out", str(out), "--threads", "1"]) == 0  # not verified
    capsys.readouterr()
    assert main(["catalog", "add", "--from", str(out), "--json", str(tmp_path / "added.json")]) == 0
    assert "No verified super weights" in capsys.readouterr().out
    assert not (tmp_path / "catalog.json").exists()
    added = json.loads((tmp_path / "added.json").read_text())
    assert added["kind"] == "catalog-add" and added["tool"] == "superweight" and added["added"] == []


@pytest.mark.parametrize("argv, message", [
    (["census", "--out", "{tmp}/c"], "no model given"),
    (["census", "--from-file", "{tmp}/none.txt", "--out", "{tmp}/c"], "cannot read the model list"),
    (["census", "x/y", "--out", "{tmp}/c", "--max-rounds", "0"], "max-rounds must be at least 1"),
    (["census", "x/y", "--out", "{tmp}/c", "--verify", "--verify-threshold", "1"], "perplexity ratio above 1"),
    (["census", "x/y", "--out", "{tmp}/c", "--max-memory", "lots"], "size"),
    (["catalog", "add", "--from", "{tmp}/nothing"], "holds no census results"),
    (["catalog", "list", "--from", "{tmp}/nothing"], "--from is for `catalog add"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_the_census_is_a_section_of_a_models_report(tiny, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["census", *tiny[:2], "--out", str(out), "--threads", "1"]) == 0
    report = tmp_path / "report"
    assert main(["report", tiny[0], "--no-verify", "--threads", "1", "--out", str(report),
                 "--include", str(out / "census.json")]) == 0
    page = (report / "index.html").read_text()
    assert "Census of 2 models" in page and "Where the super weights are" not in page  # a figure, not text
    assert page.count(tiny[1]) >= 1 and f"From {out / 'census.json'}" in page
