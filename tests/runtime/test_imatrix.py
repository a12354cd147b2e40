"""llama.cpp's importance matrix from our hooks equals a direct computation on a tiny model."""

import numpy as np
import pytest
import torch

from superweight.errors import SuperweightError
from superweight.runtime.imatrix import compute_imatrix, hf_to_gguf_names
from superweight.runtime.quantize import gguf_tensors, quantize_gguf
from superweight.runtime.scoring import text_windows

TEXT = ["The quick brown fox jumps over the lazy dog. " * 12, "Pack my box with five dozen liquor jugs. " * 10]


def _direct(lm, windows):
    """Every linear's whole input kept, then the mean of squares per column in one go."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda m, i, o, p=p: seen.setdefault(p, []).append(i[0].detach()))
               for p, m in lm.view.decoder_linears()]
    try:
        with torch.no_grad():
            lm.model(input_ids=windows)  # all windows in one batch
    finally:
        for h in handles:
            h.remove()
    return {p: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double().pow(2).mean(0).numpy()
            for p, xs in seen.items()}, seen


def test_imatrix_equals_direct_computation(tiny_lm, tiny_gguf):
    windows = text_windows(tiny_lm, TEXT, seqlen=64)
    assert windows.shape == (windows.shape[0], 64) and windows.shape[0] >= 3
    im = compute_imatrix(tiny_lm, windows, batch_size=2)
    direct, seen = _direct(tiny_lm, windows)
    names = hf_to_gguf_names(tiny_lm)
    tensors = gguf_tensors(tiny_gguf)
    assert set(im) == set(names.values())
    for path, name in names.items():
        assert im[name].dtype == np.float32 and im[name].shape == (tensors[name]["shape"][0],)
        np.testing.assert_allclose(im[name], direct[path], rtol=1e-5)
    # independently: q_proj's input is the input norm of the residual stream entering the layer
    with torch.no_grad():
        hidden = tiny_lm.model(input_ids=windows, output_hidden_states=True).hidden_states[2]
        x = tiny_lm.model.model.layers[2].input_layernorm(hidden).reshape(-1, hidden.shape[-1])
    np.testing.assert_allclose(im["blk.2.attn_q.weight"], x.double().pow(2).mean(0).numpy(), rtol=1e-5)
    # the planted super weight's input column stands out in its down projection
    assert im["blk.1.ffn_down.weight"].argmax() == 300


def test_imatrix_drives_an_iq_quantization(tiny_lm, tiny_gguf, tmp_path):
    windows = text_windows(tiny_lm, TEXT, seqlen=64)
    im = compute_imatrix(tiny_lm, windows)
    r = quantize_gguf(tiny_gguf, tmp_path / "iq.gguf", "IQ3_XXS", imatrix=im, imatrix_source="pangrams",
                      imatrix_chunks=windows.shape[0], nthread=1)
    assert r["imatrix"] == "pangrams" and "IQ3_XXS" in r["types"]
    assert r["metadata"]["quantize.imatrix.chunks_count"] == windows.shape[0]


def test_empty_text_is_refused(tiny_lm):
    with pytest.raises(SuperweightError, match="the text is empty"):
        text_windows(tiny_lm, ["", "  \n"], seqlen=64)
    with pytest.raises(SuperweightError, match="at least one window"):
        compute_imatrix(tiny_lm, torch.zeros(0, 64, dtype=torch.long))
