"""`superweight ablate / stopwords / scale` as a user runs them, on tiny planted models saved to disk."""

from __future__ import annotations

import json

import pytest

from superweight.cli import main
from superweight import testing

TEXT = "The cat sat on the mat. It was a sunny day, and the birds sang in the trees. " * 20
LAYER, ROW, COL = 2, 17, 45


def save_tiny(path, plant: bool = True) -> str:
    """A tiny Llama (with a super weight planted at (2, 17, 45), or none) saved as a model folder."""
    return testing.save_tiny(path, plant=(LAYER, ROW, COL) if plant else None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate-cli")
    text = root / "tiny.txt"
    text.write_text(TEXT + "\n")
    return {"sw": save_tiny(root / "sw"), "nosw": save_tiny(root / "nosw", plant=False),
            "text": str(text), "root": root}


def fast(models) -> list[str]:
    return ["--ppl", models["text"], "--seqlen", "64"]  # only --ppl given: no task runs


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_ablate_writes_markdown_json_and_png(models, capsys, tmp_path):
    code, out, err = run(["ablate", models["sw"], "--coords", "2,17,45", "-k", "50", *fast(models),
                          "--out", str(tmp_path / "res"), "--json", str(tmp_path / "a.json")], capsys)
    assert code == 0, err
    assert "Super weights (given coordinates): (2, 17, 45)" in out
    md = (tmp_path / "res" / "ablation.md").read_text()
    for condition in ("Original", "Prune SW", "Prune Non-SW", "Prune SW + restore SA"):
        assert f"│ {condition} " in out and f"| {condition} |" in md  # a rich table; markdown in the file
    assert "tiny ppl" in out and "tiny ppl" in md
    assert "[4/4] Prune SW + restore SA · " in err  # progress: one line per evaluation step
    payload = json.loads((tmp_path / "res" / "ablation.json").read_text())
    assert json.loads((tmp_path / "a.json").read_text()) == payload
    assert payload["kind"] == "ablate" and payload["k"] == 50 and payload["schema_version"] >= 1
    assert payload["model"]["weights_sha256"] and payload["evaluation"]["seqlen"] == 64
    assert [r["condition"] for r in payload["rows"]][0] == "Original"
    assert all(r["summary"]["tiny_ppl"] > 1 for r in payload["rows"])
    assert (tmp_path / "res" / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_ablate_detects_the_planted_super_weight(models, capsys):
    code, out, err = run(["ablate", models["sw"], "-k", "10", *fast(models)], capsys)
    assert code == 0, err
    assert "Super weights (detection): (2, 17, 45)" in out


def test_ablate_without_a_super_weight_still_shows_original(models, capsys, tmp_path):
    code, out, err = run(["ablate", models["nosw"], "-k", "10", *fast(models), "--out", str(tmp_path)],
                         capsys)
    assert code == 0, err
    assert "no super weight found" in err and "--coords" in err
    md = (tmp_path / "ablation.md").read_text()
    original = next(line for line in md.splitlines() if line.startswith("| Original |"))
    assert "—" not in original
    assert "| Prune SW | — (no super weight found) |" in md and "no super weight found" in out
    assert json.loads((tmp_path / "ablation.json").read_text())["super_weights"] == []


@pytest.mark.parametrize("argv, message", [
    (["ablate", "--coords", "2,64,45"], "outside the down projection of layer 2, which is 64 x 128"),
    (["ablate", "--coords", "9,1,1"], "layer 9 out of range"),
    (["ablate", "--coords", "2,17"], "is not L,R,C"),
    (["ablate", "--coords", "a,b,c"], "is not L,R,C"),
    (["ablate", "--coords", "2,17,45;1,1"], "'1,1' is not L,R,C"),
    (["ablate", "-k", "100000000"], "is larger than the"),
    (["ablate", "--non-sw-modules", "*.nothing"], "no decoder linear layer matches"),
    (["ablate", "--tasks", "nosuchtask"], "nosuchtask"),
    (["ablate", "--catalog"], "the catalog has no entry"),
    (["scale", "--factors", "0,x,2"], "scaling factor 'x' is not a valid float"),
    (["scale", "--factors", "1,nan"], "not a finite number"),
    (["scale", "--factors", ","], "no scaling factor given"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(models, capsys, tmp_path, argv, message):
    command, rest = argv[0], argv[1:]
    code, out, err = run([command, models["sw"], *fast(models), *rest, "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["ablate", "--threads", "0"], ["stopwords", "-n", "0"], ["ablate", "-k", "0"],
                                  ["ablate", "--limit", "x"], ["ablate", "--coords", "1,1,1", "--catalog"]])
def test_malformed_flags_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_out_must_be_a_folder(models, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exc:  # refused while parsing, before the model loads
        main(["scale", models["sw"], "--coords", "2,17,45", "--factors", "1", *fast(models), "--out", str(target)])
    assert exc.value.code == 2 and "is not a folder" in capsys.readouterr().err and target.read_text() == "x"


def test_scale_marks_the_best_factor(models, capsys, tmp_path):
    code, out, err = run(["scale", models["sw"], "--coords", "2,17,45", "--factors", "0,1,2",
                          *fast(models), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "× 1 (original)" in out and "(best)" in out
    assert "Best factor by tiny ppl" in out
    payload = json.loads((tmp_path / "scale.json").read_text())
    assert payload["factors"] == [0.0, 1.0, 2.0] and payload["best_factor"] in (0.0, 1.0, 2.0)
    assert (tmp_path / "scale.png").is_file()


def test_scale_and_stopwords_need_a_super_weight(models, capsys, fetched_data):
    code, _, err = run(["scale", models["nosw"], "--factors", "1", *fast(models)], capsys)
    assert code == 2 and "no super weight found" in err
    code, _, err = run(["stopwords", models["nosw"], "-n", "2"], capsys)
    assert code == 2 and "no super weight found" in err


def test_stopwords_on_lambada(models, capsys, tmp_path, fetched_data):
    code, out, err = run(["stopwords", models["sw"], "--coords", "2,17,45", "-n", "6", "--top", "3",
                          "--batch-size", "4", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "over 6 LAMBADA passages" in out and "punctuation" in out
    assert "[4/4] pruned · batch 2: 6/6 passages" in err
    payload = json.loads((tmp_path / "stopwords.json").read_text())
    assert payload["kind"] == "stopwords" and len(payload["rising"]) == 3
    assert (tmp_path / "stopwords.png").is_file()
