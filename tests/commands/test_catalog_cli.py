"""`superweight catalog` with the shared coordinate grammar and `--json`."""

from __future__ import annotations

import json

from superweight.cli import main


def test_catalog_add_takes_coords_and_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "cat.json"))
    out = tmp_path / "added.json"
    assert main(["catalog", "add", "me/m", "--coords", "1,2,3;(4, 5, 6)", "--coords", "7,8,9",
                 "--json", str(out)]) == 0
    assert "Added 3 coordinate(s) for me/m" in capsys.readouterr().out
    added = json.loads(out.read_text())
    assert added["entries"][0]["super_weights"] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert added["kind"] == "catalog-add" and added["schema_version"] == 1 and added["tool_version"]
    assert added["command"].startswith("superweight catalog add me/m") and added["local_path"].endswith("cat.json")
    assert main(["catalog", "show", "me/m", "--json", "-"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["entries"][0]["model"] == "me/m" and shown["entries"][0]["origin"].endswith("cat.json")
    assert shown["kind"] == "catalog-show" and shown["tool"] == "superweight"


def test_catalog_refuses_what_it_cannot_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "cat.json"))
    assert main(["catalog", "add", "me/m", "--coords", "1,2,3,0"]) == 2
    assert "dense (layer, row, col)" in capsys.readouterr().err
    assert main(["catalog", "list", "--coords", "1,2,3"]) == 2
    assert "only for `catalog add`" in capsys.readouterr().err
    assert not (tmp_path / "cat.json").exists()
