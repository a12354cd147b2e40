"""Memory budgets: every feature gives the same results with layers offloaded to disk as with a full load.

A tiny Llama (hidden 256, 8 layers) with a planted super weight at layer 3 is saved as safetensors and
loaded twice: whole, and under a budget of a third of its weights, so that accelerate keeps layers
2-7 on disk (the super weight's layer among them) and reads them from the model's own file when their
forward runs. Detection, trace, verify, check, every edit, quantization and perplexity must agree
(coordinates equal, values within 1e-6 relative — in practice bit for bit, the same kernels run on
the same weights), and every edit must leave all weights bit-identical, also after an exception.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.model import load_model
from superweight.model.budget import parse_size, plan_memory, summarize_device_map
from superweight.model.offload import Overrides, is_offloaded, read_param
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

LAYER, ROW, COL = 3, 7, 11
TEXT = "The quick brown fox jumps over the lazy dog. " * 6
REL = 1e-6


def _save(path, model_type="llama", layer=LAYER, **overrides):
    model = tiny_model(model_type, num_layers=8, **overrides)
    plant_super_weight(model, layer, ROW, COL)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny-llama-256"), hidden_size=256, intermediate_size=512,
                 head_dim=64)


@pytest.fixture(scope="module")
def full(model_dir):
    return load_model(str(model_dir), quiet=True)


@pytest.fixture(scope="module")
def off(model_dir, full):
    return load_model(str(model_dir), quiet=True, max_memory=full.plan.weights_bytes // 3)


def _file_hash(model_dir) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(torch.uint8).numpy().tobytes()


def _weights(lm) -> dict[str, bytes]:
    """Every parameter's bits, offloaded ones read from the offload map."""
    out = {}
    for mname, module in lm.model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}"] = _bits(read_param(module, pname))
    return out


def _offload_state(lm):
    loader = lm.view.down_proj(LAYER).module._hf_hook.weights_map.dataset
    return dict(loader.state_dict), copy.deepcopy(loader.index)


def _logits(lm, text=TEXT) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt").input_ids.to(lm.device)
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def _close(a, b) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool(((a - b).abs() <= REL * b.abs().clamp_min(1e-30)).all())


# --- the plan and the load -------------------------------------------------------------------------

def test_budget_offloads_layers_and_the_report_says_so(full, off):
    assert is_offloaded(off.view.down_proj(LAYER).module)
    assert not is_offloaded(full.view.down_proj(LAYER).module)
    mem = off.describe()["memory"]
    assert mem["offloaded"] and mem["budget_source"] == "given"
    assert mem["budget_bytes"] == full.plan.weights_bytes // 3 < mem["weights_bytes"]
    layers = mem["device_map"]["layers"]
    assert layers["disk"]["count"] + layers.get("cpu", {"count": 0})["count"] == 8
    assert str(LAYER) in layers["disk"]["which"] or "-" in layers["disk"]["which"]
    assert mem["device_map"]["other"]["model.embed_tokens"] == "cpu"
    whole = full.describe()["memory"]
    assert not whole["offloaded"] and whole["budget"] is None
    assert whole["device_map"]["layers"] == {"cpu": {"count": 8, "which": "0-7"}}
    assert off.device == torch.device("cpu") and off.dtype == torch.float32
    json.dumps(off.describe())  # serialisable as it is


def test_same_logits_and_same_tensors(full, off):
    from superweight.model import wrap_model

    assert torch.equal(_logits(full), _logits(off))
    assert _weights(full) == _weights(off)
    assert wrap_model(off.model).weights_hash() == wrap_model(full.model).weights_hash()


def test_device_map_summary_is_compact():
    dm = {"model.embed_tokens": "cpu", "model.layers.0": 0, "model.layers.1": "cpu",
          "model.layers.2": "disk", "model.layers.3": "disk", "model.layers.5": "disk", "lm_head": "disk"}
    s = summarize_device_map(dm, "model.layers", 6, "cpu")
    assert s["layers"] == {"cuda:0": {"count": 1, "which": "0"}, "cpu": {"count": 1, "which": "1"},
                           "disk": {"count": 3, "which": "2-3,5"}}
    assert s["other"] == {"model.embed_tokens": "cpu", "lm_head": "disk"}


@pytest.mark.parametrize("text, expected", [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6),
                                            ("1.5 gb", 1_500_000_000), ("64KiB", 65536), (4096, 4096)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2XB", "2", "GiB", "-1GiB", "0MB", ""])
def test_bad_sizes_are_one_clear_error(text):
    with pytest.raises(SuperweightError, match="memory budget"):
        parse_size(text)


def _no_weight_reads(monkeypatch):
    """Make any attempt to read weights fail loudly."""
    import safetensors
    import transformers

    def refuse(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr("safetensors.torch.load_file", refuse)


def test_impossible_budget_fails_before_any_weight_loads(model_dir, monkeypatch):
    _no_weight_reads(monkeypatch)
    with pytest.raises(SuperweightError, match=r"too small: the largest piece that cannot be split "
                                               r"\(model\.layers\.0 and 7 more\) needs 2\.\d MiB"):
        load_model(str(model_dir), quiet=True, max_memory="1MiB")


def test_automatic_budget_when_the_model_does_not_fit(model_dir, full, monkeypatch, capsys):
    monkeypatch.setattr("superweight.model.budget.available_ram", lambda: full.plan.weights_bytes)
    lm = load_model(str(model_dir), quiet=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(err) == 1 and "memory budget of" in err[0] and "--max-memory" in err[0]
    mem = lm.memory()
    assert mem["budget_source"] == "auto" and mem["offloaded"]
    assert mem["budget_bytes"] == full.plan.weights_bytes // 2
    assert torch.equal(_logits(lm), _logits(full))


def test_no_budget_when_the_model_fits(model_dir, full):
    assert full.plan.source == "none" and full.plan.device_map is None


def test_dtype_auto_takes_the_checkpoints(tmp_path):
    model = tiny_model("llama", num_layers=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    assert load_model(str(tmp_path), dtype="auto", quiet=True).dtype == torch.bfloat16
    assert load_model(str(tmp_path), quiet=True).dtype == torch.float32


def test_device_auto_spreads_over_gpus_then_ram_then_disk(model_dir, full, monkeypatch):
    """No GPU here: accelerate's free-memory probe is replaced by two pretend GPUs."""
    from transformers import AutoConfig

    import accelerate.utils

    layer = full.plan.weights_bytes // 10
    monkeypatch.setattr(accelerate.utils, "get_max_memory",
                        lambda *a: {0: 3 * layer, 1: 2 * layer, "cpu": 10**12})
    plan = plan_memory(AutoConfig.from_pretrained(model_dir), torch.float32, "auto", max_memory=4 * layer)
    devices = list(plan.device_map.values())
    assert devices[0] == 0 and 1 in devices and "cpu" in devices and devices[-1] == "disk"
    assert devices.index(1) > devices.index(0) and devices.index("disk") > devices.index("cpu")


# --- detection, trace, verify, check ---------------------------------------------------------------

def test_detect_is_identical(full, off):
    from superweight.detect import detect

    a, b = detect(full), detect(off)
    assert [s.coord for s in a.super_weights] == [s.coord for s in b.super_weights] == [(LAYER, ROW, COL)]
    for x, y in zip(a.super_weights, b.super_weights):
        assert _close(x.value, y.value) and _close(x.output_value, y.output_value)
        assert _close(x.input_value, y.input_value) and x.rank == y.rank
    for ra, rb in zip(a.layer_stats, b.layer_stats):
        assert [s.to_dict() for s in ra] == [s.to_dict() for s in rb]


def test_verify_is_identical(full, off):
    from superweight.detect import find_super_weights
    from superweight.verify import verify

    sa, sb = find_super_weights(full), find_super_weights(off)
    va, vb = verify(full, sa, text=TEXT), verify(off, sb, text=TEXT)
    assert _close(va.ppl, vb.ppl) and _close(va.ppl_all_pruned, vb.ppl_all_pruned)
    assert [(s.ppl_ratio, s.verdict) for s in sa] == [(s.ppl_ratio, s.verdict) for s in sb]


def test_trace_is_identical(full, off):
    from superweight.activations import trace

    a, b = trace(full), trace(off)
    assert (a.first_layer, a.last_layer) == (b.first_layer, b.last_layer) and a.first_layer == LAYER
    assert a.activation == b.activation
    for x, y in zip(a.original + a.pruned, b.original + b.pruned):
        assert (x.layer, x.channel, x.position) == (y.layer, y.channel, y.position)
        assert _close(x.value, y.value) and _close(x.at, y.at) and _close(x.median, y.median)


def test_check_is_identical_both_ways(full, off):
    from superweight.quantize.check import check_models

    ab, ba, aa = check_models(full, off), check_models(off, full), check_models(full, full)
    assert [r.to_dict() for r in ab] == [r.to_dict() for r in ba] == [r.to_dict() for r in aa]
    assert ab[0].survives and ab[0].original == ab[0].other


def test_weight_reads_through_the_view(full, off):
    for layer in range(8):
        assert torch.equal(full.view.down_proj(layer).matrix(), off.view.down_proj(layer).matrix())
        fa, fb = full.view.feature_rows(layer, COL), off.view.feature_rows(layer, COL)
        assert all(torch.equal(x.weight, y.weight) for x, y in zip(fa, fb))
    assert off.view.down_proj(LAYER).matrix()[ROW, COL] == 50.0
    copy_ = off.view.down_proj(LAYER).matrix()
    copy_[ROW, COL] = 0.0  # a copy: writing into it changes nothing
    assert off.view.down_proj(LAYER).matrix()[ROW, COL] == 50.0


# --- edits -----------------------------------------------------------------------------------------

def _edits(sws):
    from superweight.interventions import prune, prune_top_k, restore_super_activation, scale, set_weights

    two = [(LAYER, ROW, COL), (LAYER, ROW + 1, COL + 1)]  # two entries of one offloaded matrix
    return {
        "prune": lambda lm: prune(lm.view, sws),
        "scale": lambda lm: scale(lm.view, sws, 3.0),
        "set_two": lambda lm: set_weights(lm.view, {two[0]: 1.5, two[1]: -2.0}),
        "prune_top_k": lambda lm: prune_top_k(lm.view, 300, exclude=sws),
        "restore_sa": lambda lm: restore_super_activation(lm.view, sws),
    }


@pytest.fixture(scope="module")
def measured(full):
    from superweight.detect import find_super_weights
    from superweight.interventions import measure_super_activations

    return measure_super_activations(full, find_super_weights(full))


@pytest.mark.parametrize("name", ["prune", "scale", "set_two", "prune_top_k", "restore_sa"])
def test_edits_take_effect_and_restore_bit_for_bit(full, off, measured, model_dir, name):
    edit = _edits(measured)[name]
    before, state, file_hash = _weights(off), _offload_state(off), _file_hash(model_dir)
    base = _logits(off)
    with edit(full):
        expected = _logits(full)
    with edit(off) as info:
        got = _logits(off)
        assert _offload_state(off) != state  # an edited tensor stands in for an offloaded one
    if name == "restore_sa":  # one super weight at one layer: restoring its activation everywhere
        assert info.restored > 0 and torch.equal(expected, base)  # gives back the unpruned model
    else:
        assert not torch.equal(expected, base)  # the edit did something ...
    assert _close(got, expected)  # ... the same thing under the budget
    if name == "prune_top_k":
        assert any(f"layers.{i}." in m for m in info.per_module for i in range(2, 8))  # offloaded ones
    assert _weights(off) == before and _offload_state(off) == state
    assert torch.equal(_logits(off), base) and _file_hash(model_dir) == file_hash


@pytest.mark.parametrize("name", ["prune", "set_two", "prune_top_k", "restore_sa"])
def test_edits_restore_after_an_exception(off, measured, name):
    before, state = _weights(off), _offload_state(off)
    with pytest.raises(RuntimeError, match="boom"):
        with _edits(measured)[name](off):
            _logits(off)
            raise RuntimeError("boom")
    assert _weights(off) == before and _offload_state(off) == state


def test_nested_edits_of_one_offloaded_matrix(off):
    proj = off.view.down_proj(LAYER)
    original = proj.matrix().clone()
    with Overrides() as outer:
        outer.set_entries(proj.module, "weight", proj.index(ROW, COL), 0.0)
        with Overrides() as inner:
            inner.set_entries(proj.module, "weight", proj.index(0, 0), 9.0)
            w = proj.matrix()
            assert w[ROW, COL] == 0.0 and w[0, 0] == 9.0
        w = proj.matrix()
        assert w[ROW, COL] == 0.0 and w[0, 0] == original[0, 0]
    assert torch.equal(proj.matrix(), original)


# --- quantization ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rtn", "superweight"])
def test_quantized_is_identical_and_restores(full, off, measured, model_dir, method):
    from superweight.quantize.rtn import RTNConfig
    from superweight.quantize.superweight import SuperWeightQuantConfig
    from superweight.quantize.weights import quantized

    config = (SuperWeightQuantConfig if method == "superweight" else RTNConfig)(bits=4, block=256)
    before, state, file_hash = _weights(off), _offload_state(off), _file_hash(model_dir)
    with quantized(full, config, measured) as ra:
        expected = _logits(full)
    with quantized(off, config, measured) as rb:
        got = _logits(off)
        in_memory, index = _offload_state(off)
        files = {v["safetensors_file"] for v in index.values()}
        edited = index[f"model.layers.{LAYER}.mlp.down_proj.weight"]["safetensors_file"]
        assert not in_memory and not edited.startswith(str(model_dir))  # in a private folder, not RAM
    assert torch.equal(got, expected)
    assert [t.rel_error for t in ra.tensors] == [t.rel_error for t in rb.tensors]
    assert _weights(off) == before and _offload_state(off) == state and _file_hash(model_dir) == file_hash
    from pathlib import Path

    assert not Path(edited).exists()  # the private folder is gone
    assert all(Path(f).exists() for f in files if f.startswith(str(model_dir)))


@pytest.mark.parametrize("method", ["superact", "smoothquant"])
def test_w8a8_is_identical_and_restores(full, off, method):
    from superweight.quantize.w8a8.core import fake_w8a8
    from superweight.quantize.w8a8.smoothquant import SmoothQuantW8A8Config
    from superweight.quantize.w8a8.superact import SuperActW8A8Config

    def plan(lm):
        if method == "superact":
            return SuperActW8A8Config(), None
        config = SmoothQuantW8A8Config()
        return config, config.build_plan(lm, calib_ids=lm.tokenizer(TEXT, return_tensors="pt").input_ids)

    before, state = _weights(off), _offload_state(off)
    ca, plan_a = plan(full)
    cb, plan_b = plan(off)
    with fake_w8a8(full, ca, plan_a) as pa:
        expected = _logits(full)
    with fake_w8a8(off, cb, plan_b) as pb:
        got = _logits(off)
        with pytest.raises(RuntimeError, match="boom"):  # nested, and an error inside
            with fake_w8a8(off, cb, plan_b):
                raise RuntimeError("boom")
        assert torch.equal(_logits(off), got)
    assert pa.summary().keys() == pb.summary().keys() and torch.equal(got, expected)
    if method == "smoothquant":
        assert all(torch.equal(plan_a.linears[n].scales, plan_b.linears[n].scales) for n in plan_a.linears)
    assert _weights(off) == before and _offload_state(off) == state


def test_quantize_in_place_under_a_budget_then_save(model_dir, full, measured, tmp_path):
    from safetensors.torch import load_file

    from superweight.quantize.export import save_checkpoint
    from superweight.quantize.superweight import SuperWeightQuantConfig
    from superweight.quantize.weights import quantize_, quantized

    config = SuperWeightQuantConfig(bits=4, block=256)
    lm = load_model(str(model_dir), quiet=True, max_memory=full.plan.weights_bytes // 3)
    file_hash = _file_hash(model_dir)
    quantize_(lm, config, measured)
    with quantized(full, config, measured):
        assert torch.equal(_logits(lm), _logits(full))
        save_checkpoint(full, tmp_path / "a", {})
    save_checkpoint(lm, tmp_path / "b", {})
    a, b = ({k: v for f in sorted((tmp_path / d).glob("*.safetensors")) for k, v in load_file(f).items()}
            for d in "ab")  # the budgeted save is sharded (shards of half the budget)
    assert len(list((tmp_path / "b").glob("*.safetensors"))) > 1
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _file_hash(model_dir) == file_hash


# --- perplexity ------------------------------------------------------------------------------------

def test_perplexity_of_a_local_file_is_identical(full, off, tmp_path):
    from superweight.evaluate.perplexity import perplexity

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4)
    a = perplexity(full, str(text), seqlen=64)
    b = perplexity(off, str(text), seqlen=64)
    assert a.windows == b.windows > 1 and _close(a.ppl, b.ppl)


# --- other layouts: fused MoE experts, GPT-2's Conv1D, Gemma 2's post-MLP norm ---------------------

@pytest.mark.parametrize("model_type, overrides", [
    ("mixtral", dict(hidden_size=128, intermediate_size=256, head_dim=32)),
    ("gpt2", dict(n_embd=128, n_inner=256)),
    ("gemma2", dict(hidden_size=128, intermediate_size=256, head_dim=32, query_pre_attn_scalar=32)),
])
def test_other_layouts_detect_and_prune_the_same(tmp_path, model_type, overrides):
    from superweight.detect import detect
    from superweight.interventions import prune

    path = _save(tmp_path, model_type, **overrides) if model_type != "mixtral" else None
    if model_type == "mixtral":
        model = tiny_model("mixtral", num_layers=8, **overrides)
        plant_super_weight(model, LAYER, ROW, COL, expert=1)
        model.save_pretrained(tmp_path)
        tiny_tokenizer().save_pretrained(tmp_path)
        path = tmp_path
    a = load_model(str(path), quiet=True)
    b = load_model(str(path), quiet=True, max_memory=a.plan.weights_bytes // 3)
    proj = b.view.down_projs(LAYER)[0]
    assert is_offloaded(proj.module, proj.param)
    da, db = detect(a), detect(b)
    assert [s.key for s in da.super_weights] == [s.key for s in db.super_weights]
    assert (LAYER, ROW, COL) in [s.coord for s in da.super_weights]
    assert [s.to_dict() for s in da.super_weights] == [s.to_dict() for s in db.super_weights]
    assert [m.to_dict() for m in da.massive] == [m.to_dict() for m in db.massive]
    before = _weights(b)
    with prune(a.view, da.super_weights):
        expected = _logits(a, TEXT[:100])
    with prune(b.view, da.super_weights):
        assert torch.equal(_logits(b, TEXT[:100]), expected)
    assert _weights(b) == before


# --- the command line ------------------------------------------------------------------------------

def _run(argv, capsys):
    from superweight.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def test_cli_detect_trace_under_a_budget_match_a_full_load(model_dir, full, tmp_path, capsys):
    budget = f"{full.plan.weights_bytes // 3}B"
    for command in ("detect", "trace"):
        results = []
        for extra in ([], ["--max-memory", budget]):
            out = tmp_path / f"{command}{len(extra)}.json"
            code, _ = _run([command, str(model_dir), "--json", str(out), "--threads", "1", *extra], capsys)
            assert code == 0
            results.append(json.loads(out.read_text()))
        whole, budgeted = results
        assert budgeted["model"]["memory"]["offloaded"] and not whole["model"]["memory"]["offloaded"]
        assert budgeted["model"]["memory"]["budget_bytes"] == full.plan.weights_bytes // 3
        assert budgeted["command"].endswith(" --max-memory " + budget)
        assert _timeless(whole, "model", "command") == _timeless(budgeted, "model", "command")


def test_cli_check_and_quantize_under_a_budget(model_dir, full, tmp_path, capsys):
    budget = f"{2 * full.plan.weights_bytes // 3}B"  # check splits it between the two models
    code, _ = _run(["check", str(model_dir), str(model_dir), "--max-memory", budget,
                    "--json", str(tmp_path / "c.json")], capsys)
    payload = json.loads((tmp_path / "c.json").read_text())
    assert code == 0 and payload["original"]["memory"]["offloaded"] and payload["other"]["memory"]["offloaded"]
    assert [(r["layer"], r["row"], r["col"], r["survives"]) for r in payload["rows"]] == [(LAYER, ROW, COL, True)]
    rows = []
    for extra in ([], ["--max-memory", f"{full.plan.weights_bytes // 3}B"]):
        out = tmp_path / f"q{len(extra)}.json"
        code, _ = _run(["quantize", str(model_dir), "--no-eval", "--method", "superweight", "--bits", "4",
                        "--block", "256", "--json", str(out), *extra], capsys)
        assert code == 0
        rows.append(json.loads(out.read_text()))
    assert rows[1]["model"]["memory"]["offloaded"]
    assert _timeless(rows[0], "model", "command") == _timeless(rows[1], "model", "command")


def _timeless(obj, *drop):
    """The payload without timings (and the keys in `drop`, at any depth: nested results have headers)."""
    if isinstance(obj, dict):
        return {k: _timeless(v, *drop) for k, v in obj.items() if k != "seconds" and k not in drop}
    if isinstance(obj, list):
        return [_timeless(v, *drop) for v in obj]
    return obj


def test_cli_report_under_a_budget_matches_a_full_load(model_dir, full, tmp_path, capsys):
    pages = []
    for extra in ([], ["--max-memory", f"{full.plan.weights_bytes // 3}B"]):
        out = tmp_path / f"r{len(extra)}"
        code, _ = _run(["report", str(model_dir), "--out", str(out), "--json", str(out / "r.json"), *extra], capsys)
        assert code == 0
        pages.append(json.loads((out / "r.json").read_text()))
    assert pages[1]["model"]["memory"]["offloaded"] and not pages[0]["model"]["memory"]["offloaded"]
    assert _timeless(pages[0], "model", "command") == _timeless(pages[1], "model", "command")
    assert (LAYER, ROW, COL) in [(s["layer"], s["row"], s["col"]) for s in pages[1]["detection"]["super_weights"]]


@pytest.mark.parametrize("argv", [
    ["ablate", "-k", "50"],
    ["scale", "--factors", "0,1,2"],
    ["stopwords", "-n", "4"],
], ids=["ablate", "scale", "stopwords"])
def test_cli_ablations_under_a_budget_match_a_full_load(argv, model_dir, full, tmp_path, capsys, fetched_data):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4)
    evaluation = [] if argv[0] == "stopwords" else ["--ppl", str(text), "--seqlen", "64"]
    coords = ["--coords", f"{LAYER},{ROW},{COL}"]
    results = []
    for extra in ([], ["--max-memory", f"{full.plan.weights_bytes // 3}B"]):
        out = tmp_path / f"{argv[0]}{len(extra)}.json"
        code, _ = _run([argv[0], str(model_dir), *argv[1:], *coords, *evaluation, "--json", str(out), *extra],
                       capsys)
        assert code == 0
        results.append(json.loads(out.read_text()))
    assert results[1]["model"]["memory"]["offloaded"] and not results[0]["model"]["memory"]["offloaded"]
    _assert_same(_timeless(results[0], "model", "command"), _timeless(results[1], "model", "command"))


def _assert_same(a, b, rel: float = 1e-6, where: str = "") -> None:
    """Equal structures; floats within `rel` relative (the issue's tolerance for offloaded runs)."""
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12), where
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], rel, f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, rel, f"{where}[{i}]")
    else:
        assert a == b, where


def test_cli_eval_perplexity_of_a_file_under_a_budget(model_dir, full, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4)
    results = []
    for extra in ([], ["--max-memory", f"{full.plan.weights_bytes // 3}B"]):
        out = tmp_path / f"e{len(extra)}.json"
        code, _ = _run(["eval", str(model_dir), "--ppl", str(text), "--tasks", "none", "--seqlen", "64",
                        "--json", str(out), *extra], capsys)
        assert code == 0
        results.append(json.loads(out.read_text()))
    assert results[1]["model"]["memory"]["offloaded"]
    assert _timeless(results[0], "model", "command") == _timeless(results[1], "model", "command")


@pytest.mark.parametrize("argv, message", [
    (["detect", "{dir}", "--max-memory", "2XB"], "memory budget '2XB' is not a size"),
    (["detect", "{dir}", "--max-memory", "1MiB"], "is too small"),
    (["trace", "{dir}", "--max-memory", "1KB"], "is too small"),
    (["check", "{dir}", "{dir}", "--max-memory", "2MiB"], "is too small"),
    (["quantize", "{dir}", "--no-eval", "--max-memory", "1MiB"], "is too small"),
])
def test_cli_bad_budget_is_one_line_and_exit_2(model_dir, capsys, monkeypatch, argv, message):
    _no_weight_reads(monkeypatch)
    code, out = _run([a.replace("{dir}", str(model_dir)) for a in argv], capsys)
    err = out.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_tightest_budget_keeps_everything_on_disk_and_zero_shot_agrees(model_dir, full, off, tmp_path):
    """A budget of exactly the largest layer: even the embeddings stay on disk (inputs still go to
    the CPU), and lm-eval's harness scores the same."""
    from superweight.evaluate import zero_shot

    tight = load_model(str(model_dir), quiet=True, max_memory=off.plan.largest)
    assert is_offloaded(tight.model.get_input_embeddings()) and tight.device == torch.device("cpu")
    assert torch.equal(_logits(tight), _logits(full))
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"goal": "To dry wet hands,", "sol1": "rub them with a towel.", "sol2": "put them in the freezer.",
         "label": 0},
        {"goal": "To boil water,", "sol1": "put it in the fridge.", "sol2": "heat it on the stove.", "label": 1}]))
    a, b = (zero_shot(lm, ["piqa"], limit=2, data_files={"piqa": piqa}, progress=False)["piqa"]
            for lm in (full, tight))
    assert a.metrics == b.metrics and a.items == b.items == 2


def test_a_model_that_fits_is_planned_from_its_files_headers(model_dir, full, monkeypatch):
    """No budget and room in RAM: the plan comes from the safetensors headers alone, without
    building an empty model; the size is what the empty model says, less its non-persistent buffers."""
    from transformers import AutoConfig

    from superweight.model import budget

    config = AutoConfig.from_pretrained(model_dir)
    meta = plan_memory(config, torch.float32)
    files = sorted(model_dir.glob("*.safetensors"))
    size = budget.checkpoint_bytes(files, torch.float32)
    assert 0.99 * meta.weights_bytes <= size <= meta.weights_bytes and full.plan.weights_bytes == size
    monkeypatch.setattr(budget, "empty_model", lambda *a, **k: pytest.fail("built an empty model"))
    plan = plan_memory(config, torch.float32, weights_bytes=size)
    assert plan.device_map is None and plan.source == "none" and plan.weights_bytes == size
    assert budget.checkpoint_bytes(files, torch.bfloat16) == size // 2
