"""llama.cpp's quantizer on a tiny F32 GGUF: types read back with gguf, refusals before any work."""

import os

import numpy as np
import pytest

from superweight.errors import SuperweightError
from superweight.records import SuperWeight
from superweight.runtime.protect import control_overrides, protect_overrides
from superweight.runtime.quantize import (GGUF_TYPES, NEEDS_IMATRIX, ftype_value, gguf_tensors, quantize_gguf,
                                          read_manifest)
from tests.runtime.conftest import SUPER, TINY

SW = [SuperWeight(*SUPER)]


def test_every_type_name_is_a_binding_constant():
    values = [ftype_value(t) for t in GGUF_TYPES]
    assert len(set(values)) == len(GGUF_TYPES)
    assert ftype_value("q4_k_m") == 15
    with pytest.raises(SuperweightError, match="unknown GGUF type"):
        ftype_value("Q4_K_X")


def test_stock_recipe(tiny_gguf, tmp_path):
    r = quantize_gguf(tiny_gguf, tmp_path / "q.gguf", "Q4_K_M", nthread=1)
    assert r["ftype"] == "Q4_K_M" and r["overrides"] == [] and r["overridden"] == {}
    assert r["tensors"]["blk.0.ffn_gate.weight"] == "Q4_K"
    assert r["tensors"]["blk.0.attn_norm.weight"] == "F32"
    assert r["size_bytes"] == os.path.getsize(tmp_path / "q.gguf")
    assert 4.0 < r["tensor_bits_per_weight"] < 6.5
    assert r["metadata"]["general.file_type"] == 15
    assert [p.name for p in tmp_path.iterdir()] == ["q.gguf"]  # no temporary file left


@pytest.mark.parametrize("protect", ["weight", "circuit"])
def test_protected_types_on_exactly_the_intended_tensors(tiny_gguf, tmp_path, protect):
    stock = quantize_gguf(tiny_gguf, tmp_path / "stock.gguf", "Q4_K_M", nthread=1)["tensors"]
    overrides = protect_overrides(SW, protect, protect_type="Q8_0", names=list(stock))
    r = quantize_gguf(tiny_gguf, tmp_path / "p.gguf", "Q4_K_M", overrides=overrides, nthread=1,
                      metadata={"protect": protect}, pin_types=stock, pinned_from="stock.gguf")
    layer = SUPER[0]
    intended = {f"blk.{layer}.ffn_down.weight"} | (
        {f"blk.{layer}.ffn_gate.weight", f"blk.{layer}.ffn_up.weight"} if protect == "circuit" else set())
    got = gguf_tensors(tmp_path / "p.gguf")  # read back independently of the manifest
    changed = {n for n in stock if got[n]["type"] != stock[n]}
    assert {n for n in intended if got[n]["type"] == "Q8_0"} == intended
    assert changed <= intended and set(r["overridden"]) == intended
    assert r["metadata"]["superweight.protect"] == protect
    assert r["metadata"]["superweight.pinned_from"] == "stock.gguf" and r["pin_fallbacks"] == {}
    assert read_manifest(tmp_path / "p.gguf")["overrides"] == [tuple(o) for o in overrides]


def test_an_unpinned_override_shifts_the_stock_mix(tiny_gguf, tmp_path):
    """llama.cpp's quirk that pinning exists for: an overridden ffn_down is not counted by the
    Q4_K_M recipe, so the next layer's ffn_down loses its Q6_K."""
    stock = quantize_gguf(tiny_gguf, tmp_path / "s.gguf", "Q4_K_M", nthread=1)["tensors"]
    got = quantize_gguf(tiny_gguf, tmp_path / "p.gguf", "Q4_K_M", nthread=1,
                        overrides=[(r"^blk\.1\.ffn_down\.weight$", "Q8_0")])["tensors"]
    changed = {n: (stock[n], got[n]) for n in stock if got[n] != stock[n]}
    assert changed == {"blk.1.ffn_down.weight": ("Q4_K", "Q8_0"), "blk.2.ffn_down.weight": ("Q6_K", "Q4_K")}


def test_control_has_the_same_size(tiny_gguf, tmp_path):
    tensors = gguf_tensors(tiny_gguf)
    prot = protect_overrides(SW, "circuit", names=list(tensors))
    ctrl = control_overrides(SW, "circuit", n_layers=TINY["num_layers"], tensors=tensors)
    stock = quantize_gguf(tiny_gguf, tmp_path / "s.gguf", "Q2_K", nthread=1)["tensors"]
    a = quantize_gguf(tiny_gguf, tmp_path / "p.gguf", "Q2_K", overrides=prot, nthread=1, pin_types=stock)
    b = quantize_gguf(tiny_gguf, tmp_path / "c.gguf", "Q2_K", overrides=ctrl, nthread=1, pin_types=stock)
    assert set(b["overridden"]).isdisjoint(a["overridden"])
    assert {t for t in b["overridden"].values()} == {"Q8_0"}
    # the same tensors in number and shape at the same types: the same bytes (metadata aside)
    assert a["types"] == b["types"]
    assert abs(a["size_bytes"] - b["size_bytes"]) < 256


def test_iq_type_with_imatrix(tiny_gguf, tmp_path):
    tensors = gguf_tensors(tiny_gguf)
    im = {n: np.ones(t["shape"][0], np.float32) for n, t in tensors.items() if n.startswith("blk.")
          and len(t["shape"]) == 2}
    r = quantize_gguf(tiny_gguf, tmp_path / "iq.gguf", "IQ2_XS", imatrix=im, imatrix_source="ones",
                      imatrix_chunks=3, nthread=1)
    assert r["imatrix"] == "ones"
    assert r["metadata"]["quantize.imatrix.entries_count"] == len(im)
    assert "IQ2_XS" in r["types"]


def test_refusals_write_nothing(tiny_gguf, tmp_path):
    out = tmp_path / "o.gguf"
    cases = [
        (dict(ftype="Q4_K_X"), "unknown GGUF type"),
        (dict(ftype="Q4_0", overrides=[("ffn_down", "Q9_0")]), "unknown tensor type"),
        (dict(ftype="Q4_0", overrides=[(r"^blk\.99\.ffn_down\.weight$", "Q8_0")]), "matches no tensor"),
        (dict(ftype="Q4_0", overrides=[("blk.(", "Q8_0")]), "not a regular expression"),
        (dict(ftype="IQ2_XS"), "needs an importance matrix"),
        (dict(ftype="Q4_0", imatrix={"blk.0.ffn_down.weight": np.ones(3, np.float32)}), "needs 512"),
        (dict(ftype="Q4_0", imatrix={"nope.weight": np.ones(3, np.float32)}), "not a tensor"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SuperweightError, match=message):
            quantize_gguf(tiny_gguf, out, **kwargs)
    with pytest.raises(SuperweightError, match="is the input"):
        quantize_gguf(tiny_gguf, tiny_gguf, "Q4_0")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"keep")
    with pytest.raises(SuperweightError, match="exists"):
        quantize_gguf(tiny_gguf, out, "Q4_0")
    assert out.read_bytes() == b"keep"
    quantize_gguf(tiny_gguf, out, "Q4_0", force=True, nthread=1)
    assert read_manifest(out)["ftype"] == "Q4_0"


def test_requantize_needs_permission(tiny_gguf, tmp_path):
    q = quantize_gguf(tiny_gguf, tmp_path / "q8.gguf", "Q8_0", nthread=1)
    with pytest.raises(SuperweightError, match="already quantized"):
        quantize_gguf(q["path"], tmp_path / "q4.gguf", "Q4_0")
    r = quantize_gguf(q["path"], tmp_path / "q4.gguf", "Q4_0", allow_requantize=True, nthread=1)
    assert "requantized from Q8_0" in r["note"]


def test_disk_too_small(tiny_gguf, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(SuperweightError, match="not enough free disk space"):
        quantize_gguf(tiny_gguf, tmp_path / "o.gguf", "Q4_0")
    assert list(tmp_path.iterdir()) == []


def test_failed_quantizer_leaves_no_file(tiny_gguf, tmp_path, monkeypatch):
    from superweight.runtime import quantize as q

    def boom(src, out, *args):
        out.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "_run_quantizer", boom)
    with pytest.raises(KeyboardInterrupt):
        quantize_gguf(tiny_gguf, tmp_path / "o.gguf", "Q4_0")
    assert list(tmp_path.iterdir()) == []


def test_header_reader_agrees_with_gguf(tiny_gguf, tmp_path):
    import gguf

    q = quantize_gguf(tiny_gguf, tmp_path / "q.gguf", "Q4_K_M", nthread=1, metadata={"protect": "weight"})
    for path in (tiny_gguf, q["path"]):
        reader = gguf.GGUFReader(str(path))
        want = {t.name: {"type": t.tensor_type.name, "shape": [int(s) for s in t.shape],
                         "elements": int(t.n_elements), "bytes": int(t.n_bytes)} for t in reader.tensors}
        assert gguf_tensors(path) == want
    field = gguf.GGUFReader(q["path"]).fields["superweight.protect"]
    assert bytes(field.parts[field.data[0]]).decode() == q["metadata"]["superweight.protect"] == "weight"
    with pytest.raises(SuperweightError, match="not a GGUF"):
        gguf_tensors(__file__)


def test_architecture(tiny_gguf):
    from superweight.runtime.quantize import gguf_architecture

    assert gguf_architecture(tiny_gguf) == "llama"
