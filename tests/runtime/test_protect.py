"""Which tensors protection and its control keep at a higher type (pure planning, no llama.cpp)."""

import re

import pytest

from superweight.errors import SuperweightError
from superweight.records import SuperWeight
from superweight.runtime.protect import (control_layers, control_overrides, protect_overrides,
                                         protected_tensors, tensor_pattern)

NAMES = [f"blk.{i}.{k}.weight" for i in range(12) for k in ("ffn_down", "ffn_gate", "ffn_up", "attn_q")]
SHAPES = {n: {"shape": [512, 256] if "down" in n else [256, 512]} for n in NAMES}


def test_patterns_are_anchored_and_escaped():
    rx = re.compile(tensor_pattern("blk.1.ffn_down.weight"))
    assert rx.search("blk.1.ffn_down.weight")
    assert not rx.search("blk.11.ffn_down.weight")
    assert not rx.search("blkX1.ffn_down.weight")


def test_none_weight_circuit():
    sw = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]
    assert protected_tensors(sw, "none") == []
    assert protected_tensors(sw, "weight", names=NAMES) == ["blk.11.ffn_down.weight"]
    assert protected_tensors(sw, "circuit", names=NAMES) == [
        "blk.11.ffn_down.weight", "blk.11.ffn_gate.weight", "blk.11.ffn_up.weight"]
    assert protect_overrides(sw, "weight", protect_type="f16") == [(r"^blk\.11\.ffn_down\.weight$", "F16")]


def test_no_super_weights_protects_nothing():
    assert protect_overrides([], "circuit") == []
    assert control_overrides([], "circuit", n_layers=12) == []


def test_fused_gate_up_and_experts():
    names = ["blk.2.ffn_down.weight", "blk.2.ffn_up.weight"]  # Phi-3: gate and up fused in ffn_up
    assert protected_tensors([SuperWeight(2, 0, 0)], "circuit", names=names) == names
    assert protected_tensors([SuperWeight(3, 0, 0, expert=5)], "circuit") == [
        "blk.3.ffn_down_exps.weight", "blk.3.ffn_gate_exps.weight", "blk.3.ffn_up_exps.weight"]


def test_circuit_feeders_and_bad_input():
    sw = [SuperWeight(2, 0, 0)]
    assert "blk.1.attn_q.weight" in protected_tensors(sw, "circuit", names=NAMES, feeders=["blk.1.attn_q.weight"])
    with pytest.raises(SuperweightError, match="no tensor"):
        protected_tensors([SuperWeight(40, 0, 0)], "weight", names=NAMES)
    with pytest.raises(SuperweightError, match="protect must be"):
        protected_tensors(sw, "everything")
    with pytest.raises(SuperweightError, match="protect type"):
        protect_overrides(sw, protect_type="Q4_0")


def test_control_is_the_mirror_layer_with_the_same_shapes():
    sw = [SuperWeight(2, 7, 9)]
    protected = protect_overrides(sw, "circuit", names=NAMES)
    control = control_overrides(sw, "circuit", n_layers=12, tensors=SHAPES)
    assert [p.replace(r"\.2\.", r"\.9\.") for p, _ in protected] == [p for p, _ in control]
    assert {t for _, t in control} == {"Q8_0"}


def test_control_layers_avoid_super_weight_layers():
    assert control_layers([5, 6], 12) == {5: 7, 6: 4}  # mirrors 6 and 5 are taken: nearest free, lower first
    with pytest.raises(SuperweightError, match="no layer"):
        control_layers([0], 1)
    sw = [SuperWeight(1, 0, 0), SuperWeight(10, 0, 0)]  # mirror of 1 is 10, a super weight layer
    assert control_layers([1, 10], 12, avoid=[1, 10]) == {1: 9, 10: 0}
    assert control_overrides(sw, "weight", n_layers=12, tensors=SHAPES) == [
        (r"^blk\.9\.ffn_down\.weight$", "Q8_0"), (r"^blk\.0\.ffn_down\.weight$", "Q8_0")]


def test_control_refuses_a_different_shape():
    shapes = dict(SHAPES)
    shapes["blk.9.ffn_down.weight"] = {"shape": [512, 128]}
    with pytest.raises(SuperweightError, match="not the same size"):
        control_overrides([SuperWeight(2, 0, 0)], "weight", n_layers=12, tensors=shapes)


def test_control_prefers_a_layer_with_the_same_stock_types():
    stock = {n: "Q4_K" for n in NAMES}
    stock["blk.9.ffn_down.weight"] = "Q6_K"  # the mirror of layer 2 got more bits in the stock mix
    control = control_overrides([SuperWeight(2, 0, 0)], "weight", n_layers=12, tensors=SHAPES, stock_types=stock)
    assert control == [(r"^blk\.8\.ffn_down\.weight$", "Q8_0")]
