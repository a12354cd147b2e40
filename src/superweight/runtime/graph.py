"""Seeing (and editing) llama.cpp's intermediate tensors: the evaluation callback, and the graph's names.

llama.cpp calls a context's evaluation callback (`cb_eval`) twice per graph node: once to *ask*
whether we want the node (returning True splits the graph there, so keep the set small), then,
after the node is computed, with the tensor itself. Whatever the callback writes into the tensor
is what the later nodes read — that is how a weight's contribution is removed or an activation
ablated without touching the (memory-mapped, read-only) weights. `llama-imatrix` collects
activations the same way.

A node is read through `struct ggml_tensor`'s leading fields (`type`, `buffer`, `ne[4]`, `nb[4]`,
laid out as in the vendored ggml.h) and ggml's own accessors from `libggml-base` (`ggml_get_name`,
`ggml_backend_tensor_get/set`, which work for any backend's buffer). Only contiguous float32
tensors of at most two dimensions are read; anything else is skipped with a reason
(`GraphObserver.skipped`), never misread.

Graph names are `{base}-{layer}` (`ffn_out-11`), set by each architecture's graph builder in
llama.cpp; `GRAPH_NAMES` declares, per `general.architecture`, which names carry what detection
needs (read off llama.cpp's graphs of tiny models of each architecture, see the tests). An
architecture not listed is refused with one line.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from superweight.errors import SuperweightError

GGML_TYPE_F32 = 0
GGML_MAX_DIMS = 4


class _TensorHead(ctypes.Structure):
    """The leading fields of `struct ggml_tensor` (ggml.h): enough for the type and the shape."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * GGML_MAX_DIMS), ("nb", ctypes.c_size_t * GGML_MAX_DIMS)]


@functools.cache
def ggml():
    """libggml-base with the accessors used here typed (loaded by the binding, next to libllama)."""
    from superweight.runtime.llamacpp import llama_cpp

    llama_cpp()
    try:
        from llama_cpp._ggml import libggml
    except (ImportError, OSError) as e:  # a binding without its bundled ggml
        raise SuperweightError(f"llama.cpp's ggml library is not loadable from llama-cpp-python: {e}") from None
    lib = libggml
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    for fn in (lib.ggml_backend_tensor_get, lib.ggml_backend_tensor_set):
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


@dataclass(frozen=True)
class GraphNames:
    """Where detection's numbers are in one architecture's llama.cpp graph (names without `-{layer}`).

    Per layer L the residual stream is h_in (the previous layer's `residual`, or `embedding` for
    layer 0) → `mid` (h_in + the attention branch) → `residual` (mid + the MLP branch). The MLP's
    down projection reads `down_in` [tokens, n_ff] and writes `down_out` [tokens, n_embd] (with its
    bias, before any post-MLP norm; `post_norm`: the MLP branch is that norm of `down_out`).
    """

    embedding: str = "embd"
    mid: str = "ffn_inp"
    down_in: str = "ffn_swiglu"
    down_out: str = "ffn_out"
    residual: str = "l_out"
    post_norm: bool = False  # a norm on the MLP output (its gain: `blk.L.post_ffw_norm.weight`)

    def layer_names(self) -> tuple[str, ...]:
        return (self.mid, self.down_in, self.down_out, self.residual)


_LLAMA = GraphNames()
_GEMMA = GraphNames(embedding="inp_scaled", mid="sa_out", down_in="ffn_geglu", post_norm=True)
GRAPH_NAMES: dict[str, GraphNames] = {
    "llama": _LLAMA,  # also Mistral, SmolLM2 (llama.cpp writes them as llama)
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "olmo2": GraphNames(post_norm=True),
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
}
POST_NORM_TENSOR = "blk.{layer}.post_ffw_norm.weight"
DOWN_TENSOR = "blk.{layer}.ffn_down.weight"


def graph_names(arch: str) -> GraphNames:
    """The graph names of a `general.architecture`; one line for an architecture not mapped."""
    if arch not in GRAPH_NAMES:
        raise SuperweightError(f"the llama.cpp engine does not know the graph of architecture {arch!r} "
                               f"(mapped: {', '.join(sorted(GRAPH_NAMES))}); use --engine torch")
    return GRAPH_NAMES[arch]


def split_name(name: str) -> tuple[str, int | None]:
    """('ffn_out', 11) for 'ffn_out-11'; (name, None) without a layer suffix."""
    base, sep, tail = name.rpartition("-")
    if sep and tail.isdigit():
        return base, int(tail)
    return name, None


def read_tensor(t: int) -> np.ndarray | str:
    """A node's values as float32 [ne1, ne0] (a copy), or the reason it cannot be read."""
    lib = ggml()
    head = _TensorHead.from_address(t)
    if head.type != GGML_TYPE_F32:
        return f"type {head.type} is not F32"
    if any(head.ne[i] != 1 for i in range(2, GGML_MAX_DIMS)):
        return f"shape {list(head.ne)} has more than 2 dimensions"
    if not lib.ggml_is_contiguous(t):
        return "not contiguous"
    out = np.empty((head.ne[1], head.ne[0]), dtype=np.float32)  # [tokens, channels]
    lib.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
    return out


def write_tensor(t: int, values: np.ndarray) -> None:
    """Write float32 values (the shape `read_tensor` gave) back into the node, for later nodes to read."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.nbytes != ggml().ggml_nbytes(t):
        raise SuperweightError(f"cannot write {values.shape} into a node of {ggml().ggml_nbytes(t)} bytes")
    ggml().ggml_backend_tensor_set(t, values.ctypes.data, 0, values.nbytes)


# on_tensor(base, layer, values) -> None, or new values to write back into the node
TensorHandler = Callable[[str, "int | None", np.ndarray], "np.ndarray | None"]


class GraphObserver:
    """An evaluation callback that hands the wanted nodes to `on_tensor` as numpy arrays.

    `wanted(base, layer)` is asked for every node by name (cheap); a wanted node that cannot be
    read as float32 [tokens, channels] is recorded in `skipped` (name → reason) and left alone.
    An exception inside the handler is kept (`error`) and re-raised by `check()` after the pass:
    it cannot cross the C boundary. `callback` is what `LlamaCppModel(eval_callback=...)` takes.
    """

    def __init__(self, wanted: Callable[[str, int | None], bool], on_tensor: TensorHandler):
        from superweight.runtime.llamacpp import llama_cpp

        self.wanted, self.on_tensor = wanted, on_tensor
        self.skipped: dict[str, str] = {}
        self.error: BaseException | None = None
        self.callback = llama_cpp().ggml_backend_sched_eval_callback(self._call)

    def _call(self, t, ask, user_data) -> bool:  # noqa: ARG002 - the C signature
        try:
            name = (ggml().ggml_get_name(t) or b"").decode(errors="replace")
            base, layer = split_name(name)
            if ask:
                return bool(self.wanted(base, layer))
            if self.error is not None or not self.wanted(base, layer):
                return True
            values = read_tensor(t)
            if isinstance(values, str):
                self.skipped[name] = values
                return True
            new = self.on_tensor(base, layer, values)
            if new is not None:
                write_tensor(t, new)
        except BaseException as e:  # noqa: BLE001 - kept, re-raised by check()
            self.error = self.error or e
        return True

    def check(self) -> None:
        """Re-raise what went wrong inside the callback during the last pass, if anything."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error


__all__ = ["GraphNames", "GRAPH_NAMES", "graph_names", "split_name", "read_tensor", "write_tensor",
           "GraphObserver", "DOWN_TENSOR", "POST_NORM_TENSOR"]
