"""Every `--json` file starts with the same header, written by the result itself, not the command.

Each command runs as a user runs it, on a tiny model with a planted super weight saved to disk (and,
where llama-cpp-python is installed, on the same model as a GGUF run by llama.cpp). Every file must
say which schema and tool version wrote it, what kind of result it is, the command line that made
it, the model it is about, and the settings that made it (detection's config, the evaluation, where
the super weights came from). The library functions record the same without the command line.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from superweight import __version__, testing
from superweight._io import SCHEMA_VERSION
from superweight.cli import main

LAYER, ROW, COL = 2, 17, 45
COORDS = f"{LAYER},{ROW},{COL}"
TEXT = "The cat sat on the mat. It was a sunny day, and the birds sang in the trees. " * 20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("headers")
    text = root / "tiny.txt"
    text.write_text(TEXT + "\n")
    return {"model": testing.save_tiny(root / "sw", plant=(LAYER, ROW, COL)), "text": str(text), "root": root}


def run_json(argv: list[str], path) -> dict:
    """Run `superweight ARGV --json PATH` (exit 0) and read the file back."""
    code = main([*argv, "--json", str(path)])
    assert code == 0, f"{argv[0]} exited {code}"
    return json.loads(path.read_text())


def assert_header(payload: dict, kind: str, command: str, model: bool = True) -> None:
    """The header every result file starts with, and the model it is about."""
    assert list(payload)[:5] == ["schema_version", "tool", "tool_version", "kind", "command"]
    assert payload["schema_version"] == SCHEMA_VERSION and payload["tool"] == "superweight"
    assert payload["tool_version"] == __version__ and payload["kind"] == kind
    assert payload["command"].startswith(f"superweight {command} ")
    if model:
        assert payload["model"]["weights_sha256"] and payload["model"]["num_layers"] >= 1


def fast(files) -> list[str]:
    return ["--ppl", files["text"], "--tasks", "none", "--seqlen", "64", "--threads", "1"]


def test_detect_and_trace(files, tmp_path):
    p = run_json(["detect", files["model"], "--engine", "torch", "--threads", "1"], tmp_path / "d.json")
    assert_header(p, "detect", "detect")
    assert p["engine"]["engine"] == "torch" and p["engine"]["reason"]
    assert p["config"]["max_rounds"] >= 1 and [s["layer"] for s in p["super_weights"]] == [LAYER]
    p = run_json(["trace", files["model"], "--engine", "torch", "--threads", "1"], tmp_path / "t.json")
    assert_header(p, "trace", "trace")
    assert p["engine"]["engine"] == "torch" and p["config"]["max_rounds"] >= 1 and len(p["traces"]) == 1


def test_ablate_scale_stopwords(files, tmp_path, fetched_data):
    p = run_json(["ablate", files["model"], "--coords", COORDS, "-k", "10", *fast(files)], tmp_path / "a.json")
    assert_header(p, "ablate", "ablate")
    assert p["super_weight_source"] == "given coordinates" and p["quick"] is False
    assert p["evaluation"]["seqlen"] == 64 and p["evaluation"]["ppl"] == [files["text"]]
    assert p["config"] == {"modules": None} and p["rows"][0]["condition"] == "Original"
    p = run_json(["scale", files["model"], "--factors", "0,1", *fast(files)], tmp_path / "s.json")
    assert_header(p, "scale", "scale")
    assert p["super_weight_source"] == "detection" and p["evaluation"]["seqlen"] == 64 and p["factors"] == [0, 1]
    p = run_json(["stopwords", files["model"], "--coords", COORDS, "-n", "4", "--top", "2", "--threads", "1"],
                 tmp_path / "w.json")
    assert_header(p, "stopwords", "stopwords")
    assert p["super_weight_source"] == "given coordinates" and p["data"] == "lambada" and p["passages"] == 4


def test_quantize_one_config_sweep_and_no_eval(files, tmp_path):
    p = run_json(["quantize", files["model"], "--method", "superweight", "--coords", COORDS, "--bits", "4",
                  "--block", "64", *fast(files)], tmp_path / "q.json")
    assert_header(p, "quantize", "quantize")
    assert p["super_weight_source"] == "given coordinates" and p["super_weights"][0]["row"] == ROW
    assert p["evaluation"]["seqlen"] == 64 and p["config"]["method"] == "superweight"
    assert p["report"] and [r["kind"] for r in p["rows"]] == ["baseline", "weight"]
    p = run_json(["quantize", files["model"], "--sweep", "64", "--methods", "rtn", "--bits", "4", *fast(files)],
                 tmp_path / "sweep.json")
    assert_header(p, "quantize", "quantize")
    assert p["super_weight_source"] is None and p["super_weights"] == [] and p["evaluation"]["seqlen"] == 64
    assert p["config"]["blocks"] == [64] and len(p["rows"]) == 2
    out = tmp_path / "saved"
    p = run_json(["quantize", files["model"], "--no-eval", "--method", "superweight", "--bits", "8", "--block", "64",
                  "--save", str(out), "--threads", "1"], tmp_path / "n.json")
    assert_header(p, "quantize", "quantize")
    assert p["evaluation"] is None and p["super_weight_source"] == "detection" and p["config"]["bits"] == 8
    assert p["report"]
    p = run_json(["check", files["model"], str(out), "--coords", COORDS, "--threads", "1"], tmp_path / "c.json")
    assert_header(p, "check", "check", model=False)
    for side in ("original", "other"):
        assert p[side]["weights_sha256"] and p[side]["num_layers"] == 6
    assert p["super_weight_source"] == "given coordinates" and p["engine"]["engine"] == "torch"
    assert p["other_manifest"] and p["rows"][0]["survives"] is True


def test_eval_report_census(files, tmp_path):
    p = run_json(["eval", files["model"], *fast(files)], tmp_path / "e.json")
    assert_header(p, "eval", "eval")
    assert p["config"]["seqlen"] == 64 and p["summary"]
    p = run_json(["report", files["model"], "--no-verify", "--threads", "1", "--out", str(tmp_path / "r")],
                 tmp_path / "r.json")
    assert_header(p, "report", "report")
    assert p["config"]["detect"]["max_rounds"] >= 1
    assert p["detection"]["kind"] == "detect" and p["detection"]["model"] == p["model"]  # nested: its own header
    p = run_json(["census", files["model"], "--out", str(tmp_path / "c"), "--threads", "1"], tmp_path / "c.json")
    assert_header(p, "census", "census", model=False)
    assert p["settings"]["detect"]["max_rounds"] >= 1 and p["rows"][0]["status"] == "done"
    assert json.loads((tmp_path / "c" / "census.json").read_text())["kind"] == "census"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llamacpp_runs(tmp_path, monkeypatch):
    import gguf

    from superweight.testing import plant_super_weight, tiny_model
    from superweight.testing_gguf import write_gguf

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    merges = gguf.GGUFWriter.add_token_merges  # llama.cpp wants one merge (see tests/runtime/conftest.py)
    monkeypatch.setattr(gguf.GGUFWriter, "add_token_merges", lambda self, m: merges(self, m or ["Ā ā"]))
    model = tiny_model("llama", num_layers=4, hidden_size=256, intermediate_size=512, head_dim=64)
    plant_super_weight(model, 1, 7, 300, weight=20.0, input_scale=30.0)
    path = str(write_gguf(model, tmp_path / "tiny-f32.gguf", qtype="F32"))
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 37} and more text number {i}." for i in range(400)))

    p = run_json(["detect", path, "--engine", "llama.cpp", "--threads", "1"], tmp_path / "d.json")
    assert_header(p, "detect", "detect")
    assert p["model"]["ref"] == path and p["engine"]["engine"] == "llama.cpp" and p["engine"]["n_ctx"] > 0
    p = run_json(["trace", path, "--engine", "llama.cpp", "--threads", "1"], tmp_path / "t.json")
    assert_header(p, "trace", "trace")
    assert p["engine"]["engine"] == "llama.cpp" and p["config"]["max_rounds"] >= 1
    p = run_json(["eval", path, "--runtime", "llama.cpp", "--ppl", str(text), "--seqlen", "64",
                  "--max-tokens", "256", "--threads", "1"], tmp_path / "e.json")
    assert_header(p, "eval", "eval", model=False)
    assert p["model"] == path and p["config"]["seqlen"] == 64 and p["config"]["ppl"] == [str(text)]
    p = run_json(["quantize", path, "--format", "gguf", "--type", "Q8_0", "--coords", "1,7,300", "--protect", "weight",
                  "--save", str(tmp_path / "q8.gguf"), "--no-eval", "--threads", "1"], tmp_path / "q.json")
    assert_header(p, "quantize", "quantize")
    assert p["super_weight_source"] == "given coordinates" and p["config"]["type"] == "Q8_0"


def test_library_results_record_what_made_them():
    from superweight.ablation import ablation_table
    from superweight.model import wrap_model
    from superweight.selection import Selection, as_selection
    from superweight.records import SuperWeight

    model = testing.tiny_model("llama")
    testing.plant_super_weight(model, LAYER, ROW, COL)
    lm = wrap_model(model, testing.tiny_tokenizer())
    sw = SuperWeight(LAYER, ROW, COL)
    fake = lambda lm: {"score": 1.0}  # noqa: E731 — any lm -> dict evaluates
    given = ablation_table(lm, [sw], fake, k=5, conditions=["Original"]).to_dict()
    assert given["kind"] == "ablate" and "command" not in given  # not run from the command line
    assert given["super_weight_source"] == "given coordinates" and given["model"]["weights_sha256"]
    assert given["evaluation"] is None and given["quick"] is False  # a plain callable has no settings
    chosen = ablation_table(lm, Selection([sw], "catalog (paper)"), fake, k=5, conditions=["Original"])
    assert chosen.to_dict()["super_weight_source"] == "catalog (paper)"
    assert as_selection(None).super_weights == []
