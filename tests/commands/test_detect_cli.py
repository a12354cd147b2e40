"""The detect, trace and catalog commands as a user runs them, on a saved tiny planted model."""

from __future__ import annotations

import json

import pytest

from superweight.cli import main
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_detect_writes_table_json_and_plot(model_dir, tmp_path, capsys):
    out_json, plots = tmp_path / "r.json", tmp_path / "plots"
    assert main(["detect", str(model_dir), "--json", str(out_json), "--plot", str(plots)]) == 0
    text = capsys.readouterr().out
    text = " ".join(text.split())
    assert "(2, 7, 11)" in text and "Massive activation: channel 7" in text and "first after layer 2" in text
    assert "made by super weight candidate (2, 7, 11)" in text and "Super activation" not in text
    payload = json.loads(out_json.read_text())
    assert payload["schema_version"] == 1 and payload["kind"] == "detect"
    assert payload["model"]["weights_sha256"] and payload["config"]["max_rounds"] == 5
    assert [(s["layer"], s["row"], s["col"]) for s in payload["super_weights"]] == [(2, 7, 11)]
    (act,) = payload["massive_activations"]
    assert (act["channel"], act["first_layer"], act["origin"]["kind"]) == (7, 2, "super weight")
    assert (plots / "down_proj_maxima.png").stat().st_size > 1000


def test_detect_verify_and_prompts(model_dir, capsys):
    assert main(["detect", str(model_dir), "--verify", "--prompts"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "verdict" in text and "Found in all 6 prompts: (2, 7, 11)" in text
    assert "6/6" in text and "ppl× ablated" in text


def test_trace_command(model_dir, tmp_path, capsys):
    assert main(["trace", str(model_dir), "--plot", str(tmp_path), "--json", str(tmp_path / "t.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "first in the residual stream after layer 2" in out and "made by super weight candidate (2, 7, 11)" in out
    assert (tmp_path / "residual_maxima.png").is_file()
    assert json.loads((tmp_path / "t.json").read_text())["traces"][0]["first_layer"] == 2


@pytest.mark.parametrize("argv, message", [
    (["detect", "/no/such/model"], "does not exist"),
    (["detect", "{dir}", "--prompt", " "], "prompt is empty"),
    (["detect", "{dir}", "--layers", "model.nope", "--down-proj", "mlp.down_proj"], "not found"),
    (["detect", "{dir}", "--min-output", "-1"], "must be positive"),
    (["detect", "{dir}", "--massive-ratio", "0"], "massive-ratio must be positive"),
    (["trace", "{dir}", "--massive-floor", "-5"], "massive-floor must be positive"),
    (["detect", "{dir}", "--only-layers", "1,6"], "layer 6 out of range"),
    (["detect", "{dir}", "--only-layers", "1,x"], "not a valid int"),
    (["detect", "{dir}", "--dtype", "float32", "--device", "cuda:7"], "no CUDA GPU"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, argv, message, tmp_path):
    argv = [a.replace("{dir}", str(model_dir)) for a in argv]
    code = main(argv + ["--json", str(tmp_path / "never.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "never.json").exists()


def test_only_layers_hooks_a_subset(model_dir, capsys):
    assert main(["detect", str(model_dir), "--only-layers", "0,1,2,3"]) == 0
    assert "(2, 7, 11)" in capsys.readouterr().out


def test_not_a_model_directory(tmp_path, capsys):
    assert main(["detect", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_catalog_list_show_add(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "c.json"))
    assert main(["catalog"]) == 0 and "huggyllama/llama-7b" in capsys.readouterr().out
    assert main(["catalog", "show", "meta-llama/Llama-2-7b-hf"]) == 0
    assert "(1, 2533, 7890)" in capsys.readouterr().out
    assert main(["catalog", "add", "me/m", "1,2,3", "4,5,6"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["entries"][0]["super_weights"] == [[1, 2, 3], [4, 5, 6]]
    assert main(["catalog", "add", "me/m", "1,2"]) == 2
    assert main(["catalog", "show", "meta-llama/Llama-2"]) == 2


def test_detect_in_bfloat16(model_dir, capsys):
    assert main(["detect", str(model_dir), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "(2, 7, 11)" in out


def test_detect_save_catalog_then_agrees(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "cat.json"))
    assert main(["detect", str(model_dir), "--model-id", "me/tiny", "--save-catalog"]) == 0
    assert "Added to the local catalog" in capsys.readouterr().err
    assert main(["catalog", "path"]) == 0 and "cat.json" in capsys.readouterr().out
    assert main(["detect", str(model_dir), "--model-id", "me/tiny"]) == 0
    assert "agrees with the catalog" in capsys.readouterr().out
