"""Weight quantization, W8A8, save/load and check on tiny planted models (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.model import wrap_model
from superweight.quantize import (HQQConfig, NaiveW8A8Config, RTNClipConfig, RTNConfig,
                                  SmoothQuantW8A8Config, SuperActW8A8Config, SuperWeightQuantConfig,
                                  fake_w8a8, quantize_, quantized, weight_targets)
from superweight.quantize.check import check_models
from superweight.quantize.export import MANIFEST_NAME, read_manifest, save_checkpoint
from superweight.evaluate import Evaluator
from superweight.evaluate.metrics import AVERAGE, Metric, perplexity_metric
from superweight.quantize.sweep import QuantResult, Row, run_sweep, share_kept, w8a8_configs, weight_sweep
from superweight.quantize.w8a8 import protect_plan
from superweight.records import SuperActivation
from superweight.report.quantize_plots import plot_sweep
from superweight.report.tables import sweep_tables, to_markdown
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

LAYER, ROW, COL = 2, 7, 11
BIG_BLOCK = 64 * 128  # one whole down projection: the super weight shares its block with everything
SW_WEIGHT = 2.0  # ~100x the typical weight, like the paper's; far larger ones inflate the z-score std itself


def _planted(seed: int = 0, model_type: str = "llama"):
    model = tiny_model(model_type, seed=seed)
    sw = plant_super_weight(model, layer=LAYER, row=ROW, col=COL, weight=SW_WEIGHT)
    return wrap_model(model, tiny_tokenizer(), ref=f"planted-{model_type}"), sw


@pytest.fixture(scope="module")
def _planted_base():
    return _planted()  # planting runs forward passes: build once, copy per test


@pytest.fixture()
def planted(_planted_base):
    import copy

    lm, sw = _planted_base
    return wrap_model(copy.deepcopy(lm.model), lm.tokenizer, ref=lm.ref), sw


def _state(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ids(lm, text="hello world, this is a test of the tiny model"):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def _logits(lm, ids):
    with torch.inference_mode():
        return lm.model(ids).logits


# --- weights ---------------------------------------------------------------------------------------

def test_quantized_context_restores_exact_bits_and_keeps_super_weight(planted):
    lm, sw = planted
    before = _state(lm)
    w = lm.view.down_proj(LAYER).matrix()
    with quantized(lm, SuperWeightQuantConfig(bits=3, block=BIG_BLOCK, z=3.0), [sw]) as report:
        assert w[ROW, COL].item() == before[f"model.layers.{LAYER}.mlp.down_proj.weight"][ROW, COL].item()
        assert not _same(_state(lm), before)
        assert report.summary()["kept"] == 1 and report.summary()["clipped"] > 0
    assert _same(_state(lm), before)


def test_restores_on_error(planted):
    lm, sw = planted
    before = _state(lm)
    with pytest.raises(RuntimeError):
        with quantized(lm, RTNConfig(bits=4, block=64)):
            raise RuntimeError("boom")
    assert _same(_state(lm), before)


def test_only_decoder_linears_unless_asked(planted):
    lm, _ = planted
    before = _state(lm)
    with quantized(lm, RTNConfig(bits=2, block=64)) as report:
        after = _state(lm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers." in k and k.endswith("proj.weight") for k in changed)
    assert len(report.tensors) == 6 * 7
    with quantized(lm, RTNConfig(bits=2, block=64, include=("lm_head", "embed"))) as report:
        assert {t.name for t in report.tensors} >= {"lm_head", "embed"}


def test_methods_differ_as_expected_at_large_blocks(planted):
    lm, sw = planted
    w = lm.view.down_proj(LAYER).matrix()
    original = w.detach().clone()
    others = torch.ones_like(original, dtype=torch.bool)
    others[ROW, COL] = False
    out = {}
    for cfg in (RTNConfig(bits=3, block=BIG_BLOCK), RTNClipConfig(bits=3, block=BIG_BLOCK),
                SuperWeightQuantConfig(bits=3, block=BIG_BLOCK)):
        with quantized(lm, cfg, [sw]):
            out[cfg.method] = w.detach().clone()
    sw_value = original[ROW, COL].item()
    assert abs(out["rtn"][ROW, COL].item() - sw_value) < 0.05 * abs(sw_value)  # the max stays ~exact ...
    assert abs(out["rtn-clip"][ROW, COL].item()) < 0.5 * abs(sw_value)  # ... clipping destroys it ...
    assert out["superweight"][ROW, COL].item() == sw_value  # ... unless restored
    err = {m: (q - original)[others].abs().mean().item() for m, q in out.items()}
    assert err["superweight"] < 0.5 * err["rtn"]  # the rest of the block gains from the tight range
    assert err["rtn-clip"] == pytest.approx(err["superweight"])


def test_small_groups_barely_differ(planted):
    """With groups of 8 the super weight only stretches its own group: restoring changes little."""
    lm, sw = planted
    w = lm.view.down_proj(LAYER).matrix()
    original = w.detach().clone()
    errs = {}
    for cfg in (RTNConfig(bits=4, block=8), SuperWeightQuantConfig(bits=4, block=8)):
        with quantized(lm, cfg, [sw]):
            errs[cfg.method] = (w - original).abs().mean().item()
    assert errs["superweight"] == pytest.approx(errs["rtn"], rel=0.5)


def test_superweight_method_detects_when_not_given(planted):
    lm, sw = planted
    with quantized(lm, SuperWeightQuantConfig(bits=4, block=256)) as report:
        assert [s.coord for s in report.super_weights] == [sw.coord]


def test_in_place_keeps_no_copy(planted):
    lm, sw = planted
    before = _state(lm)
    report = quantize_(lm, SuperWeightQuantConfig(bits=4, block=256), [sw])
    assert not _same(_state(lm), before) and report.tensors


def test_conv1d_blocks_run_along_the_input_dimension():
    model = tiny_model("gpt2")
    lm = wrap_model(model, tiny_tokenizer())
    before = _state(lm)
    targets = weight_targets(lm)
    assert any(t.transposed for t in targets)
    t = next(t for t in targets if t.transposed)
    w = t.matrix().detach().clone()  # [out, in]
    with quantized(lm, RTNConfig(bits=4, granularity="group", block=16, tail="error")):
        from superweight.tensor.quant import fake_quantize

        assert torch.equal(t.matrix(), fake_quantize(w, 4, "group", 16))
    assert _same(_state(lm), before)


def test_hqq_runs_on_cpu_and_restores(planted):
    pytest.importorskip("hqq")
    lm, _ = planted
    before = _state(lm)
    with quantized(lm, HQQConfig(bits=4, block=64)) as report:
        assert 0 < report.summary()["mean_rel_error"] < 0.2
    assert _same(_state(lm), before)
    with pytest.raises(SuperweightError, match="does not divide"):
        with quantized(lm, HQQConfig(bits=4, block=96, tail="error")):
            pass
    assert _same(_state(lm), before)
    with quantized(lm, HQQConfig(bits=4, block=96, optimize=False)) as report:
        assert report.summary()["ragged_tensors"] > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 1}, "bits must be an integer from 2 to 8"),
    ({"bits": 9}, "bits must be an integer from 2 to 8"),
    ({"block": 0}, "positive integer"),
    ({"block": -128}, "positive integer"),
    ({"block": 2.5}, "positive integer"),
    ({"z": 0}, "z must be a positive number"),
    ({"z": -2}, "z must be a positive number"),
    ({"tail": "pad"}, "tail must be"),
    ({"include": ("norm",)}, "can only include"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(SuperweightError, match=match):
        SuperWeightQuantConfig(**kwargs)


def test_config_serialises():
    d = SuperWeightQuantConfig(bits=3, block=1024, z=2.5).to_dict()
    assert json.loads(json.dumps(d)) == {"method": "superweight", "bits": 3, "block": 1024,
                                         "granularity": "block", "tail": "ragged", "symmetric": False,
                                         "include": [], "z": 2.5}


def test_sweep_rows_and_plot(planted, tmp_path):
    lm, sw = planted
    ids = _ids(lm)
    loss = Metric("loss", "loss", "", False, "other")

    def evaluate(m):
        with torch.inference_mode():
            return {"loss": float(m.model(ids, labels=ids).loss)}

    rows = weight_sweep(lm, evaluate, bits=[3], blocks=[64, BIG_BLOCK], z=3.0, super_weights=[sw])
    assert [(r.method, r.block) for r in rows] == [(m, b) for b in (64, BIG_BLOCK)
                                                   for m in ("rtn", "rtn-clip", "superweight")]
    assert [r.quant["kept"] for r in rows] == [0, 0, 1, 0, 0, 1]
    assert all(r.quant["clipped"] > 0 for r in rows if r.method != "rtn")
    plot_sweep(rows, loss, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_run_sweep_describes_its_figures(planted):
    lm, sw = planted
    ids = _ids(lm)
    ppl = perplexity_metric("tiny_ppl", "tiny ppl")

    def evaluate(m):
        with torch.inference_mode():
            return {"tiny_ppl": float(m.model(ids, labels=ids).loss.exp())}

    result = run_sweep(lm, Evaluator(evaluate, [ppl]), bits=[4], blocks=[BIG_BLOCK], methods=["rtn"])
    assert [r.kind for r in result.rows] == ["baseline", "weight"] and result.metrics() == [ppl]
    assert result.share_kept() == {}  # no W8A8 rows
    md = to_markdown(sweep_tables(result, "t"))
    assert "| method | bits | block | tiny ppl |" in md and "| fp32 | — | — |" in md


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ["rtn"], "z": 3.0}, "method 'rtn' takes no z"),
    ({"methods": ["hqq"], "z": 3.0}, "method 'hqq' takes no z"),
    ({"methods": ["nope"]}, "unknown method 'nope'"),
])
def test_sweep_refuses_settings_it_would_drop(planted, kwargs, match):
    lm, _ = planted
    with pytest.raises(SuperweightError, match=match):
        weight_sweep(lm, lambda m: pytest.fail("evaluated"), bits=[4], blocks=[64], **kwargs)


def test_weight_configs_refuse_settings_they_would_drop():
    from superweight.quantize import weight_config

    with pytest.raises(SuperweightError, match=r"takes no z \(z applies to rtn-clip, superweight, circuit\)"):
        weight_config("rtn", bits=4, z=3.0)
    with pytest.raises(SuperweightError, match="takes no block size"):
        RTNConfig(bits=4, block=128, granularity="channel")
    assert RTNConfig(granularity="channel").block is None and RTNConfig().block == 128
    with pytest.raises(SuperweightError, match="W8A8 setting 'alpah' applies to none"):
        w8a8_configs(alpha=0.5, alpah=0.5)
    with pytest.raises(SuperweightError, match="W8A8 setting 'alpha' applies to none of naive, superact"):
        w8a8_configs(["naive", "superact"], alpha=0.5)
    assert [c.alpha for c in w8a8_configs(["smoothquant"], alpha=0.75)] == [0.75]


# --- W8A8 ------------------------------------------------------------------------------------------

def test_w8a8_restores_weights_and_removes_hooks(planted):
    lm, sw = planted
    before = _state(lm)
    for cfg in (NaiveW8A8Config(), SuperActW8A8Config(), SmoothQuantW8A8Config()):
        kwargs = ({"calib_ids": _ids(lm)} if cfg.method == "smoothquant" else
                  {"super_weights": [sw], "super_activations": []} if cfg.method == "superact" else {})
        with fake_w8a8(lm, cfg, cfg.build_plan(lm, **kwargs)):
            _logits(lm, _ids(lm))
        assert _same(_state(lm), before)
        assert all(not m._forward_pre_hooks for _, m in lm.view.decoder_linears())


def test_superact_protects_the_spike_and_beats_naive(planted):
    """The tiny plant spikes at every token (real models: the first), so protect every position."""
    from dataclasses import replace

    lm, sw = planted
    ids = _ids(lm)
    at = [replace(sw, position=p) for p in range(ids.shape[1])]
    plan = protect_plan(lm, at, [SuperActivation(LAYER, ROW, 0, 0.0)])
    down = lm.view.down_proj(LAYER).name
    assert plan.linears[down].protect[:2] == [(0, COL), (1, COL)]
    assert (0, ROW) in plan.linears[f"model.layers.{LAYER + 1}.self_attn.q_proj"].protect
    assert not plan.linears[f"model.layers.{LAYER}.self_attn.q_proj"].protect  # not before it exists
    later = {n for n, lp in plan.linears.items() if (0, ROW) in lp.protect}
    assert later == {f"model.layers.{i}.{p}" for i in range(LAYER + 1, 6)
                     for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                               "mlp.up_proj")}  # the residual readers only: never o_proj, never down_proj
    module = lm.view.down_proj(LAYER).module
    seen = {}
    for cfg, p in ((NaiveW8A8Config(), None), (SuperActW8A8Config(), plan)):
        with fake_w8a8(lm, cfg, p):  # capture this module's input before and after quantization
            first = module.register_forward_pre_hook(
                lambda m, a, key=cfg.method: seen.__setitem__(key + " in", a[0].detach()), prepend=True)
            last = module.register_forward_pre_hook(
                lambda m, a, key=cfg.method: seen.__setitem__(key + " out", a[0].detach()))
            try:
                _logits(lm, ids)
            finally:
                first.remove()
                last.remove()
    assert torch.equal(seen["superact out"][..., COL], seen["superact in"][..., COL])  # restored exactly
    rest = torch.ones(seen["naive in"].shape[-1], dtype=torch.bool)
    rest[COL] = False
    err = {k: (seen[k + " out"] - seen[k + " in"])[..., rest].abs().mean().item() for k in ("naive", "superact")}
    assert err["superact"] < 0.1 * err["naive"]  # the others keep their resolution


def test_superact_protects_a_moe_models_residual_readers():
    """Qwen2-MoE: the router and experts are not linear modules, but the shared expert and its gate
    read the residual stream and are protected (the old width test protected o_proj instead)."""
    lm = wrap_model(tiny_model("qwen2_moe"), tiny_tokenizer())
    plan = protect_plan(lm, [], [SuperActivation(1, ROW, 0, 1e4)])
    protected = {n.removeprefix("model.layers.2.") for n, lp in plan.linears.items()
                 if lp.protect and n.startswith("model.layers.2.")}
    assert protected == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.shared_expert.gate_proj",
                         "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"}


def test_smoothquant_groups_shared_inputs(planted):
    lm, _ = planted
    plan = SmoothQuantW8A8Config().build_plan(lm, calib_ids=_ids(lm))
    q = plan.linears["model.layers.0.self_attn.q_proj"].scales
    assert q is not None and torch.equal(q, plan.linears["model.layers.0.self_attn.k_proj"].scales)
    assert plan.notes["groups"] == 2 * 6  # q/k/v and gate/up in every layer


def test_bad_w8a8_configs():
    with pytest.raises(SuperweightError):
        NaiveW8A8Config(a_bits=9)
    with pytest.raises(SuperweightError):
        NaiveW8A8Config(act_granularity="channel")
    with pytest.raises(SuperweightError):
        SmoothQuantW8A8Config(alpha=1.5)


def test_share_kept_matches_paper():
    assert share_kept(5.83, 5.71, 5.74) == pytest.approx(0.75)
    assert share_kept(1.0, 1.0, 1.0) is None


def test_table3_shares_come_from_methods_and_metric_kinds():
    """The rows are found by their method, the figures by their kind: average accuracy and every
    perplexity (also on log perplexity), never per-task accuracies or unknown figures."""
    import math

    wiki = perplexity_metric("wiki_ppl", "wiki ppl (offline stand-in)")
    piqa = Metric("piqa", "PIQA", "%", True, "accuracy")

    def row(method, ppl, avg):
        return Row(method, 8, None, {"wiki_ppl": ppl, "average": avg, "piqa": avg, "loss": 1.0},
                   kind="w8a8", a_bits=8)
    result = QuantResult([Row("fp32", None, None, {"wiki_ppl": 5.68}, kind="baseline"),
                          row("naive", 5.83, 0.60), row("smoothquant", 5.71, 0.70), row("superact", 5.74, 0.65)],
                         [wiki, AVERAGE, piqa])
    share = result.share_kept()
    assert set(share) == {"wiki_ppl", "log:wiki_ppl", "average"}
    assert share["wiki_ppl"] == pytest.approx(0.75) and share["average"] == pytest.approx(0.5)
    assert share["log:wiki_ppl"] == pytest.approx((math.log(5.83) - math.log(5.74)) / (math.log(5.83) - math.log(5.71)))
    assert result.rows[1].label == "W8A8 naive" and result.to_dict()["share_kept"] == share
    again = QuantResult.from_dict(json.loads(json.dumps(result.to_dict())))  # read back from its JSON
    assert again.share_kept() == share and again.metrics() == result.metrics()
    notes = sweep_tables(result, "t")[0].notes
    assert "share of SmoothQuant's wiki ppl (offline stand-in) improvement kept by the data-free method: 75.0%" in notes


# --- save, load, check -----------------------------------------------------------------------------

def test_save_load_round_trip(planted, tmp_path):
    from transformers import AutoModelForCausalLM

    lm, sw = planted
    cfg = SuperWeightQuantConfig(bits=4, block=256)
    with quantized(lm, cfg, [sw]) as report:
        expected = _state(lm)
        out = save_checkpoint(lm, tmp_path / "q", {"config": cfg.to_dict(),
                                                   "super_weights_kept": [sw.to_dict()]})
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert _same({k: v for k, v in loaded.state_dict().items() if k in expected}, expected)
    manifest = read_manifest(out)
    assert manifest["config"]["method"] == "superweight" and manifest["super_weights_kept"][0]["row"] == ROW
    assert report.super_weights[0].coord == sw.coord
    with pytest.raises(SuperweightError, match="not empty"):
        save_checkpoint(lm, out, {})
    save_checkpoint(lm, out, {"again": True}, force=True)
    assert read_manifest(out)["again"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_check_models_sees_which_copy_kept_it(planted):
    lm, sw = planted
    import copy

    other = wrap_model(copy.deepcopy(lm.model), lm.tokenizer)
    quantize_(other, RTNConfig(bits=8, block=64), [sw])
    rows = check_models(lm, other, [sw])
    assert rows[0].rel_error < 0.01 and rows[0].survives
    clipped = wrap_model(copy.deepcopy(lm.model), lm.tokenizer)
    quantize_(clipped, RTNClipConfig(bits=3, block=BIG_BLOCK), [sw])
    rows = check_models(lm, clipped, [sw])
    assert rows[0].rel_error > 0.5 and not rows[0].survives


def test_check_refuses_different_architectures_and_shapes(planted):
    lm, sw = planted
    gpt2 = wrap_model(tiny_model("gpt2"), tiny_tokenizer())
    with pytest.raises(SuperweightError, match="different architectures"):
        check_models(lm, gpt2, [sw])
    wider = wrap_model(tiny_model("llama", intermediate_size=96), tiny_tokenizer())
    with pytest.raises(SuperweightError, match="different shapes"):
        check_models(lm, wider, [sw])
    shallow = wrap_model(tiny_model("llama", num_layers=4), tiny_tokenizer())
    with pytest.raises(SuperweightError, match="different depths"):
        check_models(lm, shallow, [sw])


# --- command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, match", [
    (["--bits", "1"], "bits must be an integer from 2 to 8"),
    (["--bits", "9"], "bits must be an integer from 2 to 8"),
    (["--bits", "four"], "bits must be"),
    (["--block", "0"], "block size must be a positive integer"),
    (["--block", "-64"], "block size must be a positive integer"),
    (["--block", "1.5"], "block size must be a positive integer"),
    (["--z", "0"], "z must be a positive number"),
    (["--z", "-3"], "z must be a positive number"),
    (["--method", "hqq", "--bits", "7"], "hqq supports bits"),
    (["--bits", "4,3"], "several --bits need --sweep"),
    (["--coords", "1,2"], "'1,2' is not L,R,C"),
    (["--method", "rtn", "--z", "3"], "method 'rtn' takes no z"),
    (["--method", "hqq", "--z", "3"], "method 'hqq' takes no z"),
    (["--granularity", "channel", "--block", "64"], "takes no block size"),
    (["--method", "rtn", "--coords", "1,2,3"], "the rtn method keeps none"),
    (["--alpha", "0.7"], "--alpha does not apply without --w8a8"),
    (["--methods", "rtn"], "--methods does not apply without --sweep"),
    (["--quick"], "--quick does not apply with --no-eval"),
])
def test_cli_bad_inputs_fail_before_loading(argv, match, capsys):
    from superweight.cli import main

    assert main(["quantize", "/nonexistent/model", "--no-eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, match", [
    (["--w8a8", "--alpha", "2"], "alpha must be in [0, 1]"),
    (["--w8a8", "--calib-tokens", "0"], "calibration tokens"),
    (["--sweep", "128,0"], "block size must be a positive integer"),
    (["--w8a8", "--method", "rtn"], "--method does not apply to --w8a8"),
    (["--w8a8", "--bits", "4"], "--bits does not apply to --w8a8"),
    (["--w8a8", "--coords", "1,2,3"], "--coords does not apply to --w8a8"),
    (["--sweep", "64,128", "--method", "rtn"], "--method does not apply to --sweep"),
    (["--sweep", "64", "--methods", "rtn", "--z", "3"], "method 'rtn' takes no z"),
    (["--sweep", "64", "--methods", "rtn", "--coords", "1,2,3"], "only the superweight and circuit methods do"),
    (["--w8a8", "--no-eval"], "--sweep and --w8a8 evaluate; drop --no-eval"),
])
def test_cli_settings_that_would_be_ignored_are_errors(argv, match, capsys):
    from superweight.cli import main

    assert main(["quantize", "/nonexistent/model", "--ppl", "none", "--tasks", "none", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_cli_save_refuses_non_empty_dir(tmp_path, capsys):
    from superweight.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["quantize", "/nonexistent/model", "--no-eval", "--save", str(tmp_path / "out")]) == 2
    assert "not empty; add --force" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def _save_tiny(path, model_type="llama", **overrides):
    model = tiny_model(model_type, **overrides)
    if model_type == "llama" and not overrides:
        plant_super_weight(model, layer=LAYER, row=ROW, col=COL, weight=SW_WEIGHT)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_cli_save_then_check(tmp_path, capsys):
    from superweight.cli import main

    src = _save_tiny(tmp_path / "orig")
    out = tmp_path / "q"
    keep = f"{LAYER},{ROW},{COL}"
    assert main(["quantize", src, "--no-eval", "--method", "superweight", "--bits", "8", "--block", "64",
                 "--coords", keep, "--save", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest["config"]["bits"] == 8 and manifest["super_weights_kept"][0]["col"] == COL
    assert (out / "model.safetensors").is_file() and (out / MANIFEST_NAME).is_file()
    assert main(["check", src, str(out), "--coords", keep, "--threads", "1", "--json", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert rows[0]["rel_error"] == 0 and rows[0]["survives"]
    assert "1 of 1 super activation(s) survive" in capsys.readouterr().out
    assert main(["check", src, str(out), "--keep", keep]) == 0  # the old spelling, still accepted
    assert "--keep is deprecated" in capsys.readouterr().err
    assert main(["quantize", src, "--no-eval", "--save", src, "--force"]) == 2  # never into the model
    assert "model's own files" in capsys.readouterr().err


def test_cli_check_refuses_other_architecture_and_shape(tmp_path, capsys):
    from superweight.cli import main

    src = _save_tiny(tmp_path / "llama")
    keep = f"{LAYER},{ROW},{COL}"
    assert main(["check", src, _save_tiny(tmp_path / "gpt2", "gpt2"), "--keep", keep]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["check", src, _save_tiny(tmp_path / "wide", "llama", intermediate_size=96),
                 "--keep", keep]) == 2
    assert "different shapes" in capsys.readouterr().err


# --- one registry, circuit protection ---------------------------------------------------------------

def test_every_method_has_one_handler_and_no_name_branches():
    from superweight.quantize import WEIGHT_METHODS
    from superweight.quantize.api import handler_for
    from superweight.quantize.w8a8 import W8A8_METHODS

    assert {handler_for(cls()).kind for cls in WEIGHT_METHODS.values()} == {"weight"}
    assert {handler_for(cls()).kind for cls in W8A8_METHODS.values()} == {"w8a8"}
    with pytest.raises(SuperweightError, match="no quantization handler"):
        handler_for(object())


@pytest.mark.parametrize("model_type", ["llama", "phi3"])  # separate gate/up, and Phi-3's fused gate_up
def test_circuit_keeps_the_rows_that_make_the_input_spike(model_type):
    from superweight.quantize import CircuitQuantConfig

    lm, sw = _planted(model_type=model_type)
    before = _state(lm)
    rows = lm.view.feature_rows(LAYER, COL)
    originals = [r.weight.detach().clone() for r in rows]
    with quantized(lm, CircuitQuantConfig(bits=3, block=BIG_BLOCK, z=3.0), [sw]) as report:
        assert lm.view.down_proj(LAYER).matrix()[ROW, COL].item() == SW_WEIGHT
        for r, original in zip(lm.view.feature_rows(LAYER, COL), originals):
            assert torch.equal(r.weight, original)  # every entry of the gate/up rows kept exactly
        hidden = originals[0].numel()
        assert report.summary()["kept"] == 1 + len(rows) * hidden
        other = lm.view.feature_rows(LAYER, COL + 1)[0].weight
        assert not torch.equal(other, before_row(before, lm, COL + 1))  # the rest is quantized
    assert _same(_state(lm), before)


def before_row(state, lm, col):
    name = lm.view.feature_rows(LAYER, col)[0].name
    param, idx = name.rsplit("[", 1)
    return state[param][int(idx[:-1])]


def test_circuit_protection_keeps_the_input_spike_better_than_superweight():
    """At one block per matrix and 3 bits, keeping only the super weight lets the quantized gate/up
    rows move its input spike; keeping its circuit keeps the spike close (earlier layers are still
    quantized, so close rather than equal)."""
    from superweight.detect import layer_stats
    from superweight.quantize import CircuitQuantConfig

    lm, sw = _planted()
    ids = _ids(lm)

    def spike():
        stat = next(s for s in layer_stats(lm, ids) if s.layer == LAYER)
        assert stat.in_channel == COL
        return abs(stat.in_value)

    original = spike()
    errors = {}
    for cfg in (SuperWeightQuantConfig(bits=3, block=BIG_BLOCK, z=3.0), CircuitQuantConfig(bits=3, block=BIG_BLOCK, z=3.0)):
        with quantized(lm, cfg, [sw]):
            errors[cfg.method] = abs(spike() - original) / original
    assert errors["circuit"] < errors["superweight"]
