"""The llama.cpp detection engine against the PyTorch engine, on tiny GGUFs of several architectures
(planted super weights, float32 files: the same weights in both engines) and on the default model.

Tolerances: llama.cpp computes in float32 on the CPU, so on an F32 file the activations agree with
PyTorch's to float32 rounding (checked at 1e-3 relative: the two sum in different orders); on a
quantized file llama.cpp multiplies by 8-bit quantized activations, 1-2 % apart (checked at 3 %).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from superweight.cli import main  # noqa: E402
from superweight.detect import DetectConfig, detect  # noqa: E402
from superweight.errors import SuperweightError  # noqa: E402
from superweight.interventions import AblationLog, ablate_massive, prune  # noqa: E402
from superweight.massive import MassiveCriterion  # noqa: E402
from superweight.model.load import wrap_model  # noqa: E402
from superweight.runtime.detect import (LlamaCppEngine, LlamaCppScorer, _Edits, choose_engine,  # noqa: E402
                                        detect_gguf, verify_gguf)
from superweight.runtime.graph import GRAPH_NAMES, graph_names, split_name  # noqa: E402
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer  # noqa: E402
from superweight.testing_gguf import write_gguf  # noqa: E402
from superweight.verify import verify  # noqa: E402

PROMPT = "Apple Inc. is a worldwide tech company."
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "olmo2"]


def planted_pair(model_type: str, tmp_path, qtype: str = "F32", plants=((1, 7, 11),)):
    """(in-memory planted model, its GGUF path)."""
    model = tiny_model(model_type, num_layers=4)
    for p in plants:
        plant_super_weight(model, *p)
    path = write_gguf(model, tmp_path / f"{model_type}.gguf", qtype=qtype)
    return wrap_model(model, tiny_tokenizer()), path


def summary(result):
    return ([s.key for s in result.super_weights],
            [(a.channel, a.first_layer, a.last_layer, tuple(a.positions), a.origin.kind if a.origin else None)
             for a in result.massive])  # (`position`, the largest of equal values, is a tie on planted models)


@pytest.mark.parametrize("model_type", ARCHS)
def test_both_engines_find_the_same(model_type, tmp_path):
    lm, path = planted_pair(model_type, tmp_path)
    a = detect(lm, PROMPT)
    with LlamaCppEngine(path, n_threads=1) as engine:
        b = detect_gguf(engine, PROMPT)
    assert summary(a) == summary(b)
    assert [s.key for s in a.early] == [(1, 7, 11, None)]
    for x, y in zip(a.super_weights, b.super_weights):
        assert x.value == y.value  # read from the file itself: bit-identical
        assert x.rank == y.rank
        assert math.isclose(x.output_value, y.output_value, rel_tol=1e-3)
        assert math.isclose(x.input_value, y.input_value, rel_tol=1e-3)
    for x, y in zip(a.massive, b.massive):
        assert math.isclose(x.value, y.value, rel_tol=1e-3)
    assert a.rounds == b.rounds and a.converged == b.converged
    assert a.tokens == b.tokens  # llama.cpp's tokenizer, the same byte vocabulary


def test_rounds_find_a_second_weight_after_the_first_is_removed(tmp_path):
    """Round 2 runs with round 1's weight removed in the callback: both engines agree on all rounds."""
    lm, path = planted_pair("llama", tmp_path, plants=((1, 7, 11), (2, 9, 30)))
    config = DetectConfig(max_rounds=3)
    a = detect(lm, PROMPT, config)
    with LlamaCppEngine(path, n_threads=1) as engine:
        b = detect_gguf(engine, PROMPT, config)
    assert summary(a) == summary(b) and a.rounds == b.rounds >= 2  # round 2: removed in the callback
    assert [(s.key, s.round) for s in a.super_weights] == [(s.key, s.round) for s in b.super_weights]
    for ra, rb in zip(a.layer_stats, b.layer_stats):
        assert [s.out_channel for s in ra] == [s.out_channel for s in rb]
        np.testing.assert_allclose([s.out_value for s in ra], [s.out_value for s in rb], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])  # gemma3: a post-MLP norm after the edit
def test_removing_in_the_callback_equals_zeroing_the_weight(model_type, tmp_path):
    """Logits with W[row, col]'s product removed in the callback == logits of a GGUF with it zeroed."""
    lm, path = planted_pair(model_type, tmp_path)
    with prune(lm.view, [(1, 7, 11)]):
        zeroed = write_gguf(lm.model, tmp_path / "zeroed.gguf", qtype="F32")
    with LlamaCppEngine(path, n_threads=1) as engine:
        ids = engine.encode(PROMPT)
        original = engine.run(ids)
        removed = engine.run(ids, _pass(engine, [(1, 7, 11, None)]))
    with LlamaCppEngine(zeroed, n_threads=1) as engine:
        truth = engine.run(ids)
    effect = np.abs(original - truth).max()  # what zeroing the weight changes...
    error = np.abs(removed - truth).max()  # ...and how far removing it in the callback is from that
    # float32: y[row] - w·x rounds at the spike's size (~5000 · 2^-24 per add), then the norms follow
    assert effect > 0.1 and error < 1e-2 * effect, (effect, error)


def _pass(engine, pruned):
    from superweight.runtime.detect import _Pass

    return _Pass(engine, _Edits(pruned=pruned))


def test_ablation_and_perplexity_match_the_torch_engine(tmp_path):
    """The same window, the same edits: perplexities agree; verification gives the same verdicts."""
    lm, path = planted_pair("llama", tmp_path)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    with LlamaCppEngine(path, n_threads=1) as engine:
        scorer = LlamaCppScorer(engine, text, 128)
        ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :128]
        assert scorer.ids == ids[0].tolist()
        from superweight.verify import text_perplexity

        assert math.isclose(scorer.ppl(), text_perplexity(lm, ids), rel_tol=1e-4)
        assert math.isclose(scorer.ppl([(1, 7, 11, None)]), _pruned_ppl(lm, ids), rel_tol=1e-4)
        log = AblationLog(7, 1)
        ablated = scorer.ppl(ablate=(7, 1, MassiveCriterion(100.0, 1000.0)), log=log)
        with ablate_massive(lm.view, 7, 1, MassiveCriterion(100.0, 1000.0)) as tlog:
            expected = text_perplexity(lm, ids)
        assert log.replaced == tlog.replaced > 0
        assert math.isclose(ablated, expected, rel_tol=1e-4)
        result = detect_gguf(engine, PROMPT)
        v = verify_gguf(engine, result.super_weights, text=text, threshold=3.0, massive=result.massive)
    reference = detect(lm, PROMPT)
    w = verify(lm, reference.super_weights, text=text, threshold=3.0, massive=reference.massive)
    assert [s.verdict for s in result.super_weights] == [s.verdict for s in reference.super_weights]
    assert [a.verdict for a in result.massive] == [a.verdict for a in reference.massive]
    assert v.tokens == w.tokens and math.isclose(v.ppl, w.ppl, rel_tol=1e-4)


def _pruned_ppl(lm, ids):
    from superweight.verify import text_perplexity

    with prune(lm.view, [(1, 7, 11)]):
        return text_perplexity(lm, ids)


def test_quantized_file_agrees_with_its_conversion(tmp_path, monkeypatch):
    """A Q8_0 file: the torch engine reads its converted copy, llama.cpp the file itself."""
    from superweight.model.load import load_model

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    _, path = planted_pair("llama", tmp_path, qtype="Q8_0")
    a = detect(load_model(str(path), quiet=True), PROMPT)
    with LlamaCppEngine(path, n_threads=1) as engine:
        b = detect_gguf(engine, PROMPT)
    assert summary(a) == summary(b)
    for x, y in zip(a.super_weights, b.super_weights):
        assert x.value == y.value and x.rank == y.rank
        assert math.isclose(x.output_value, y.output_value, rel_tol=3e-2)


def test_bad_files_give_the_same_one_line_errors(tmp_path):
    from superweight.model.load import load_model

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    _, good = planted_pair("llama", tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:200])
    for path in (tmp_path / "missing.gguf", bad, cut):
        with pytest.raises(SuperweightError) as torch_err:
            load_model(str(path), quiet=True)
        with pytest.raises(SuperweightError) as lcpp_err:
            LlamaCppEngine(path)
        assert str(lcpp_err.value) == str(torch_err.value)
        assert "\n" not in str(lcpp_err.value)


def test_an_unmapped_architecture_is_refused_in_one_line(tmp_path, capsys):
    path = write_gguf(tiny_model("gpt2", num_layers=2), tmp_path / "g.gguf")
    with pytest.raises(SuperweightError, match="does not know the graph of architecture 'gpt2'"):
        graph_names("gpt2")
    assert main(["detect", str(path), "--engine", "llama.cpp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "'gpt2'" in err and "\n" not in err
    assert choose_engine(str(path)).engine == "torch"  # auto falls back


def test_graph_names_are_data():
    assert split_name("ffn_out-11") == ("ffn_out", 11) and split_name("embd") == ("embd", None)
    assert graph_names("gemma2").post_norm and not graph_names("llama").post_norm
    assert set(GRAPH_NAMES) >= {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2"}


def test_cli_auto_picks_llamacpp_for_a_gguf_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    _, path = planted_pair("llama", tmp_path)
    out = tmp_path / "r.json"
    assert main(["detect", str(path), "--threads", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["engine"]["engine"] == "llama.cpp" and d["model"]["tokenizer"] == "llama.cpp"
    assert [(s["layer"], s["row"], s["col"]) for s in d["super_weights"]] == [[1, 7, 11]] or \
        [[s["layer"], s["row"], s["col"]] for s in d["super_weights"]] == [[1, 7, 11]]
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
    assert main(["detect", str(path), "--engine", "torch", "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["engine"]["engine"] == "torch"
    assert choose_engine(str(path), cache_dtype="bfloat16", torch_only=["--cache-dtype"]).engine == "torch"
    assert choose_engine("some/hub-id").engine == "torch"
    with pytest.raises(SuperweightError, match="runs a .gguf file or a built-in alias"):
        choose_engine("some/hub-id", "llama.cpp")


@pytest.mark.integration
def test_default_model_both_engines():
    """The real default model (Q4_1 GGUF): the same super weights and massive activation."""
    from superweight.model.load import alias_gguf, load_model

    a = detect(load_model("smollm2-135m", quiet=True))
    with LlamaCppEngine(alias_gguf("smollm2-135m")) as engine:
        b = detect_gguf(engine)
    assert summary(a) == summary(b)
    assert [s.coord for s in b.early] == [(11, 507, 1229), (11, 507, 1487)]
    for x, y in zip(a.super_weights, b.super_weights):
        assert x.value == y.value and x.rank == y.rank
        assert math.isclose(x.output_value, y.output_value, rel_tol=3e-2)


def test_trace_matches_the_torch_engine(tmp_path, capsys):
    from superweight.activations import trace
    from superweight.runtime.detect import trace_gguf

    lm, path = planted_pair("qwen2", tmp_path)
    a = trace(lm, PROMPT)
    with LlamaCppEngine(path, n_threads=1) as engine:
        b = trace_gguf(engine, PROMPT)
    assert (a.activation.channel, a.first_layer, a.last_layer) == (b.activation.channel, b.first_layer, b.last_layer)
    assert [s.key for s in a.removed] == [s.key for s in b.removed] == [(1, 7, 11, None)]
    for ra, rb in ((a.original, b.original), (a.pruned, b.pruned)):
        assert [(r.layer, r.channel) for r in ra] == [(r.layer, r.channel) for r in rb]
        np.testing.assert_allclose([r.at for r in ra], [r.at for r in rb], rtol=1e-3, atol=1e-3)
    assert max(abs(r.at) for r in b.pruned) < 100 < max(abs(r.at) for r in b.original)
    out = tmp_path / "t.json"
    assert main(["trace", str(path), "--engine", "llama.cpp", "--threads", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["engine"]["engine"] == "llama.cpp" and d["traces"][0]["first_layer"] == 1


def test_check_against_a_gguf_run_by_llamacpp(tmp_path, monkeypatch):
    """`check ORIGINAL OTHER.gguf`: the other copy run as it is equals the torch engine's reading of it."""
    from superweight.testing import save_model

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    lm, _ = planted_pair("llama", tmp_path)
    original = save_model(lm.model, tmp_path / "orig")
    other = write_gguf(lm.model, tmp_path / "q.gguf", qtype="Q8_0")
    rows = {}
    for engine in ("llama.cpp", "torch"):
        out = tmp_path / f"{engine}.json"
        assert main(["check", original, str(other), "--engine", engine, "--threads", "1", "--json", str(out)]) == 0
        d = json.loads(out.read_text())
        assert d["engine"]["engine"] == engine
        rows[engine] = d["rows"]
    for a, b in zip(rows["llama.cpp"], rows["torch"]):
        assert (a["layer"], a["row"], a["col"]) == (b["layer"], b["row"], b["col"]) == (1, 7, 11)
        assert a["other"] == b["other"] and a["survives"] and b["survives"]
        assert math.isclose(a["activation_other"], b["activation_other"], rel_tol=3e-2)
