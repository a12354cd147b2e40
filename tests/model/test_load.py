"""Loading: every bad reference is one SuperweightError that says what is wrong; a tiny model saved as
safetensors loads back as it was; an architecture without an adapter is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.model import load_model
from superweight.testing import tiny_model, tiny_tokenizer




@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))


def save_tiny(path: Path, model_type: str = "llama", **overrides) -> torch.nn.Module:
    model = tiny_model(model_type, num_layers=2, **overrides)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return model


def test_missing_path(tmp_path):
    with pytest.raises(SuperweightError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"), quiet=True)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SuperweightError, match="not a model directory: it has no config.json"):
        load_model(str(tmp_path), quiet=True)


def test_pickle_checkpoint_is_refused(tmp_path):
    tiny_model("llama", num_layers=1).config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(SuperweightError, match="no .safetensors weights.*pytorch_model.bin.*pickle"):
        load_model(str(tmp_path), quiet=True)


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("this is text, not a GGUF file\n")
    with pytest.raises(SuperweightError, match="not a GGUF file"):
        load_model(str(fake), quiet=True)


def test_missing_gguf(tmp_path):
    with pytest.raises(SuperweightError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), quiet=True)


def test_unknown_dtype():
    with pytest.raises(SuperweightError, match="unknown dtype 'int3'.*float32"):
        load_model("smollm2-135m", dtype="int3", quiet=True)


def test_unknown_reference():
    with pytest.raises(SuperweightError, match="not found: not a built-in alias"):
        load_model("no-such-alias", quiet=True)


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(SuperweightError,
                       match="could not load 'nobody-here/no-such-model' from the Hugging Face hub"):
        load_model("nobody-here/no-such-model", quiet=True)


def test_tiny_model_round_trip(tmp_path):
    original = save_tiny(tmp_path, "qwen2")
    lm = load_model(str(tmp_path), quiet=True)
    assert lm.kind == "local" and lm.model_type == "qwen2" and lm.view.num_layers == 2
    assert lm.dtype == torch.float32 and [p.name for p in lm.weight_files] == ["model.safetensors"]
    ids = lm.tokenizer("Apple", return_tensors="pt").input_ids
    assert ids.tolist() == tiny_tokenizer()("Apple", return_tensors="pt").input_ids.tolist()
    saved = original.state_dict()
    assert all(torch.equal(t, saved[name]) for name, t in lm.model.state_dict().items())
    with torch.no_grad():  # the loaded model may use another attention kernel (sdpa, not eager)
        torch.testing.assert_close(lm.model(input_ids=ids).logits, original(input_ids=ids).logits)
    assert lm.describe()["weights_sha256"] == lm.weights_hash()


def test_bfloat16_load(tmp_path):
    save_tiny(tmp_path)
    lm = load_model(str(tmp_path), dtype="bfloat16", quiet=True)
    assert lm.dtype == torch.bfloat16


def test_architecture_without_adapter(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("bloom", vocab_size=259, hidden_size=64, n_layer=2, n_head=4)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SuperweightError, match="unsupported architecture 'bloom'.*--layers"):
        load_model(str(tmp_path), quiet=True)
    # ... and the override paths make it usable
    lm = load_model(str(tmp_path), layers="transformer.h", down_proj="mlp.dense_4h_to_h", quiet=True)
    assert lm.view.down_proj(1).shape == (64, 256)


def _retype(path: Path, model_type: str, architecture: str) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["architectures"] = [architecture]
    (path / "config.json").write_text(json.dumps(cfg))


def test_model_type_edited_in_config(tmp_path):
    """A directory whose config names a type transformers knows but we have no adapter for."""
    save_tiny(tmp_path)
    _retype(tmp_path, "bloom", "BloomForCausalLM")
    with pytest.raises(SuperweightError, match="unsupported architecture 'bloom'"):
        load_model(str(tmp_path), quiet=True)


def test_config_transformers_cannot_parse(tmp_path):
    """A Llama config relabelled 'falcon': transformers fails while building the config."""
    save_tiny(tmp_path)
    _retype(tmp_path, "falcon", "FalconForCausalLM")
    with pytest.raises(SuperweightError, match="unsupported architecture 'falcon'|could not load"):
        load_model(str(tmp_path), quiet=True)
