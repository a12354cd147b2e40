"""`superweight quantize --format gguf` and `superweight eval --runtime llama.cpp`, run as a user runs them.

A tiny Llama (hidden and intermediate sizes multiples of 256, so every K-quant fits its rows) with a
planted super weight, written as an F32 GGUF: the command quantizes it with llama.cpp's own quantizer,
the types of the written file are read back with `gguf`, and llama.cpp scores it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from superweight.cli import main  # noqa: E402

TINY = dict(num_layers=4, hidden_size=256, intermediate_size=512, head_dim=64)
LAYER, ROW, COL = 1, 7, 300
COORDS = f"{LAYER},{ROW},{COL}"


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """The tiny files' converted copies go to a cache of this module's, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPERWEIGHT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from superweight.testing import plant_super_weight, tiny_model

    model = tiny_model("llama", **TINY)
    plant_super_weight(model, LAYER, ROW, COL, weight=20.0, input_scale=30.0)
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    from superweight.testing_gguf import write_gguf

    return write_gguf(tiny, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", qtype="F32")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(f"word{i % 37} and more text number {i}." for i in range(400)))
    return path


def _types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def _ffn(types: dict, layer: int) -> dict:
    return {k: types[f"blk.{layer}.ffn_{k}.weight"] for k in ("down", "gate", "up")}


def _quantize(tiny_gguf, out, *extra) -> int:
    return main(["quantize", str(tiny_gguf), "--format", "gguf", "--type", "Q4_K_M", "--coords", COORDS,
                 "--save", str(out), "--no-eval", *extra])


@pytest.mark.parametrize("protect", ["weight", "circuit"])
def test_protection_lands_on_exactly_the_intended_tensors(tiny_gguf, tmp_path, protect):
    out, stock = tmp_path / "out.gguf", tmp_path / "stock.gguf"
    assert _quantize(tiny_gguf, out, "--protect", protect, "--json", str(tmp_path / "r.json")) == 0
    assert _quantize(tiny_gguf, stock) == 0
    types, stock_types = _types(out), _types(stock)
    protected_layer = LAYER
    want = {"down"} | ({"gate", "up"} if protect == "circuit" else set())
    assert {k for k, v in _ffn(types, protected_layer).items() if v == "Q8_0"} == want
    changed = {n for n in types if types[n] != stock_types[n]}
    assert changed == {f"blk.{protected_layer}.ffn_{k}.weight" for k in want}  # nothing else moved
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["kind"] == "quantize" and result["config"]["protect"] == protect
    assert sorted(result["summary"]["protected"]) == sorted(changed)
    assert result["manifest"]["ftype"] == "Q4_K_M"


def test_control_moves_the_same_overrides_to_a_layer_without_a_super_weight(tiny_gguf, tmp_path):
    """Same tensor kinds, same stock types, so the same file size; nothing else changes."""
    circuit, control, stock = tmp_path / "circuit.gguf", tmp_path / "control.gguf", tmp_path / "stock.gguf"
    assert _quantize(tiny_gguf, circuit, "--protect", "circuit") == 0
    assert _quantize(tiny_gguf, control, "--protect", "circuit", "--control") == 0
    assert _quantize(tiny_gguf, stock) == 0
    c, k, s = _types(circuit), _types(control), _types(stock)
    moved = {n for n in k if k[n] != s[n]}
    layers = {int(n.split(".")[1]) for n in moved}
    assert len(layers) == 1 and LAYER not in layers
    (other,) = layers
    assert moved == {f"blk.{other}.ffn_{x}.weight" for x in ("down", "gate", "up")}
    assert all(k[n] == "Q8_0" for n in moved)
    assert {n for n in c if c[n] != s[n]} == {f"blk.{LAYER}.ffn_{x}.weight" for x in ("down", "gate", "up")}
    assert _ffn(s, other) == _ffn(s, LAYER)  # the control layer's stock types are the super weight layer's
    assert control.stat().st_size == circuit.stat().st_size


def test_quantize_then_score_in_llamacpp(tiny_gguf, text, tmp_path, capsys):
    out = tmp_path / "q8.gguf"
    assert main(["quantize", str(tiny_gguf), "--format", "gguf", "--type", "Q8_0", "--coords", COORDS,
                 "--protect", "weight", "--save", str(out), "--ppl", str(text), "--seqlen", "64",
                 "--max-tokens", "512", "--json", str(tmp_path / "q.json")]) == 0
    scores = json.loads((tmp_path / "q.json").read_text())["scores"]
    r = scores["texts"][str(text)]
    assert scores["runtime"] == "llama.cpp" and scores["reference"].endswith("model-f32.gguf")
    assert r["kld_mean"] >= 0 and 0 < r["same_top"] <= 1 and r["ppl_ratio"] > 0
    assert "mean KLD" in capsys.readouterr().out


def test_eval_in_llamacpp_against_itself_is_zero(tiny_gguf, text, tmp_path):
    assert main(["eval", str(tiny_gguf), "--runtime", "llama.cpp", "--ppl", str(text), "--seqlen", "64",
                 "--max-tokens", "512", "--reference", str(tiny_gguf), "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())["texts"][str(text)]
    assert r["kld_mean"] == 0.0 and r["same_top"] == 1.0 and r["ppl_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("extra, message", [
    (["--type", "Q4_K_X"], "unknown"),
    (["--tensor-type", r"blk\.99\.ffn_down=Q8_0"], "matches no tensor"),
    (["--tensor-type", "no-equals-sign"], "PATTERN=TYPE"),
    (["--protect-type", "Q9_9"], "unknown"),
    (["--bits", "4"], "--bits does not apply to --format gguf"),
    (["--control"], "needs protect weight or circuit"),
    (["--tasks", "piqa"], "zero-shot --tasks run in PyTorch"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_gguf, tmp_path, capsys, extra, message):
    out = tmp_path / "out.gguf"
    argv = ["quantize", str(tiny_gguf), "--format", "gguf", "--save", str(out), "--no-eval", "--coords", COORDS]
    if "--tasks" in extra:
        argv.remove("--no-eval")
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err  # (a first run also converts)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left


def test_empty_imatrix_text_and_existing_or_input_outputs(tiny_gguf, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    out = tmp_path / "out.gguf"
    base = ["quantize", str(tiny_gguf), "--format", "gguf", "--no-eval"]
    assert main(base + ["--imatrix", str(empty), "--save", str(out)]) == 2
    assert "empty" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"keep me")
    assert main(base + ["--save", str(out)]) == 2
    assert "exists; choose another file or replace it (--force)" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(base + ["--save", str(tiny_gguf), "--force"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(base + ["--save", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["quantize", str(tiny_gguf), "--format", "gguf", "--no-eval"]) == 2
    assert "--save OUT.gguf" in capsys.readouterr().err


def test_eval_llamacpp_bad_input(tiny_gguf, tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--runtime", "llama.cpp"]) == 2  # a folder: not a GGUF (an alias is)
    assert "is not one" in capsys.readouterr().err
    assert main(["eval", str(tiny_gguf), "--runtime", "llama.cpp", "--tasks", "piqa"]) == 2
    assert "zero-shot --tasks run in PyTorch" in capsys.readouterr().err
    assert main(["eval", str(tiny_gguf), "--reference", str(tiny_gguf), "--tasks", "none", "--ppl", "wiki"]) == 2
    assert "add --runtime llama.cpp" in capsys.readouterr().err


def test_without_the_pin_llamacpp_shifts_later_layers(tiny_gguf, tmp_path):
    """--no-pin leaves llama.cpp's counter alone: protecting layer 1 moves layer 2's ffn_down."""
    pinned, free, stock = tmp_path / "pinned.gguf", tmp_path / "free.gguf", tmp_path / "stock.gguf"
    assert _quantize(tiny_gguf, stock) == 0
    assert _quantize(tiny_gguf, pinned, "--protect", "weight") == 0
    assert _quantize(tiny_gguf, free, "--protect", "weight", "--no-pin") == 0
    s, p, f = _types(stock), _types(pinned), _types(free)
    assert p["blk.2.ffn_down.weight"] == s["blk.2.ffn_down.weight"]
    assert {n for n in f if f[n] != s[n]} - {n for n in p if p[n] != s[n]}  # something else moved


def test_an_importance_matrix_is_computed_and_recorded(tiny_gguf, text, tmp_path):
    out = tmp_path / "im.gguf"
    assert _quantize(tiny_gguf, out, "--imatrix", str(text), "--imatrix-tokens", "512",
                     "--json", str(tmp_path / "r.json")) == 0
    manifest = json.loads((tmp_path / "r.json").read_text())["manifest"]
    assert manifest["imatrix"] and str(text) in json.dumps(manifest)


def test_eval_against_a_pytorch_reference(tiny, tiny_gguf, text, tmp_path):
    """--reference that is not a .gguf runs in PyTorch: the same weights give a near-zero KLD."""
    from superweight.testing import save_model

    folder = tmp_path / "ref"
    save_model(tiny, folder)
    assert main(["eval", str(tiny_gguf), "--runtime", "llama.cpp", "--ppl", str(text), "--seqlen", "64",
                 "--max-tokens", "512", "--reference", str(folder), "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())["texts"][str(text)]
    assert r["kld_mean"] < 1e-3 and r["same_top"] > 0.95


def test_no_super_weight_protects_nothing_and_says_so(tiny_gguf, tmp_path):
    from superweight.model import load_model
    from superweight.quantize.api import export
    from superweight.quantize.gguf import GGUFQuantConfig

    lm = load_model(str(tiny_gguf), quiet=True)
    run = export(lm, GGUFQuantConfig("Q4_K_M", protect="circuit"), [], tmp_path / "none.gguf")
    assert run.result.overrides == [] and run.result.summary()["protected"] == []
    assert any("protects nothing" in n for n in run.result.notes)


def test_a_gguf_models_patterns_are_checked_before_it_loads(tiny_gguf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "fresh-cache"))
    assert _quantize(tiny_gguf, tmp_path / "out.gguf", "--tensor-type", r"blk\.99\.ffn_down=Q8_0") == 2
    err = capsys.readouterr().err
    assert "matches no tensor of tiny-f32.gguf" in err and "Converting" not in err
    assert not (tmp_path / "fresh-cache").exists() and not (tmp_path / "out.gguf").exists()


def test_every_planned_step_and_text_is_told_in_order(tiny_gguf, text, tmp_path):
    """The progress a user sees: each step `gguf_steps` plans (the imatrix, the F32 file, the stock
    file that pins the other tensors, the quantization), then each text scored, begin and end."""
    from superweight.model import load_model
    from superweight.quantize.api import export
    from superweight.quantize.gguf import GGUFQuantConfig, gguf_steps
    from superweight.records import SuperWeight

    lm = load_model(str(tiny_gguf), quiet=True)
    config = GGUFQuantConfig("Q4_0", protect="weight", imatrix=str(text), imatrix_tokens=512)
    sws = [SuperWeight(LAYER, ROW, COL)]
    heard = []
    export(lm, config, sws, tmp_path / "q.gguf", score={"sources": [str(text)], "seqlen": 64, "max_tokens": 512},
           on_event=heard.append)
    steps = [(e.kind, e.name, e.ended) for e in heard if e.kind != "batch"]
    plan = gguf_steps(config, sws)
    assert plan == ["importance matrix", "F32 GGUF", "stock quantization", "quantization"]
    assert steps == [s for name in plan for s in (("gguf", name, False), ("gguf", name, True))] + [
        ("score", str(text), False), ("score", str(text), True)]
    assert heard[-1].result["kld_mean"] >= 0 and any(e.kind == "batch" for e in heard)  # the imatrix's windows
