"""llama.cpp's importance matrix, computed with our forward hooks instead of `llama-imatrix`.

`llama-imatrix` watches every matrix multiplication with a layer weight (`blk.*`) and keeps, per
weight tensor, the sum over tokens of each input column's square and the number of tokens;
`llama-quantize` hands `llama_model_quantize` the mean (sum / count) per column — a tensor that never
saw a token gets 1s — and experts' values concatenated expert after expert. We compute the same
from the PyTorch model: a hook on each decoder linear adds `x²` summed over the tokens of a batch to a
float64 running sum (no activation is kept) and counts tokens; the result is
`{gguf tensor name: float32 [in_features]}`, named by gguf's `TensorNameMap` for the GGUF's
architecture. Every token of every window counts, as in `llama-imatrix`; the windows come from
`superweight.runtime.scoring.text_windows` (our evaluator's windowing).

Left out: the fused expert stacks of mixture-of-experts models (`*_exps`, not an `nn.Linear`, so no
hook sees them); llama.cpp quantizes those without an importance matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from superweight.errors import SuperweightError
from superweight.events import BATCH, OnEvent, emitter


def hf_to_gguf_names(lm, arch: str | None = None) -> dict[str, str]:
    """`{decoder linear's module path: GGUF tensor name}` (`model.layers.3.mlp.down_proj` →
    `blk.3.ffn_down.weight`); `arch` is the GGUF's `general.architecture` (default: the model_type)."""
    import gguf

    arch = arch or lm.model.config.model_type
    enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if enum is None:
        raise SuperweightError(f"gguf knows no architecture {arch!r}; pass the GGUF's general.architecture")
    table = gguf.get_tensor_name_map(enum, lm.view.num_layers)
    out = {}
    for path, _ in lm.view.decoder_linears():
        name = table.get_name(path)
        if name is None:
            raise SuperweightError(f"no GGUF tensor name for {path} in architecture {arch!r}")
        out[path] = name + ".weight"
    return out


def compute_imatrix(lm, windows: torch.Tensor, *, arch: str | None = None, batch_size: int = 1,
                    on_event: OnEvent | None = None) -> dict[str, np.ndarray]:
    """Importance matrix of `lm` (a `LoadedModel`) over token windows `[n, seqlen]`, as llama.cpp's.

    Returns `{gguf tensor name: float32 [in_features]}`: per input column, the mean over every token
    of the squared input of that weight. `on_event` hears a "batch" event (windows done) after each batch.

    >>> im = compute_imatrix(lm, text_windows(lm, "wiki", seqlen=512, max_tokens=8192))  # doctest: +SKIP
    >>> im["blk.11.ffn_down.weight"].shape  # doctest: +SKIP
    (1536,)
    """
    from superweight.model.adapters import linear_shape
    from superweight.model.hooks import hooked
    from superweight.model.offload import input_device

    if windows.ndim != 2 or windows.numel() == 0:
        raise SuperweightError("the importance matrix needs at least one window of tokens")
    names = hf_to_gguf_names(lm, arch)
    modules = dict(lm.view.decoder_linears())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make(name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]).double()  # [tokens, in]
            s = (x * x).sum(dim=0)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    device, emit = input_device(lm.model), emitter(on_event)
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.inference_mode(), hooked([(modules[p], make(n)) for p, n in names.items()]):
            for start in range(0, windows.shape[0], batch_size):
                lm.model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
                emit(BATCH, "imatrix", min(start + batch_size, windows.shape[0]), windows.shape[0], ended=True)
    finally:
        lm.model.train(was_training)
    out = {}
    for path, name in names.items():
        n_in = linear_shape(modules[path])[1]  # W[out, in], GPT-2's Conv1D read transposed
        out[name] = ((sums[name] / counts[name]).float().cpu().numpy() if counts.get(name)
                     else np.ones(n_in, dtype=np.float32))  # never saw a token: 1s, as llama-quantize
    return out

