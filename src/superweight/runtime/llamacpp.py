"""llama.cpp through its Python binding `llama-cpp-python`: the one place that imports it.

The binding is an optional extra (`pip install 'superweight[gguf]'`, built from source); without it
every llama.cpp feature stops with one line that says how to install it. `llama_cpp()` returns the
imported module, with llama.cpp's logging silenced (it writes to stderr from C otherwise).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    import numpy as np

INSTALL_HINT = ("llama.cpp features need llama-cpp-python: pip install 'superweight[gguf]' "
                "(builds llama.cpp from source; CMAKE_ARGS=-DGGML_NATIVE=OFF gives a portable build)")


@functools.cache
def llama_cpp():
    """The imported `llama_cpp` module, backend initialised and logging silenced.

    Raises `SuperweightError` with the install command when the binding is missing.
    """
    try:
        import llama_cpp as binding
    except ImportError:
        raise SuperweightError(INSTALL_HINT) from None
    binding.llama_backend_init()
    _silence(binding)
    return binding


def _silence(binding) -> None:
    """Route llama.cpp's C log lines to nowhere (kept alive on the module: C holds the pointer)."""

    @binding.llama_log_callback
    def _drop(level, text, user_data):  # noqa: ARG001 - the C signature
        return None

    binding._superweight_log_sink = _drop
    binding.llama_log_set(_drop, None)


class LlamaCppModel:
    """A GGUF file opened in llama.cpp, memory-mapped: tokenize, and every position's logits.

    One context of `n_ctx` tokens whose batch and micro-batch are the whole context, so one
    `logits(tokens)` call is one graph: an evaluation callback (`eval_callback`, the C signature
    `bool cb(ggml_tensor *, bool ask, void *)` wrapped by the binding's
    `ggml_backend_sched_eval_callback`) sees every intermediate tensor of that one pass. The memory
    (KV cache) is cleared before each call, so calls are independent windows.

    >>> with LlamaCppModel("model.gguf", n_ctx=256) as m:  # doctest: +SKIP
    ...     logits = m.logits(m.tokenize("The capital of France is"))  # [tokens, vocab] float32
    """

    def __init__(self, path, *, n_ctx: int = 512, n_threads: int | None = None, n_gpu_layers: int = 0,
                 eval_callback=None, repack: bool = True):
        import os
        from pathlib import Path

        lib = llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise SuperweightError(f"no GGUF file at {self.path}")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_mmap = True
        # repack: llama.cpp may copy some quantized weights (Q4_0, Q4_K...) into a faster CPU layout,
        # in anonymous memory next to the mapped file; False keeps the weights the mapped pages only
        mparams.use_extra_bufts = repack
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise SuperweightError(f"llama.cpp cannot load {self.path} (not a GGUF it supports, or corrupt)")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        if eval_callback is not None:
            self._callback = eval_callback  # C keeps only the pointer: keep the Python object alive
            cparams.cb_eval = eval_callback
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise SuperweightError(f"llama.cpp cannot make a context of {n_ctx} tokens for {self.path}")
        self._lib = lib
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_ctx = n_ctx
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_layer = lib.llama_model_n_layer(self._model)
        self.n_embd = lib.llama_model_n_embd(self._model)

    # --- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- text --------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids as llama.cpp's tokenizer makes them (BOS as the model's metadata says)."""
        data = text.encode()
        bos = self._lib.llama_vocab_get_add_bos(self._vocab) if add_bos is None else add_bos
        size = len(data) + 8
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, bos, True)
        if n < 0:
            buf = (self._lib.llama_token * -n)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, -n, bos, True)
        return list(buf[:n]) if n > 0 else []

    # --- the forward pass --------------------------------------------------------------------------
    def logits(self, tokens) -> "np.ndarray":
        """Logits of every position of `tokens` (one window, ≤ n_ctx): float32 `[len(tokens), n_vocab]`."""
        import ctypes

        import numpy as np

        tokens = [int(t) for t in tokens]
        n = len(tokens)
        if not 0 < n <= self.n_ctx:
            raise SuperweightError(f"a window of {n} tokens does not fit llama.cpp's context of {self.n_ctx}")
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = t
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                raise SuperweightError(f"llama.cpp could not evaluate {n} tokens (llama_decode returned {rc})")
            ptr = lib.llama_get_logits(self._ctx)
            out = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                        shape=(n, self.n_vocab)).copy()
        finally:
            lib.llama_batch_free(batch)
        return out
