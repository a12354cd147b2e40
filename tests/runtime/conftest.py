"""Tiny llama-architecture GGUF files that llama.cpp loads, for the runtime tests.

Hidden and intermediate sizes are multiples of 256 so that every K-quant and IQ type fits the rows.
llama.cpp refuses a `gpt2` vocabulary without merges and transformers refuses a merge whose result is
not a token; the tiny byte vocabulary has no multi-byte token, so for llama.cpp the file gets one
merge (`Ā ā`, NUL + SOH). It is never used: our token ids are fed to llama.cpp directly.
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

TINY = dict(num_layers=4, hidden_size=256, intermediate_size=512, head_dim=64)
SUPER = (1, 7, 300)  # (layer, row, col) of the planted super weight


def write_llama_gguf(model, path, qtype="F32", monkeypatch=None):
    import gguf

    from superweight.testing_gguf import write_gguf

    original = gguf.GGUFWriter.add_token_merges
    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setattr(gguf.GGUFWriter, "add_token_merges", lambda self, merges: original(self, merges or ["Ā ā"]))
    try:
        return write_gguf(model, path, qtype=qtype)
    finally:
        if monkeypatch is None:
            mp.undo()


@pytest.fixture(scope="module")
def tiny_lm():
    """A LoadedModel of a tiny llama with one planted super weight."""
    from superweight.model.load import wrap_model
    from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer

    model = tiny_model("llama", **TINY)
    plant_super_weight(model, *SUPER, weight=20.0, input_scale=30.0)
    return wrap_model(model, tiny_tokenizer(), ref="tiny-llama")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_lm, tmp_path_factory):
    """That model as an F32 GGUF."""
    return write_llama_gguf(tiny_lm.model, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")
