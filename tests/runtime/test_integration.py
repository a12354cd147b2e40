"""The llama.cpp bridge on the real default model (its packaged Q4_1 GGUF, requantized)."""

import numpy as np
import pytest

from superweight.records import SuperWeight
from superweight.runtime.protect import control_overrides, protect_overrides
from superweight.runtime.quantize import gguf_tensors, quantize_gguf
from superweight.runtime.scoring import kl_divergence, text_windows

pytestmark = pytest.mark.integration
SUPER_WEIGHTS = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]


@pytest.fixture(scope="module")
def source():
    from superweight.model.load import alias_gguf

    return alias_gguf("smollm2-135m")


def test_protected_q4_k_m_differs_from_stock_on_exactly_the_circuit(source, tmp_path):
    tensors = gguf_tensors(source)
    stock = quantize_gguf(source, tmp_path / "stock.gguf", "Q4_K_M", allow_requantize=True)
    assert "requantized from Q4_1" in stock["note"]
    plan = protect_overrides(SUPER_WEIGHTS, "circuit", names=list(tensors))
    prot = quantize_gguf(source, tmp_path / "p.gguf", "Q4_K_M", overrides=plan, allow_requantize=True,
                         pin_types=stock["tensors"])
    intended = {"blk.11.ffn_down.weight", "blk.11.ffn_gate.weight", "blk.11.ffn_up.weight"}
    got = gguf_tensors(tmp_path / "p.gguf")
    assert {n for n in got if got[n]["type"] != stock["tensors"][n]} <= intended
    assert {n for n in intended if got[n]["type"] == "Q8_0"} == intended
    ctrl = control_overrides(SUPER_WEIGHTS, "circuit", n_layers=30, tensors=tensors, stock_types=stock["tensors"])
    c = quantize_gguf(source, tmp_path / "c.gguf", "Q4_K_M", overrides=ctrl, allow_requantize=True,
                      pin_types=stock["tensors"])
    assert c["types"] == prot["types"] and abs(c["size_bytes"] - prot["size_bytes"]) < 256


def test_self_kld_is_zero_and_imatrix_sees_the_super_weight_input(source, default_lm, fetched_data):
    from superweight.runtime.imatrix import compute_imatrix

    windows = text_windows(default_lm, "wiki", seqlen=128, max_tokens=256)
    r = kl_divergence(source, source, windows)
    assert r.kld_mean == 0.0 and r.same_top == 1.0
    im = compute_imatrix(default_lm, windows, arch="llama")
    tensors = gguf_tensors(source)
    assert all(im[n].shape == (tensors[n]["shape"][0],) for n in im)
    assert int(np.argmax(im["blk.11.ffn_down.weight"])) in (1229, 1487)
