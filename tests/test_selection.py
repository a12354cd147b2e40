"""Which super weights a feature uses: given coordinates, a catalog entry, or detection (one place)."""

from __future__ import annotations

import pytest

from superweight import catalog
from superweight.errors import SuperweightError
from superweight.model import wrap_model
from superweight.records import SuperWeight
from superweight.selection import parse_coords, resolve_super_weights
from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

LAYER, ROW, COL = 2, 17, 45


@pytest.fixture(scope="module")
def lm():
    model = tiny_model("llama")
    plant_super_weight(model, LAYER, ROW, COL)
    return wrap_model(model, tiny_tokenizer(), ref="planted-llama")


@pytest.mark.parametrize("text, coords", [
    ("1,2,3", [(1, 2, 3, None)]),
    ("1,2,3;4,5,6,7", [(1, 2, 3, None), (4, 5, 6, 7)]),
    (["(1, 2, 3)", " 4,5,6 ; "], [(1, 2, 3, None), (4, 5, 6, None)]),
    (["1,2,3", "1,2,3"], [(1, 2, 3, None)]),
])
def test_one_grammar(text, coords):
    assert [s.key for s in parse_coords(text)] == coords


@pytest.mark.parametrize("text, match", [("1,2", "is not L,R,C"), ("a,b,c", "is not L,R,C"),
                                         ("1,-2,3", "is not L,R,C"), ("1,2,3,4,5", "is not L,R,C"),
                                         (";", "no coordinates given")])
def test_bad_coordinates(text, match):
    with pytest.raises(SuperweightError, match=match):
        parse_coords(text)


def test_given_coordinates_are_checked_against_the_model(lm):
    sel = resolve_super_weights(lm, coords="2,17,45")
    assert [s.coord for s in sel.super_weights] == [(LAYER, ROW, COL)] and sel.source == "given coordinates"
    assert resolve_super_weights(lm, coords=[(2, 17, 45), SuperWeight(1, 0, 0)]).super_weights[1].coord == (1, 0, 0)
    with pytest.raises(SuperweightError, match="outside the down projection"):
        resolve_super_weights(lm, coords="2,64,45")


def test_detection_when_nothing_is_given(lm):
    sel = resolve_super_weights(lm)
    assert [s.coord for s in sel.super_weights] == [(LAYER, ROW, COL)] and sel.source == "detection"


def test_the_catalog_entry_by_exact_id(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "cat.json"))
    catalog.add("me/planted", [(LAYER, ROW, COL)], "a test")
    sel = resolve_super_weights(lm, catalog_id="me/planted")
    assert [s.coord for s in sel.super_weights] == [(LAYER, ROW, COL)] and sel.source == "catalog (a test)"
    with pytest.raises(SuperweightError, match="no entry for 'me/plant'"):
        resolve_super_weights(lm, catalog_id="me/plant")


@pytest.mark.parametrize("kwargs, match", [({"coords": "1,2,3", "catalog_id": "x"}, "not both"),
                                           ({"coords": "1,2,3", "include_late": True}, "late-layer spikes"),
                                           ({"catalog_id": "x", "include_late": True}, "late-layer spikes")])
def test_contradictory_requests_are_errors(lm, kwargs, match):
    with pytest.raises(SuperweightError, match=match):
        resolve_super_weights(lm, **kwargs)
