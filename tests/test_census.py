"""The census library: the same results as `detect`, a dead worker is one model's failure, the store
resumes, and the same census runs as Ray tasks on a local Ray cluster started here."""

from __future__ import annotations

import json
import os

import pytest

from census_helpers import comparable, killed_model, planted_models
from superweight.census import CensusConfig, Store, reservation, run_census
from superweight.census.models import ModelInfo, inspect_model, read_refs
from superweight.cli import main
from superweight.errors import SuperweightError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    return planted_models(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two local workers shared by the tests (each import of torch in a fresh process costs seconds).
    transformers copies a folder's model code into HF_MODULES_CACHE: the workers keep it in a test
    folder (set before they start: they inherit the environment)."""
    from superweight.census.local import LocalPool

    old = os.environ.get("HF_MODULES_CACHE")
    os.environ["HF_MODULES_CACHE"] = str(tmp_path_factory.mktemp("hf-modules"))
    with LocalPool(2) as workers:
        yield workers
    if old is None:
        os.environ.pop("HF_MODULES_CACHE", None)
    else:
        os.environ["HF_MODULES_CACHE"] = old


def detect_alone(ref: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"detect-{abs(hash(ref))}.json"
    assert main(["detect", ref, "--threads", "1", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_census_gives_what_detect_gives_on_each_model(tiny, tmp_path, pool):
    run = run_census(tiny, CensusConfig(), tmp_path / "c", threads=1, pool=pool)
    assert run.failed == [] and sorted(run.ran) == sorted(tiny) and run.skipped == []
    for ref, entry in zip(tiny, run.entries):
        assert entry["ref"] == ref and entry["status"] == "done"
        assert comparable(entry["detect"]) == comparable(detect_alone(ref, tmp_path))
    rows = {r["architecture"]: r for r in run.rows}
    assert rows["llama"]["candidates"] == 1 and rows["llama"]["origins"] == "super weight ×1"
    assert rows["gpt2"]["params"] > 0 and rows["qwen2"]["layers"] == 6 and rows["qwen2"]["verified"] is None
    assert all(r["seconds"] > 0 and r["peak_ram_bytes"] > 0 for r in run.rows)


def test_a_killed_worker_is_that_models_failure_and_a_rerun_finishes_only_it(tiny, tmp_path, pool):
    killed = killed_model(tmp_path / "killed", once=True)
    refs = [tiny[0], killed, tiny[1]]
    config = CensusConfig(trust_remote_code=True)
    first = run_census(refs, config, tmp_path / "c", threads=1, pool=pool)
    by_ref = {e["ref"]: e for e in first.entries}
    assert by_ref[killed]["status"] == "failed"
    assert by_ref[killed]["error"] == "the worker process died: killed by SIGKILL (out of memory?)"
    assert first.failed == [killed] and by_ref[tiny[1]]["status"] == "done"  # the next model ran
    stamps = {p: p.stat().st_mtime_ns for p in Store(tmp_path / "c").results.iterdir()}

    again = run_census(refs, config, tmp_path / "c", threads=1, pool=pool)  # failures stay unless asked
    assert again.ran == [] and again.failed == [killed]
    retried = run_census(refs, config, tmp_path / "c", threads=1, retry_failed=True, pool=pool)
    assert retried.ran == [killed] and retried.failed == []
    assert sorted(retried.skipped) == sorted([tiny[0], tiny[1]])
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert [json.loads(p.read_text())["ref"] for p in changed] == [killed]  # the others were not rewritten


def test_a_missing_model_is_recorded_and_the_census_goes_on(tiny, tmp_path, pool):
    run = run_census(["/no/such/model", tiny[0]], CensusConfig(), tmp_path / "c", threads=1, pool=pool)
    (missing, ok) = run.entries
    assert missing["status"] == "failed" and missing["error"] == "model path '/no/such/model' does not exist"
    assert ok["status"] == "done" and run.failed == ["/no/such/model"]
    assert run.rows[0]["error"] == missing["error"] and run.rows[0]["architecture"] is None


def test_a_changed_setting_or_model_is_a_new_entry(tmp_path, pool):
    from superweight.testing import save_tiny

    ref = save_tiny(tmp_path / "m", "llama", plant=(2, 7, 11))
    out = tmp_path / "c"
    run_census([ref], CensusConfig(), out, threads=1, pool=pool)
    assert run_census([ref], CensusConfig(), out, threads=1, pool=pool).skipped == [ref]
    assert run_census([ref], CensusConfig(detect={"max_rounds": 2}), out, threads=1, pool=pool).ran == [ref]
    save_tiny(tmp_path / "m", "llama", plant=(3, 9, 20))  # new weights in the same folder
    run = run_census([ref], CensusConfig(), out, threads=1, pool=pool)
    assert run.ran == [ref] and run.rows[0]["super_weights"] == [[3, 9, 20]]
    assert len(list(Store(out).results.iterdir())) == 3


def test_a_model_reserves_its_weights_and_a_large_one_runs_alone():
    gib = 1 << 30
    small = ModelInfo("s", "local", "x", weights_bytes=gib)
    large = ModelInfo("l", "local", "y", weights_bytes=6 * gib)
    unknown = ModelInfo("u", "hub", None)
    reserve, budget = reservation(small, share=4 * gib, total=8 * gib)
    assert gib < reserve < 2 * gib and budget == 4 * gib
    assert reservation(large, share=4 * gib, total=8 * gib) == (8 * gib, 8 * gib)
    assert reservation(unknown, share=4 * gib, total=8 * gib) == (8 * gib, 8 * gib)


def test_inspect_hashes_like_the_loader_and_reads_sizes_from_headers(tiny):
    from superweight.model import load_model

    info = inspect_model(tiny[0])
    lm = load_model(tiny[0], quiet=True)
    assert info.kind == "local" and info.fingerprint == f"sha256:{lm.weights_hash()}"
    assert info.params == sum(p.numel() for p in lm.model.state_dict().values())
    assert info.weights_bytes == 4 * info.params
    assert inspect_model("/no/such/model").kind == "unresolved"
    assert inspect_model("not-an-alias").kind == "unresolved"
    assert inspect_model("org/not-downloaded").fingerprint is None


def test_references_from_arguments_and_files(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text("# my models\norg/a\n\n./b\norg/a\n")
    assert read_refs(["x/y"], [str(listing)]) == ["x/y", "org/a", "./b"]
    with pytest.raises(SuperweightError, match="no model given"):
        read_refs([], [])
    with pytest.raises(SuperweightError, match="cannot read the model list"):
        read_refs([], [str(tmp_path / "none.txt")])


def test_settings_are_checked_before_any_worker_starts(tmp_path):
    with pytest.raises(SuperweightError, match="max-rounds"):
        CensusConfig(detect={"max_rounds": 0})
    with pytest.raises(SuperweightError, match="ablate"):
        CensusConfig(ablate="full")
    with pytest.raises(SuperweightError, match="threshold"):
        CensusConfig(verify_threshold=0.5)
    with pytest.raises(SuperweightError, match="workers"):
        run_census(["x"], CensusConfig(), tmp_path / "c", workers=0)
    assert not (tmp_path / "c").exists()


# --- Ray -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of this process (2 CPUs, no dashboard); its workers inherit the environment."""
    ray = pytest.importorskip("ray")
    os.environ["HF_MODULES_CACHE"] = str(tmp_path_factory.mktemp("hf-modules"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.pop("HF_MODULES_CACHE", None)


def test_ray_census_retries_a_killed_task_and_records_a_missing_model(ray_cluster, tiny, tmp_path, pool):
    killed = killed_model(tmp_path / "killed", once=True)
    refs = [tiny[0], killed, "/no/such/model", tiny[2]]
    run = run_census(refs, CensusConfig(trust_remote_code=True), tmp_path / "c", ray="auto", retries=1, threads=1)
    by_ref = {e["ref"]: e for e in run.entries}
    assert (tmp_path / "killed" / "killed.marker").is_file()  # the first attempt was killed ...
    assert by_ref[killed]["status"] == "done" and by_ref[killed]["worker"]["engine"] == "ray"  # ... Ray retried it
    assert by_ref["/no/such/model"]["error"] == "model path '/no/such/model' does not exist"
    assert run.failed == ["/no/such/model"] and run.engine == "ray"
    local = run_census([tiny[0], tiny[2]], CensusConfig(trust_remote_code=True), tmp_path / "local", threads=1,
                       pool=pool)
    for entry in local.entries:  # the same figures from a Ray task and a local worker
        assert comparable(entry["detect"]) == comparable(by_ref[entry["ref"]]["detect"])
    assert run_census(refs, CensusConfig(trust_remote_code=True), tmp_path / "c", ray="auto").ran == []


def test_ray_task_killed_every_time_is_recorded_failed(ray_cluster, tiny, tmp_path):
    killed = killed_model(tmp_path / "killed", once=False)
    run = run_census([killed, tiny[1]], CensusConfig(trust_remote_code=True), tmp_path / "c", ray="auto",
                     retries=1, threads=1)
    bad, ok = run.entries
    assert bad["status"] == "failed"
    assert bad["error"].startswith("the Ray task failed after 2 attempt(s): WorkerCrashedError")
    assert ok["status"] == "done"


@pytest.mark.integration
def test_census_of_the_default_model_matches_detect_and_fills_the_catalog(tiny, tmp_path, monkeypatch, pool):
    from superweight import catalog
    from superweight.census import add_to_catalog

    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "catalog.json"))
    refs = ["smollm2-135m", tiny[1]]
    run = run_census(refs, CensusConfig(verify_threshold=3.0), tmp_path / "c", threads=1, pool=pool)
    assert run.failed == []
    for ref, entry in zip(refs, run.entries):
        assert comparable(entry["detect"]) == comparable(detect_alone(ref, tmp_path, "--verify"))
    row = run.rows[0]
    assert row["super_weights"] == [[11, 507, 1229], [11, 507, 1487]] and row["catalog"] == "agrees with the catalog"
    assert row["architecture"] == "llama" and row["layers"] == 30 and row["max_ppl_ratio"] > 3
    ((model_id, coords, path),) = add_to_catalog(tmp_path / "c")  # the tiny model's candidate is not verified
    assert model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and coords == [(11, 507, 1229), (11, 507, 1487)]
    entry = catalog.lookup(model_id)
    assert entry.origin == str(path) and entry.source.startswith("superweight census in ")


def test_a_row_carries_the_quick_table_1_and_the_table_says_it():
    from superweight.census.summary import summarize
    from superweight.report.census import census_table, csv_text

    sw = {"layer": 2, "row": 7, "col": 11, "expert": None, "late": False, "verdict": None, "ppl_ratio": None}
    entry = {"ref": "m", "status": "done", "seconds": 1.5, "peak_memory": {"ram": 1 << 20}, "params": 1000,
             "fingerprint": "sha256:x",
             "detect": {"model": {"model_type": "llama", "num_layers": 6}, "super_weights": [sw],
                        "massive_activations": [{"origin": {"kind": "super weight"}, "value": 900.0}],
                        "super_activations": [{"value": -900.0}], "verification": None,
                        "catalog": {"verdict": "not catalogued"}},
             "ablation": {"rows": [
                 {"condition": "Original", "summary": {"average": 0.5, "wiki_ppl": 20.0, "piqa": 0.6}},
                 {"condition": "Prune SW", "summary": None}]}}
    row = summarize(entry)
    assert row["ablation"] == {"Original": {"average": 0.5, "wiki_ppl": 20.0}, "Prune SW": None}
    assert row["super_activation"] == 900.0 and row["verified"] is None and row["super_weights"] == [[2, 7, 11]]
    table = census_table([row])
    assert table.rows[0][6] == "1 / –" and table.rows[0][7] == "(not verified)"
    assert "m: Table 1 (quick): Original avg 50.0%, wiki_ppl 20; Prune SW not run" in table.notes
    assert '"wiki_ppl": 20.0' in csv_text([row]).replace('""', '"')


def test_models_that_fit_run_together_and_one_larger_than_a_share_runs_alone(tiny, tmp_path, pool):
    from superweight.census import PROCESS_ALLOWANCE

    need = PROCESS_ALLOWANCE + (2 << 20)  # what a tiny model reserves, about

    def events(max_memory: int, out: str) -> list[str]:
        seen: list[str] = []
        run_census(tiny[:2], CensusConfig(), tmp_path / out, threads=1, pool=pool, max_memory=max_memory,
                   on_event=lambda e: seen.append("done" if e.ended else "start") if e.kind == "model" else None)
        return seen

    assert events(2 * need + (64 << 20), "together") == ["start", "start", "done", "done"]
    assert events(2 * need - (64 << 20), "alone") == ["start", "done", "start", "done"]
    entry = Store(tmp_path / "alone").entries()[0]
    assert entry["memory_budget_bytes"] == 2 * need - (64 << 20)  # the whole budget, as it ran alone
    assert entry["detect"]["model"]["memory"]["budget"] is None  # its weights fit: loaded as `detect` loads


def test_a_gguf_file_is_hashed_as_a_file_and_gives_what_detect_gives(tmp_path, pool):
    from superweight._io import sha256_file
    from superweight.testing import plant_super_weight, tiny_model
    from superweight.testing_gguf import write_gguf

    model = tiny_model("llama")
    plant_super_weight(model, 2, 7, 11)
    path = str(write_gguf(model, tmp_path / "planted.gguf"))
    info = inspect_model(path)
    assert info.kind == "gguf" and info.fingerprint == f"sha256:{sha256_file(path)}|cache:float32"
    assert 0 < info.params <= sum(p.numel() for p in model.state_dict().values())  # tied weights stored once
    (entry,) = run_census([path], CensusConfig(), tmp_path / "c", threads=1, pool=pool).entries
    assert entry["status"] == "done" and entry["detect"]["model"]["kind"] == "gguf"
    assert comparable(entry["detect"]) == comparable(detect_alone(path, tmp_path, "--engine", "torch"))
