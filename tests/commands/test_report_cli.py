"""`superweight report`: the page for a planted tiny model with the results of earlier runs included,
bad input, and the real default model rendered offline in Chromium."""

from __future__ import annotations

import json
import re

import pytest

from superweight.cli import main
from superweight.report import browser
from superweight.testing import save_tiny

LAYER, ROW, COL = 2, 7, 11
TEXT = ("The quick brown fox jumps over the lazy dog. " * 40).strip()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-report"), plant=(LAYER, ROW, COL))


@pytest.fixture(scope="module")
def results(model_dir, tmp_path_factory):
    """Result files of earlier runs on the tiny model, each written by its command's --json."""
    out = tmp_path_factory.mktemp("results")
    text = out / "text.txt"
    text.write_text(TEXT)
    common = ["--ppl", str(text), "--seqlen", "64"]
    runs = {"ablate": ["ablate", str(model_dir), *common, "-k", "50"],
            "scale": ["scale", str(model_dir), "--factors", "0,1,2", *common],
            "sweep": ["quantize", str(model_dir), "--sweep", "64,1024", "--bits", "4", *common],
            "w8a8": ["quantize", str(model_dir), "--w8a8", *common],
            "eval": ["eval", str(model_dir), *common],
            "check": ["check", str(model_dir), str(model_dir)],
            "finetune": ["finetune", str(model_dir), "--data", str(text), "--steps", "2", "--seqlen", "32",
                         "--batch-size", "2", "--method", "smt", "--guard", "freeze", "--out", str(out / "tuned")]}
    files = {}
    for name, argv in runs.items():
        files[name] = out / f"{name}.json"
        assert main([*argv, "--json", str(files[name])]) == 0, name
    return files


def test_report_shows_detection_and_every_included_result(model_dir, results, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["report", str(model_dir), "--out", str(out), "--json", str(tmp_path / "report.json"),
            "--include", *map(str, results.values())]
    assert main(argv) == 0
    assert f"Report: {out / 'index.html'}" in capsys.readouterr().err
    page = (out / "index.html").read_text()
    for title in ("Model", "Massive activations and super weights", "Figure 3: down projection spikes per layer",
                  "Figure 4: the massive activation through the residual stream", "Catalog",
                  "Table 1: pruning the super weights", "Figure 6: scaling the super weights",
                  "Figure 7: round-to-nearest quantization against the block size",
                  "Table 3: W8A8 with the super activations held out", "Evaluation", "Check: the super weights",
                  "Fine-tuning (smt, guard freeze)", "Reproduce"):
        assert f">{title}" in page, title
    assert f"({LAYER}, {ROW}, {COL})" in page  # the planted weight, causally checked: a random model
    assert "ppl× alone" in page and "spike only</td>" in page  # does not need it, and the page says so
    # each included section says which command made it, read from its file
    assert "superweight ablate" in page and "superweight quantize" in page and "--w8a8" in page
    assert "How it was made: <code>superweight report" in page
    # self-contained: every image embedded, nothing fetched
    # Figures 3, 4, 6, 7, Table 1, the fine-tuning drift and SMT's placement
    assert page.count("<img") == page.count('src="data:image/png;base64,') >= 7
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["kind"] == "report" and len(payload["results"]) == len(results)
    assert payload["detection"]["super_weights"][0]["verdict"] == "spike only"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not a JSON file"),
    ('{"a": 1}', "is not a superweight result"),
    ('{"tool": "superweight", "schema_version": 1, "kind": "detect"}', "is a 'detect' result"),
])
def test_bad_include_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["report", str(model_dir), "--out", str(tmp_path / "out"), "--include", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_file_in_the_way_or_an_empty_prompt_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import superweight.commands.report as command

    monkeypatch.setattr(command, "load_from_args", lambda *a, **k: pytest.fail("loaded the model"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["report", "--out", str(blocker)])
    assert exc.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "x"
    assert main(["report", "--out", str(tmp_path / "o"), "--prompt", " "]) == 2
    assert capsys.readouterr().err.strip() == "error: the prompt is empty"


def test_evaluation_flags_need_a_run_to_apply_to(model_dir, tmp_path, capsys):
    assert main(["report", str(model_dir), "--out", str(tmp_path / "o"), "--limit", "5"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["report", str(model_dir), "--out", str(tmp_path / "o"), "--blocks", "0"]) == 2
    assert "block sizes must be positive" in capsys.readouterr().err


def test_report_runs_the_ablation_and_the_quantization_itself(model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "r"
    assert main(["report", str(model_dir), "--out", str(out), "--ablate", "--quantize", "--blocks", "64,1024",
                 "--ppl", str(text), "--seqlen", "64", "--no-verify"]) == 0
    page = (out / "index.html").read_text()
    assert ">Table 1: pruning the super weights" in page and ">Table 3: W8A8" in page
    assert ">Figure 7: round-to-nearest" in page and "super weight candidate" in page  # not verified


@pytest.mark.integration
def test_default_model_report_renders_offline(tmp_path, fetched_data):
    out = tmp_path / "report"
    shot = tmp_path / "shot.png"
    assert main(["report", "--out", str(out), "--screenshot", str(shot)] if browser.find_browser()
                else ["report", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "(11, 507, 1229)" in page and "(11, 507, 1487)" in page
    assert "Super activation: channel 507" in page and "agrees with the catalog" in page
    if browser.find_browser() is None:
        pytest.skip("Chromium is not installed (make test installs it)")
    from PIL import Image

    dom = browser.dump_dom(out / "index.html")
    assert "Figure 4: the massive activation through the residual stream" in dom
    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 22)
    assert colors is not None and len(colors) > 100  # tables, text and plots: not a blank page
    blues = sum(n for n, (r, g, b) in colors if b > 150 and r < 100)
    assert blues > 500  # the plots' lines and the links were drawn


def test_json_on_stdout_is_pure_json_and_unwritable_paths_fail_while_parsing(model_dir, tmp_path, capsys):
    assert main(["report", str(model_dir), "--out", str(tmp_path / "r"), "--no-verify", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kind"] == "report" and "Report:" in captured.err
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for argv in (["report", str(model_dir), "--out", str(tmp_path / "r2"), "--screenshot", str(blocker / "s.png")],
                 ["detect", str(model_dir), "--json", str(blocker / "x.json")],
                 ["trace", str(model_dir), "--json", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and ("is a file, not a folder" in err or "is a folder, not a file" in err)
    assert not (tmp_path / "r2").exists() and blocker.read_text() == "x"
