"""Super experts through the command line: `detect` on a planted MoE folder (tables, JSON, heatmap),
`check` of a copy that lost its super expert, `finetune` refusing fused experts, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from superweight.cli import main
from superweight.testing import plant_super_expert, save_model, save_tiny, tiny_model

LAYER, ROW, COL, EXPERT = 2, 7, 11, 1


def _planted(model_type: str, expert: int | None = EXPERT):
    model = tiny_model(model_type)
    plant_super_expert(model, LAYER, ROW, COL, expert=expert)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-cli")
    model = _planted("qwen3_moe")
    out = {"moe": save_model(model, root / "moe"), "dense": save_tiny(root / "dense", "llama"),
           "shared": save_model(_planted("deepseek_v3", expert=None), root / "shared")}
    with torch.no_grad():  # a copy whose super expert lost its weight (as a bad quantization would)
        model.model.layers[LAYER].mlp.experts.down_proj[EXPERT, ROW, COL] = 0.0
    out["broken"] = save_model(model, root / "broken")
    (root / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out["text"] = str(root / "text.txt")
    return out


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_detect_reports_super_experts_json_and_heatmap(models, capsys, tmp_path):
    js, plots = tmp_path / "d.json", tmp_path / "plots"
    code, out, err = run(["detect", models["moe"], "--threads", "1", "--json", str(js), "--plot", str(plots)], capsys)
    assert code == 0, err
    assert "Super experts" in out and "makes it (first after layer 2" in out and "(2, 7, 11) = 50" in out
    moe = json.loads(js.read_text())["moe"]
    (se,) = moe["super_experts"]
    assert (se["layer"], se["expert"], se["channel"], se["position"]) == (LAYER, EXPERT, ROW, 0)
    assert moe["config"]["percentile"] == 99.5 and moe["outlier_experts"] == []
    assert (plots / "expert_maxima.png").stat().st_size > 1000


def test_detect_names_the_shared_expert(models, capsys):
    code, out, err = run(["detect", models["shared"], "--threads", "1"], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if "makes it (first after layer 2" in line)
    assert "│ shared " in row


def test_check_says_the_super_expert_did_not_survive(models, capsys, tmp_path):
    js = tmp_path / "c.json"
    code, out, err = run(["check", models["moe"], models["moe"], "--threads", "1"], capsys)
    assert code == 0, err
    assert "Super experts:" in out
    code, out, err = run(["check", models["moe"], models["broken"], "--threads", "1", "--coords", "2,7,11,1",
                          "--json", str(js)], capsys)
    assert code == 1
    (row,) = json.loads(js.read_text())["super_experts"]
    assert (row["layer"], row["expert"], row["survives"]) == (LAYER, EXPERT, False) and abs(row["ratio"]) < 0.1


def test_finetune_refuses_fused_experts_in_one_line(models, capsys, tmp_path):
    code, out, err = run(["finetune", models["moe"], "--data", models["text"], "--out", str(tmp_path / "o"),
                          "--threads", "1"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "fused mixture-of-experts experts" in errors[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model, coords, message", [
    ("moe", "2,7,11,9", "expert 9 out of range for layer 2 (4 experts, 0..3)"),
    ("moe", "2,7,11", "layer 2 is a mixture of experts: give an expert index"),
    ("dense", "2,7,11,0", "layer 2 has no experts (a dense MLP): give no expert index"),
])
def test_bad_expert_coordinates_are_one_line_errors(models, capsys, tmp_path, model, coords, message):
    code, out, err = run(["scale", models[model], "--coords", coords, "--factors", "1", "--ppl", models["text"],
                          "--seqlen", "32", "--threads", "1", "--out", str(tmp_path / "o")], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, message", [("--expert-percentile", "0", "percentile must be in (0, 100]"),
                                                  ("--expert-depth", "1.5", "depth must be in (0, 1]"),
                                                  ("--expert-draws", "0", "--expert-draws must be at least 1")])
def test_bad_rule_settings_are_refused_before_the_load(models, capsys, flag, value, message):
    code, out, err = run(["detect", "/nonexistent/model", flag, value], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0]


def test_report_page_has_the_heatmap_and_the_super_expert_tables(models, capsys, tmp_path):
    code, out, err = run(["report", models["moe"], "--out", str(tmp_path / "r"), "--threads", "1"], capsys)
    assert code == 0, err
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Super experts: output maxima per layer and expert" in html and "data:image/png;base64" in html
    assert "Super experts" in html and "makes it (first after layer 2" in html
    assert "Verification: super experts pruned vs random experts" in html
