"""llama.cpp through its Python binding `llama-cpp-python`: the one place that imports it.

The binding is an optional extra (`pip install 'superweight[gguf]'`, built from source); without it
every llama.cpp feature stops with one line that says how to install it. `llama_cpp()` returns the
imported module, with llama.cpp's logging silenced (it writes to stderr from C otherwise).
"""

from __future__ import annotations

import functools

from superweight.errors import SuperweightError

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
