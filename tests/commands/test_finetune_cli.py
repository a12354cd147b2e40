"""`superweight finetune` as a user runs it, on tiny planted model folders and a tiny text file."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from superweight.cli import main
from superweight import testing

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. " * 30
LAYER, ROW, COL = 2, 7, 11
KEY = f"model.layers.{LAYER}.mlp.down_proj.weight"
# a large weight decay: decay alone moves an unguarded super weight by lr·wd = 5e-4 of itself a step
FAST = ["--steps", "2", "--seqlen", "32", "--batch-size", "2", "--lr", "1e-3", "--weight-decay", "0.5",
        "--every", "1", "--threads", "1"]
SMT = ["--smt-block", "16", "--smt-warmup", "2", "--smt-budget", "0.05"]


def save_tiny(path, plant: bool = True) -> str:
    return testing.save_tiny(path, plant=(LAYER, ROW, COL) if plant else None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-cli")
    (root / "corpus.txt").write_text(TEXT)
    return {"sw": save_tiny(root / "sw"), "nosw": save_tiny(root / "nosw", plant=False),
            "text": str(root / "corpus.txt")}


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def weight(folder) -> float:
    return float(load_file(f"{folder}/model.safetensors")[KEY][ROW, COL])


@pytest.mark.parametrize("method", ["full", "lora", "smt"])
def test_each_method_with_freeze_writes_a_checkpoint_that_check_reads(method, models, tmp_path, capsys):
    out, js = tmp_path / "tuned", tmp_path / "ft.json"
    code, stdout, err = run(["finetune", models["sw"], "--data", models["text"], "--method", method, *FAST,
                             *(SMT if method == "smt" else []), "--out", str(out), "--json", str(js)], capsys)
    assert code == 0, err
    assert weight(out) == weight(models["sw"])  # bit-identical in the saved checkpoint
    assert load_file(f"{out}/model.safetensors")[KEY][ROW, COL + 1] != load_file(
        f"{models['sw']}/model.safetensors")[KEY][ROW, COL + 1] or method != "full"  # the rest trained
    assert "Super weights (detection): (2, 7, 11)" in stdout
    assert f"Fine-tuning {models['sw']}" in stdout and "Super weights during fine-tuning (guard: freeze)" in stdout
    row = next(line for line in stdout.splitlines() if line.startswith("│   (2, 7, 11) │       50 │    50 │"))
    assert row.split("│")[4].strip() == "0" and row.split("│")[6].strip() == "yes"  # rel. change, bit-identical
    if method == "lora":  # while training, the guard watched W + B·A move; the merge put W back
        assert float(row.split("│")[5]) > 0
    assert "1 of 1 super activation(s) survive" in stdout
    assert "[2/" in err and "step 2: loss" in err and "about" in err  # progress lines with the time left
    payload = json.loads(js.read_text())
    assert payload["kind"] == "finetune" and payload["schema_version"] >= 1 and payload["tool_version"]
    assert payload["model"]["memory"]["offloaded"] is False and payload["model"]["weights_sha256"]
    assert payload["config"]["method"] == method and payload["config"]["guard"] == "freeze"
    assert payload["data"] == models["text"] and payload["super_weight_source"] == "detection"
    assert payload["drift"]["weights"][0]["bit_identical"] and len(payload["train"]["losses"]) == 2
    assert [r["survives"] for r in payload["check"]] == [True]
    manifest = json.loads((out / "superweight-finetune.json").read_text())
    assert manifest["kind"] == "finetuned-model" and manifest["config"]["method"] == method
    assert (out / "finetune-drift.png").stat().st_size > 1000
    if method == "smt":
        assert "SMT: where the" in stdout and (out / "finetune-smt-placement.png").stat().st_size > 1000
        assert payload["smt"]["placement"]["kinds"] == ["q", "k", "v", "o", "gate", "up", "down"]
    code, stdout, err = run(["check", models["sw"], str(out), "--coords", f"{LAYER},{ROW},{COL}",
                             "--json", str(tmp_path / "check.json")], capsys)
    assert code == 0, err
    assert "0.00%" in stdout and "1 of 1 super activation(s) survive" in stdout
    assert json.loads((tmp_path / "check.json").read_text())["other_manifest"]["config"]["method"] == method


def test_clip_and_coords_and_plot_folder(models, tmp_path, capsys):
    out, plots = tmp_path / "tuned", tmp_path / "plots"
    code, stdout, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--guard", "clip",
                             "--max-step-rel", "1e-4", "--max-total-rel", "1.5e-4", "--coords", "2,7,11",
                             "--out", str(out), "--plot", str(plots)], capsys)
    assert code == 0, err
    assert "Super weights (given coordinates): (2, 7, 11)" in stdout
    assert 0 < abs(weight(out) - weight(models["sw"])) <= 1.5e-4 * abs(weight(models["sw"]))  # decay: 1e-3
    assert (plots / "finetune-drift.png").is_file() and not (out / "finetune-drift.png").exists()


def test_json_on_stdout(models, tmp_path, capsys):
    code, stdout, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--steps", "1",
                             "--out", str(tmp_path / "t"), "--json", "-"], capsys)
    assert code == 0, err
    payload = json.loads(stdout)  # nothing else on stdout
    assert payload["kind"] == "finetune" and payload["train"]["steps"] == 1
    assert "Super weights (detection): (2, 7, 11)" in err


def test_a_lost_super_activation_exits_1(models, tmp_path, capsys):
    """Unguarded, a huge learning rate wrecks the tiny model: `check` reports the loss, as `check` does."""
    out = tmp_path / "wrecked"
    code, stdout, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--guard", "none",
                             "--lr", "0.5", "--out", str(out)], capsys)
    assert code == 1, err
    assert "0 of 1 super activation(s) survive" in stdout and "Flagged: super weight (2, 7, 11)" in stdout
    assert (out / "model.safetensors").is_file()  # the checkpoint is still written


def test_no_super_weights_freeze_is_an_error_and_guard_none_trains(models, tmp_path, capsys):
    out = tmp_path / "tuned"
    code, stdout, err = run(["finetune", models["nosw"], "--data", models["text"], *FAST, "--out", str(out)], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no super weight found in ")
    assert "--guard none" in err and not out.exists()
    code, stdout, err = run(["finetune", models["nosw"], "--data", models["text"], *FAST, "--guard", "none",
                             "--out", str(out), "--json", str(tmp_path / "ft.json")], capsys)
    assert code == 0, err
    assert "check skipped: no super weights were given or detected" in stdout
    assert "[3/3] save: checkpoint written" in err and "check:" not in err  # the progress plan had no check
    payload = json.loads((tmp_path / "ft.json").read_text())
    assert payload["check"] is None and payload["super_weights"] == [] and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--data", "EMPTY"], "is empty: no text to train on"),
    (["--data", "MISSING"], "text file '"),
    (["--data", "nonesuch"], "unknown training corpus 'nonesuch'; use one of wiki, c4, ptb, ptb-train, ptb-valid"),
    (["--steps", "0"], "steps must be a positive integer, got 0"),
    (["--steps", "two"], "--steps must be a whole number, got 'two'"),
    (["--method", "smt", "--smt-budget", "0"], "SMT budget must be a share of the parameters in (0, 1]"),
    (["--method", "smt", "--smt-budget", "1.5"], "SMT budget must be a share of the parameters in (0, 1], got 1.5"),
    (["--method", "smt", "--smt-block", "0"], "SMT block size must be a positive integer, got 0"),
    (["--method", "smt", "--smt-block", "2.5"], "--smt-block must be a whole number, got '2.5'"),
    (["--method", "smt", "--smt-block", "x"], "--smt-block must be a whole number, got 'x'"),
    (["--method", "qlora"], "unknown fine-tuning method 'qlora'; choose one of full, lora, smt"),
    (["--guard", "lock"], "unknown guard 'lock'; choose one of freeze, clip, none"),
    (["--smt-block", "16"], "--smt-block does not apply without --method smt"),
    (["--lora-r", "4"], "--lora-r does not apply without --method lora"),
    (["--max-total-rel", "0.1"], "--max-total-rel does not apply without --guard clip"),
    (["--method", "lora", "--lora-kinds", "q,zz"], "unknown module kind(s) zz for llama"),
    (["--method", "smt", "--smt-kinds", "zz"], "unknown module kind(s) zz for llama"),
    (["--scheduler", "zigzag"], "unknown learning-rate scheduler 'zigzag'"),
    (["--max-memory", "1MB"], "cannot fine-tune a model whose layers are offloaded"),
    (["--no-out"], "--out DIR is required"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, models, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text(" \n")
    data = ["--data", models["text"]] if "--data" not in argv else []
    argv = [{"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "missing.txt")}.get(a, a) for a in argv]
    out = [] if argv == ["--no-out"] else ["--out", str(tmp_path / "tuned")]
    argv = [a for a in argv if a != "--no-out"]
    code, stdout, err = run(["finetune", models["sw"], *data, *FAST, *argv, *out,
                             "--json", str(tmp_path / "ft.json")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]  # no checkpoint, no JSON, no temp folder


def test_unfetched_data_names_the_fetch_command(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    code, _, err = run(["finetune", models["sw"], "--data", "ptb-train", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "run `superweight data fetch ptb-train`" in err and not (tmp_path / "t").exists()


def test_out_folder_not_empty_needs_force(models, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["finetune", models["sw"], "--data", models["text"], *FAST, "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "is not empty; add --force" in err and (out / "keep.txt").read_text() == "mine"
    code, _, err = run(argv + ["--force"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    code, _, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--force",
                        "--out", models["sw"]], capsys)
    assert code == 2 and "model's own files" in err
    code, _, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--out", str(tmp_path / "n"),
                        "--plot", models["sw"]], capsys)
    assert code == 2 and "model's own files" in err and "--plot folder" in err


def test_an_interrupted_run_leaves_nothing(models, tmp_path, monkeypatch, capsys):
    """Ctrl-C during training: exit 130, no output folder, no temporary folder."""
    import superweight.finetune.train as train
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        seconds: list = []

        def on_step_end(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "step_timer", Interrupt)
    code, _, err = run(["finetune", models["sw"], "--data", models["text"], *FAST, "--out", str(tmp_path / "t"),
                        "--json", str(tmp_path / "ft.json")], capsys)
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_finetune_the_default_model_end_to_end(fetched_data, default_lm, tmp_path, capsys):
    out = tmp_path / "tuned"
    code, stdout, err = run(["finetune", "smollm2-135m", "--data", "ptb-train", "--steps", "2", "--seqlen", "64",
                             "--batch-size", "2", "--method", "lora", "--guard", "freeze", "--out", str(out),
                             "--json", str(tmp_path / "ft.json")], capsys)
    assert code == 0, err
    assert "Super weights (detection): (11, 507, 1229), (11, 507, 1487)" in stdout
    assert "2 of 2 super activation(s) survive" in stdout
    tuned = load_file(f"{out}/model.safetensors")
    for col in (1229, 1487):
        original = default_lm.view.down_proj(11).matrix()[507, col]
        assert tuned["model.layers.11.mlp.down_proj.weight"][507, col] == original  # bit-identical after the merge
    payload = json.loads((tmp_path / "ft.json").read_text())
    assert payload["config"]["method"] == "lora" and all(w["bit_identical"] for w in payload["drift"]["weights"])
    assert payload["drift"]["activations"][0]["original"] > 1e4
