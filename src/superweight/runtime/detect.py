"""Detection inside llama.cpp: any GGUF, memory-mapped, with no conversion and no cache.

The PyTorch engine opens a GGUF by converting it once into a float32 (or bfloat16) safetensors copy,
3.5-7x the file on disk, and runs on dequantized weights. llama.cpp runs the file as it is, and its
evaluation callback (`superweight.runtime.graph`) sees every intermediate tensor — which is all
data-free detection needs: per layer the down projection's input and output and the residual
stream, reduced on the spot to what detection keeps (per-layer maxima, massive entries, the rows
at a spike's position; never whole activations past their own layer).

The same detection runs on those numbers (`superweight.detect.detect_rounds`: the same
thresholds, candidates, origins and records); only the pass differs:
- **weights** are read from the GGUF tensor itself (`gguf.GGUFReader`, memory-mapped): one row of
  a down projection dequantized where a spike needs it; a candidate's column and rank stream
  through its matrix a few MB at a time (no dequantized matrix is ever held);
- **a weight removed** in a later round (or in verification) is removed in the callback: the down
  projection's output channel `row` minus W[row, col] · X[:, col], X being the input llama.cpp just
  computed — the same as zeroing the weight (`tests/runtime` checks it against a GGUF with the
  weight zeroed). With quantized weights llama.cpp multiplies by its own 8-bit quantized copy of
  X, so the removed product differs from the one in the sum by W · (X − q8(X)): a relative
  error of about 1e-2 of that product;
- **a massive activation ablated** (verification) is replaced in the residual stream (`l_out`)
  from its first layer on, by `superweight.interventions`' rule.

llama.cpp computes in float32 with float32 accumulators on the CPU (quantized matmuls: 8-bit
activations), so values agree with the PyTorch engine on the same weights to float32 rounding
(F32 files) or to ~1e-2 relative (quantized files); coordinates agree (tests). The prompt is
tokenized by llama.cpp's own tokenizer (recorded as `tokenizer: llama.cpp`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from superweight.errors import SuperweightError
from superweight.runtime.graph import DOWN_TENSOR, POST_NORM_TENSOR, GraphNames, GraphObserver, graph_names

ENGINE = "llama.cpp"
DEFAULT_CTX = 512


# --- the GGUF's weights, read where needed ------------------------------------------------------

@dataclass
class _TensorInfo:
    name: str
    qtype: object  # gguf.GGMLQuantizationType
    ne: tuple[int, ...]  # ggml order: ne[0] = a row's length
    offset: int  # absolute, in the file
    row_bytes: int

    @property
    def rows(self) -> int:
        return math.prod(self.ne[1:]) if len(self.ne) > 1 else 1


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read_table(path: Path) -> tuple[dict[str, _TensorInfo], dict[str, object]]:
    """(tensors, the scalar/string metadata) of a GGUF v2/v3 file, from its header only.

    `gguf.GGUFReader` builds a numpy view for every piece of metadata — seconds for a 50k-token
    vocabulary — where detection needs a handful of keys and the tensors' places; this walks the
    header with `struct` over the mapped file instead. Any inconsistency raises (the caller then
    lets `read_gguf` word the error, as the torch engine does)."""
    import mmap
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            value = struct.unpack_from("<" + fmt, m, pos)
            pos += struct.calcsize("<" + fmt)
            return value[0]

        def text() -> str:
            nonlocal pos
            n = take("Q")
            if pos + n > len(m):
                raise ValueError("string past the end of the file")
            pos += n
            return m[pos - n:pos].decode("utf-8")

        def value(kind: int):
            nonlocal pos
            if kind in _SCALAR:
                return take(_SCALAR[kind])
            if kind == 8:
                return text()
            if kind == 9:
                sub, count = take("I"), take("Q")
                if sub in _SCALAR:  # skipped whole
                    pos += count * struct.calcsize(_SCALAR[sub])
                else:
                    for _ in range(count):
                        value(sub)
                return None
            raise ValueError(f"unknown metadata type {kind}")

        if take("4s") != b"GGUF" or take("I") < 2:
            raise ValueError("not a GGUF v2/v3 header")
        n_tensors, n_kv = take("Q"), take("Q")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = text()
            v = value(take("I"))
            if v is not None:
                meta[key] = v
        infos = []
        for _ in range(n_tensors):
            name = text()
            ne = tuple(take("Q") for _ in range(take("I")))
            qtype, offset = GGMLQuantizationType(take("I")), take("Q")
            block, size = GGML_QUANT_SIZES[qtype]
            infos.append((name, qtype, ne, offset, ne[0] // block * size))
        align = int(meta.get("general.alignment", 32))
        start = (pos + align - 1) // align * align
        tensors = {}
        for name, qtype, ne, offset, row_bytes in infos:
            info = _TensorInfo(name, qtype, ne, start + offset, row_bytes)
            if info.offset + info.rows * row_bytes > len(m):
                raise ValueError(f"tensor {name!r} past the end of the file")
            tensors[name] = info
        if not tensors:
            raise ValueError("no tensors")
    return tensors, meta


class GgufWeights:
    """The tensors of a GGUF file, memory-mapped, dequantized on demand (`gguf.quants`): one row
    (`row`), or a few MB of rows at a time for a column or a rank (`column`, `rank`), so no whole
    matrix is ever held in float32 (a 70B down projection would be ~1 GB)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.tensors, self.meta = _read_table(self.path)
        except Exception as e:  # a damaged file: word it as the torch engine does
            from superweight.model.gguf import read_gguf

            read_gguf(self.path)
            raise SuperweightError(f"corrupt or truncated GGUF file {str(self.path)!r}: {e}") from e
        self.arch = self.text("general.architecture")
        self._maps: dict[str, np.ndarray] = {}

    def text(self, key: str) -> str:
        if not isinstance(self.meta.get(key), str):
            raise SuperweightError(f"GGUF file {str(self.path)!r} has no {key!r} in its metadata")
        return self.meta[key]

    def tensor(self, name: str) -> _TensorInfo:
        if name not in self.tensors:
            raise SuperweightError(f"GGUF file {str(self.path)!r} has no tensor {name!r}")
        return self.tensors[name]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """(rows, cols) as numpy orders them: ggml's ne reversed ([n_embd, n_ff] for ffn_down)."""
        return tuple(int(n) for n in reversed(self.tensor(name).ne))

    def type_name(self, name: str) -> str:
        return self.tensor(name).qtype.name

    def _rows(self, name: str):
        """(info, the tensor's stored rows as uint8 [rows, row_bytes], mapped, not read)."""
        t = self.tensor(name)
        if name not in self._maps:
            self._maps[name] = np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset,
                                         shape=(t.rows, t.row_bytes))
        return t, self._maps[name]

    def row(self, name: str, r: int) -> np.ndarray:
        """Row `r` dequantized to float32 (a copy; one block row of the file)."""
        from gguf.quants import dequantize

        t, rows = self._rows(name)
        return np.array(dequantize(rows[r:r + 1], t.qtype), dtype=np.float32).reshape(-1)

    def chunks(self, name: str, chunk_bytes: int = 4 << 20):
        """(first row, float32 rows) over the whole tensor, a few MB of the file at a time."""
        from gguf.quants import dequantize

        t, rows = self._rows(name)
        step = max(1, chunk_bytes // max(1, rows.strides[0]))
        for start in range(0, rows.shape[0], step):
            yield start, np.asarray(dequantize(rows[start:start + step], t.qtype), dtype=np.float32)

    def column(self, name: str, col: int) -> np.ndarray:
        return np.concatenate([block[:, col] for _, block in self.chunks(name)]).astype(np.float32)

    def rank(self, name: str, row: int, col: int) -> int:
        """1-based rank of |W[row, col]| among the tensor's entries (as `rank_by_magnitude`)."""
        v = abs(float(self.row(name, row)[col]))
        return 1 + sum(int(np.count_nonzero(np.abs(block) > v)) for _, block in self.chunks(name))

    def matrix(self, name: str) -> np.ndarray:
        """The whole tensor dequantized to float32 [rows, cols] (tests; detection never asks)."""
        return np.concatenate([block for _, block in self.chunks(name)]).reshape(self.shape(name))


@dataclass
class GgufDownProj:
    """A down projection of a GGUF, W[row = output channel, col = input feature] (as `DownProj`)."""

    weights: GgufWeights
    layer: int
    expert: int | None = None

    @property
    def name(self) -> str:
        return DOWN_TENSOR.format(layer=self.layer)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape(self.name)

    def row(self, row: int) -> torch.Tensor:
        return torch.from_numpy(self.weights.row(self.name, row))

    def column(self, col: int) -> torch.Tensor:
        return torch.from_numpy(self.weights.column(self.name, col))

    def rank(self, row: int, col: int) -> int:
        return self.weights.rank(self.name, row, col)

    def matrix(self) -> torch.Tensor:
        return torch.from_numpy(self.weights.matrix(self.name))


class GgufView:
    """What detection asks of a model's layers (`num_layers`, `down_proj`, `norm_gain`), from a GGUF."""

    def __init__(self, weights: GgufWeights, num_layers: int, names: GraphNames):
        self.weights, self.num_layers, self.names = weights, num_layers, names

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise SuperweightError(f"layer {layer} out of range: the model has {self.num_layers} layers")

    def down_proj(self, layer: int, expert: int | None = None) -> GgufDownProj:
        self.check_layer(layer)
        if expert is not None:
            raise SuperweightError("the llama.cpp engine reads dense down projections only (no experts)")
        return GgufDownProj(self.weights, layer)

    def norm_gain(self, layer: int) -> torch.Tensor | None:
        """The post-MLP norm's gain as llama.cpp applies it (Gemma's file stores 1 + w already)."""
        name = POST_NORM_TENSOR.format(layer=layer)
        if not self.names.post_norm or not self.weights.has(name):
            return None
        return torch.from_numpy(self.weights.row(name, 0))


# --- the engine ---------------------------------------------------------------------------------

class LlamaCppEngine:
    """A GGUF opened once in llama.cpp (mmap'd) with an evaluation callback, and its weights view.

    `run(tokens, handler)` evaluates one window; the handler (`wanted(base, layer)`,
    `on_tensor(base, layer, values)`) sees the graph's nodes. Use as a context manager.

    >>> with LlamaCppEngine("model.gguf") as engine:  # doctest: +SKIP
    ...     result = detect_gguf(engine)
    """

    def __init__(self, path, *, n_ctx: int = DEFAULT_CTX, n_threads: int | None = None):
        from superweight.model.gguf import check_magic
        from superweight.runtime.llamacpp import LlamaCppModel

        self.path = Path(path).expanduser()
        check_magic(self.path)
        self.weights = GgufWeights(self.path)
        self.names = graph_names(self.weights.arch)  # an unmapped architecture stops here, cheaply
        self._handler = None
        self.observer = GraphObserver(self._wanted, self._on_tensor)
        self.model = LlamaCppModel(self.path, n_ctx=n_ctx, n_threads=n_threads, repack=False,
                                   eval_callback=self.observer.callback)  # memory: the mapped file only
        self.view = GgufView(self.weights, self.model.n_layer, self.names)
        self._hash: str | None = None

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> "LlamaCppEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wanted(self, base: str, layer: int | None) -> bool:
        return self._handler is not None and self._handler.wanted(base, layer)

    def _on_tensor(self, base: str, layer: int | None, values: np.ndarray):
        return self._handler.on_tensor(base, layer, values)

    def run(self, tokens: Sequence[int], handler=None) -> np.ndarray:
        """Logits [len(tokens), vocab] of one window, `handler` seeing (and editing) the graph."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the callback's reductions are tiny: llama.cpp keeps the cores
        self._handler = handler
        try:
            logits = self.model.logits(tokens)
            self.observer.check()
        finally:
            self._handler = None
            torch.set_num_threads(threads)
        skipped = dict(self.observer.skipped)
        self.observer.skipped.clear()
        missing = [n for n in getattr(handler, "required", ()) if n not in handler.seen]
        if missing or skipped:  # an observation or an edit that did not happen: never a silent result
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "never computed"
            raise SuperweightError(f"llama.cpp's graph of {self.weights.arch!r} lacks what detection "
                                   f"reads ({', '.join(missing[:3]) or 'unreadable nodes'}: {why})")
        return logits

    # --- text ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if not text or not text.strip():
            raise SuperweightError("the prompt is empty")
        ids = self.model.tokenize(text)
        if not ids:
            raise SuperweightError(f"the prompt {text!r} encodes to no tokens")
        if len(ids) > self.model.n_ctx:
            raise SuperweightError(f"the prompt has {len(ids)} tokens, more than the context of {self.model.n_ctx}")
        return ids

    def piece(self, token: int) -> str:
        """The text of one token, as llama.cpp's tokenizer writes it."""
        import ctypes

        lib, vocab = self.model._lib, self.model._vocab
        buf = ctypes.create_string_buffer(256)
        n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    # --- what a result records ---------------------------------------------------------------------
    def weights_hash(self) -> str:
        if self._hash is None:
            from superweight.model.load import _files_hash

            self._hash = _files_hash([self.path])
        return self._hash

    def describe(self) -> dict:
        down = DOWN_TENSOR.format(layer=0)
        dtype = self.weights.type_name(down) if self.weights.has(down) else "?"
        size = self.path.stat().st_size
        return {"ref": str(self.path), "kind": "gguf", "source": str(self.path), "model_id": None,
                "model_type": self.weights.arch, "num_layers": self.view.num_layers, "dtype": dtype,
                "device": "cpu", "engine": ENGINE, "tokenizer": "llama.cpp", "file_bytes": size,
                "memory": {"budget": None, "budget_bytes": None, "budget_source": "mmap",
                           "weights_bytes": size, "offloaded": False, "device_map": None},
                "weights_sha256": self.weights_hash()}


# --- one pass: what the callback keeps ------------------------------------------------------------

@dataclass
class _Edits:
    """Edits applied in the callback: weights removed (keys (layer, row, col, expert)) and massive
    activations ablated ((channel, first_layer, MassiveCriterion) with their log)."""

    pruned: Sequence[tuple] = ()
    ablate: tuple | None = None
    log: object | None = None

    def prune_at(self, layer: int) -> list[tuple[int, int]]:
        return [(k[1], k[2]) for k in self.pruned if k[0] == layer]


class _Pass:
    """The callback's work for one window: apply the edits, and (for detection) feed the per-layer
    maxima (`_DownMaxima`) and the residual probe (`ResidualProbe`) exactly what the PyTorch hooks
    give them, as [tokens, channels] tensors."""

    def __init__(self, engine: LlamaCppEngine, edits: _Edits, layers: Sequence[int] = (),
                 maxima=None, probe=None):
        self.engine, self.names, self.view = engine, engine.names, engine.view
        self.edits, self.layers, self.maxima, self.probe = edits, set(layers), maxima, probe
        self.observing = maxima is not None or probe is not None
        self.pruned_layers = {k[0] for k in edits.pruned}
        self.cur: dict[str, np.ndarray] = {}
        self.h_in: np.ndarray | None = None
        self.seen: set[str] = set()
        n = self.names
        self.required = [f"{b}-{L}" for L in sorted(self.layers) for b in n.layer_names()] if self.observing else []
        self.required += [f"{b}-{L}" for L in sorted(self.pruned_layers) for b in (n.down_in, n.down_out)]
        self.ablate_from = edits.ablate[1] if edits.ablate is not None else None
        if edits.ablate is not None:  # every residual node it edits
            self.required += [n.embedding] if self.ablate_from < 0 else []
            self.required += [f"{n.residual}-{L}" for L in range(max(self.ablate_from, 0), self.view.num_layers)]
        self.bases = ({n.embedding, *n.layer_names()} if self.observing
                      else {n.down_in, n.down_out} if edits.pruned else set())
        if edits.ablate is not None:
            self.bases |= {n.embedding, n.residual}

    def wanted(self, base: str, layer: int | None) -> bool:
        if base not in self.bases:
            return False
        if base == self.names.embedding:
            return layer is None
        if layer is None:
            return False
        if self.observing:
            return True
        if base in (self.names.down_in, self.names.down_out):
            return layer in self.pruned_layers
        return True  # the residual, for an ablation

    def on_tensor(self, base: str, layer: int | None, values: np.ndarray):
        n = self.names
        self.seen.add(base if layer is None else f"{base}-{layer}")
        changed = False
        if base == n.embedding:
            changed = self._ablate(-1, values)
            self.h_in = values
            if self.probe is not None and 0 in self.layers:
                self.probe._on_input(0, torch.from_numpy(values))
        elif base == n.mid:
            self.cur["mid"] = values
        elif base == n.down_in:
            self.cur["x"] = values
        elif base == n.down_out:
            changed = self._prune(layer, values)
            self._on_down(layer, values)
        elif base == n.residual:
            changed = self._ablate(layer, values)
            self._on_residual(layer, values)
        return values if changed else None

    # --- edits ---------------------------------------------------------------------------------
    def _prune(self, layer: int, y: np.ndarray) -> bool:
        """Remove W[row, col]'s product from the output: y[:, row] -= W[row, col] · x[:, col]."""
        cells = self.edits.prune_at(layer)
        if not cells:
            return False
        x = self.cur.get("x")
        if x is None:
            raise SuperweightError(f"llama.cpp's graph gave no down projection input at layer {layer}")
        proj = self.view.down_proj(layer)
        for row, col in cells:
            w = float(proj.row(row)[col])
            y[:, row] -= np.float32(w) * x[:, col]
        return True

    def _ablate(self, layer: int, h: np.ndarray) -> bool:
        if self.edits.ablate is None or layer < self.ablate_from:
            return False
        from superweight.interventions import _typical_fill

        channel, _, criterion = self.edits.ablate
        t = torch.from_numpy(h)
        out = _typical_fill(t, channel, criterion, self.edits.log)
        if out is t:
            return False
        h[...] = out.numpy()
        return True

    # --- observation ----------------------------------------------------------------------------
    def _on_down(self, layer: int, y: np.ndarray) -> None:
        self.cur["raw"] = y
        if not self.observing or layer not in self.layers:
            return
        x = torch.from_numpy(self.cur["x"])
        yt = torch.from_numpy(y)
        proj = self.view.down_proj(layer)
        positions = torch.arange(y.shape[0])
        if self.maxima is not None:
            self.maxima.on_down(proj, x, yt, positions)
        if self.probe is not None:
            self.probe.on_down(proj, x, yt, positions)

    def _on_residual(self, layer: int, h: np.ndarray) -> None:
        h_in, self.h_in = self.h_in, h
        cur, self.cur = self.cur, {}
        if not self.observing or layer not in self.layers:
            if self.probe is not None and layer + 1 in self.layers:
                self.probe._on_input(layer + 1, torch.from_numpy(h))
            return
        mid = cur.get("mid")
        mlp = torch.from_numpy(h - mid) if mid is not None else None
        if self.maxima is not None and self.names.post_norm and mlp is not None:
            self.maxima.on_norm(layer, mlp)
        if self.probe is not None:
            if mid is not None and h_in is not None:
                self.probe._on_attention(layer, torch.from_numpy(mid - h_in))
            if mlp is not None:
                self.probe._on_mlp(layer, torch.from_numpy(cur["raw"]), mlp)
            self.probe._on_output(layer, torch.from_numpy(h))
            if layer + 1 in self.layers:
                self.probe._on_input(layer + 1, torch.from_numpy(h))


# --- detection -------------------------------------------------------------------------------------

def detect_gguf(engine: LlamaCppEngine, prompts: str | Sequence[str] | None = None, config=None, on_event=None):
    """`superweight.detect.detect` run by llama.cpp: the same records, thresholds and rounds.

    >>> with LlamaCppEngine(alias_gguf("smollm2-135m")) as engine:  # doctest: +SKIP
    ...     [sw.coord for sw in detect_gguf(engine).early]
    [(11, 507, 1229), (11, 507, 1487)]
    """
    from superweight.detect import DEFAULT_PROMPT, DetectConfig, over_prompts

    config = config or DetectConfig()
    return over_prompts(lambda p: _detect_prompt(engine, p, config),
                        DEFAULT_PROMPT if prompts is None else prompts, on_event)


def _detect_prompt(engine: LlamaCppEngine, prompt: str, config):
    from superweight.detect import _DownMaxima, detect_rounds

    ids = engine.encode(prompt)
    tokens = [engine.piece(t) for t in ids]
    layers = list(range(engine.view.num_layers)) if config.layers is None else list(config.layers)
    for layer in layers:
        engine.view.check_layer(layer)

    def run_pass(pruned, probe):
        if probe is not None and engine.names.post_norm:
            probe._normed = set(layers)  # the MLP branch is the post-MLP norm of the down output
        maxima = _DownMaxima(config.spikes_per_layer, config.min_output)
        engine.run(ids, _Pass(engine, _Edits(pruned=list(pruned)), layers, maxima, probe))
        return maxima.stats()

    return detect_rounds(engine.view, run_pass, prompt, tokens, layers, config)


def trace_gguf(engine: LlamaCppEngine, prompt: str, config=None, detection=None):
    """`superweight.activations.trace` run by llama.cpp: the residual stream per layer, as it is
    and with the weights that make the traced massive activation removed (in the callback)."""
    from superweight.activations import trace_with
    from superweight.detect import DetectConfig
    from superweight.massive import ResidualProbe

    if detection is not None and list(dict.fromkeys(detection.prompts)) != [prompt]:
        raise SuperweightError("trace follows one prompt: the detection given was made on "
                               f"{len(set(detection.prompts))} prompt(s), not on {prompt!r}")
    config = config or (detection.config if detection else DetectConfig())
    detection = detection or detect_gguf(engine, prompt, config)
    ids = engine.encode(prompt)
    layers = list(range(engine.view.num_layers)) if config.layers is None else list(config.layers)

    def scan(pruned, at):
        probe = ResidualProbe(engine.view, layers, config.criterion, explain=False, watch=at)
        engine.run(ids, _Pass(engine, _Edits(pruned=list(pruned)), layers, None, probe))
        return probe.rows

    return trace_with(scan, detection, prompt, [engine.piece(t) for t in ids])


def trace_gguf_prompts(path, prompts, config=None, *, ref: str | None = None, model_id: str | None = None,
                       n_threads: int | None = None, choice: "EngineChoice | None" = None):
    """`superweight.activations.trace_prompts` run by llama.cpp on GGUF `path`: a `TraceRun` whose
    `model` is the engine's description of the file (with `ref` as the user gave it and `model_id`)."""
    from superweight.activations import TraceRun
    from superweight.detect import DetectConfig, engine_record

    config = config or DetectConfig()
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    with LlamaCppEngine(path, n_threads=n_threads) as engine:
        traces = [trace_gguf(engine, p, config) for p in prompts]
        model = {**engine.describe(), "ref": ref or str(path), "model_id": model_id}
    return TraceRun(traces, model, engine_record(choice or {"engine": ENGINE, "gguf": str(path)}), config)


# --- perplexity and verification -------------------------------------------------------------------

def window_nll(engine: LlamaCppEngine, ids: Sequence[int], edits: _Edits | None = None) -> tuple[float, int]:
    """(sum of -log p(next token), tokens scored) of one window, every position after the first
    scored (as `superweight.verify.text_perplexity` scores its window)."""
    logits = engine.run(ids, _Pass(engine, edits) if edits is not None else None)  # [n, vocab]
    x = torch.from_numpy(logits[:-1]).double()
    target = torch.tensor(list(ids[1:]))
    nll = torch.nn.functional.cross_entropy(x, target, reduction="sum")
    return float(nll), len(ids) - 1


class LlamaCppScorer:
    """The perplexity of one window of text in llama.cpp, with weights removed or a massive
    activation ablated in the callback (what `superweight.verify` needs of a model)."""

    def __init__(self, engine: LlamaCppEngine, text: str, max_tokens: int):
        self.engine = engine
        ids = engine.model.tokenize(text)[:min(max_tokens, engine.model.n_ctx)]
        if len(ids) < 2:
            raise SuperweightError("the verification text is too short (fewer than 2 tokens)")
        self.ids = ids

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def ppl(self, pruned: Sequence = (), ablate: tuple | None = None, log=None) -> float:
        keys = [getattr(k, "key", k) for k in pruned]
        nll, n = window_nll(self.engine, self.ids, _Edits(keys, ablate, log))
        return math.exp(nll / n)


def verify_gguf(engine: LlamaCppEngine, super_weights, *, text: str | None = None, threshold: float,
                massive=(), criterion=None, max_tokens: int | None = None, matters: float | None = None,
                on_event=None):
    """`superweight.verify.verify` with llama.cpp computing the perplexities (same rules, same text)."""
    from superweight.massive import MassiveCriterion
    from superweight.verify import VERIFY_TOKENS, verify_with

    return verify_with(lambda t, n: LlamaCppScorer(engine, t, n), super_weights, text=text,
                       max_tokens=max_tokens or VERIFY_TOKENS, threshold=threshold, massive=massive,
                       criterion=criterion or MassiveCriterion(), matters=matters, on_event=on_event)


# --- what `superweight detect --engine llama.cpp` runs ------------------------------------------------

@dataclass
class EngineRun:
    """How a run was made: the engine, its tokenizer, the file, and time spent."""

    engine: str
    tokenizer: str
    n_ctx: int
    seconds: float
    conversion_cache: bool = False  # a converted copy is never read nor written by this engine

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_detection_gguf(path, prompts=None, config=None, *, verify_threshold: float | None = None,
                       model_id: str | None = None, text: str | None = None, n_ctx: int = DEFAULT_CTX,
                       n_threads: int | None = None, matters_threshold: float | None = None,
                       ref: str | None = None, choice: "EngineChoice | None" = None, on_event=None):
    """The `DetectionRun` of `superweight detect FILE --engine llama.cpp`: its `model` is the engine's
    description of the file (with `ref`, the reference as the user gave it, and `model_id`), its
    `engine` the `choice` that picked llama.cpp with this run's `EngineRun`."""
    from superweight import catalog
    from superweight.detect import DetectConfig, DetectionRun, engine_record

    config = config or DetectConfig()
    start = time.perf_counter()
    with LlamaCppEngine(path, n_ctx=n_ctx, n_threads=n_threads) as engine:
        result = detect_gguf(engine, prompts, config, on_event)
        verification = None
        if verify_threshold is not None:
            verification = verify_gguf(engine, result.super_weights, text=text, threshold=verify_threshold,
                                       massive=result.massive, criterion=config.criterion,
                                       matters=matters_threshold, on_event=on_event)
        model = engine.describe()
    model["model_id"] = model_id
    if ref is not None:
        model["ref"] = ref
    info = EngineRun(ENGINE, "llama.cpp", n_ctx, time.perf_counter() - start)
    return DetectionRun(result, verification, catalog.compare(model_id, result.early), model=model,
                        engine=engine_record(choice or {"gguf": str(path)}, **info.to_dict()))


__all__ = ["ENGINE", "GgufWeights", "GgufView", "GgufDownProj", "LlamaCppEngine", "detect_gguf", "trace_gguf",
           "window_nll", "LlamaCppScorer", "verify_gguf", "run_detection_gguf", "EngineRun", "trace_gguf_prompts",
           "check_gguf_copy"]


# --- choosing the engine ---------------------------------------------------------------------------

ENGINES = ("auto", "torch", ENGINE)


@dataclass
class EngineChoice:
    """Which engine runs a command on a model reference, and why (recorded in every result)."""

    engine: str  # "torch" | "llama.cpp"
    reason: str
    gguf: Path | None = None  # the file llama.cpp opens
    model_id: str | None = None  # the exact hub id of an alias, for the catalog

    def to_dict(self) -> dict:
        return {"engine": self.engine, "reason": self.reason, "gguf": str(self.gguf) if self.gguf else None}


def gguf_of(ref: str) -> tuple[Path | None, str | None]:
    """(the GGUF file a reference names — a built-in alias's or a `.gguf` path — and the alias's hub
    id), or (None, None) for any other reference."""
    from superweight.model.load import ALIASES, alias_gguf

    if ref in ALIASES:
        return alias_gguf(ref), ALIASES[ref].hub_id
    if ref.lower().endswith(".gguf"):
        return Path(ref).expanduser(), None
    return None, None


def conversion_bytes(path: Path, cache_dtype: str = "float32") -> int:
    """What the converted copy of a GGUF takes on disk: every tensor's elements at the cache dtype."""
    size = 2 if cache_dtype == "bfloat16" else 4
    return sum(math.prod(t.ne) * size for t in GgufWeights(path).tensors.values())


def choose_engine(ref: str, requested: str = "auto", *, no_cache: bool = False, cache_dtype: str = "float32",
                  torch_only: Sequence[str] = ()) -> EngineChoice:
    """The engine for `ref`: `requested` unless "auto".

    auto: a `.gguf` file runs in llama.cpp (mmap'd, no conversion) when the binding is installed
    and its architecture's graph is mapped — the conversion cache would not fit, or no cache is
    asked (`no_cache`), or simply because it is faster there (measured: docs/detect-llamacpp.md,
    first and cached runs alike) — unless an option only the PyTorch engine has is set
    (`torch_only`: e.g. a memory budget, a device, a cache dtype). Anything else (hub ids, local
    folders, built-in aliases) runs in PyTorch as before; `--engine llama.cpp` runs an alias's GGUF.
    """
    if requested not in ENGINES:
        raise SuperweightError(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES)}")
    if requested == "torch":
        if no_cache:
            raise SuperweightError("--no-cache needs the llama.cpp engine (the torch engine reads a converted copy)")
        return EngineChoice("torch", "asked (--engine torch)")
    is_file = ref.lower().endswith(".gguf")
    if requested == ENGINE or (requested == "auto" and no_cache):
        path, model_id = gguf_of(ref)
        if path is None:
            raise SuperweightError(f"the llama.cpp engine runs a .gguf file or a built-in alias; {ref!r} is neither")
        if torch_only:
            raise SuperweightError(f"{', '.join(torch_only)} apply to the torch engine only, not to llama.cpp")
        return EngineChoice(ENGINE, "asked (--engine llama.cpp)" if requested == ENGINE else "no cache asked (--no-cache)",
                            path, model_id)
    if not is_file:
        return EngineChoice("torch", "not a .gguf file")
    if torch_only:
        return EngineChoice("torch", f"{', '.join(torch_only)} given (torch engine options)")
    return _auto_gguf(Path(ref).expanduser(), cache_dtype)


def _auto_gguf(path: Path, cache_dtype: str) -> EngineChoice:
    import shutil

    from superweight._io import cache_dir
    from superweight.model import gguf
    from superweight.model.load import gguf_cache_entry

    gguf.check_magic(path)  # a bad file: the same one-line errors as the torch engine gives
    try:
        import llama_cpp  # noqa: F401 - only whether the optional binding is there
    except ImportError:
        return EngineChoice("torch", "llama-cpp-python is not installed")
    from superweight.runtime.graph import GRAPH_NAMES

    arch = GgufWeights(path).arch

    if arch not in GRAPH_NAMES:
        return EngineChoice("torch", f"llama.cpp graph of architecture {arch!r} not mapped")
    if (gguf_cache_entry(path, cache_dtype) / gguf.SOURCE_FILE).is_file():
        return EngineChoice(ENGINE, "faster than the cached conversion (measured: docs/detect-llamacpp.md)", path)
    need = conversion_bytes(path, cache_dtype)
    where = cache_dir("models")
    free = shutil.disk_usage(where).free
    if need + gguf.SPARE_BYTES > free:
        return EngineChoice(ENGINE, f"the conversion cache would need {need / 1e9:.1f} GB and "
                                    f"{free / 1e9:.1f} GB is free", path)
    return EngineChoice(ENGINE, f"no conversion ({need / 1e9:.2f} GB cache avoided) and faster "
                                "(measured: docs/detect-llamacpp.md)", path)


# --- check: the other copy is a GGUF, run as it is --------------------------------------------------

class _ChannelMaxima:
    """Callback handler: per (layer, row, col) the signed largest down projection output on channel
    `row` and input on feature `col` (what `superweight.quantize.check.channel_activations` keeps)."""

    def __init__(self, names: GraphNames, coords: Sequence):
        self.names = names
        self.coords = {(s.layer, s.row, s.col, s.expert) for s in coords}
        self.layers = {k[0] for k in self.coords}
        self.out: dict = {}

    def wanted(self, base: str, layer: int | None) -> bool:
        return layer in self.layers and base in (self.names.down_in, self.names.down_out)

    def _keep(self, key, column: np.ndarray) -> None:
        v = float(column[np.abs(column).argmax()]) if column.size else 0.0
        if key not in self.out or abs(v) > abs(self.out[key]):
            self.out[key] = v

    def on_tensor(self, base: str, layer: int | None, values: np.ndarray):
        for lay, row, col, expert in self.coords:
            if lay != layer:
                continue
            if base == self.names.down_out:
                self._keep(("out", lay, row, expert), values[:, row])
            else:
                self._keep(("in", lay, col, expert), values[:, col])
        return None


def check_gguf_copy(original, path, super_weights=None, prompt: str | None = None, *, ref: str | None = None,
                    n_threads: int | None = None, choice: "EngineChoice | None" = None):
    """`check_against_gguf` on GGUF `path`, recorded as a `superweight.quantize.check.CheckResult`
    (`super_weights`: a `Selection`, records, or None: detected in `original`; `ref`: the file as the
    user named it)."""
    from superweight.detect import engine_record
    from superweight.quantize.check import CheckResult
    from superweight.selection import DETECTION, as_selection

    selection = as_selection(super_weights) if super_weights is not None else None
    with LlamaCppEngine(path, n_threads=n_threads) as engine:
        rows = check_against_gguf(original, engine, selection.super_weights if selection else None, prompt)
        other = {**engine.describe(), "ref": ref or str(path)}
    return CheckResult(original.describe(), other, rows, engine_record(choice or {"engine": ENGINE, "gguf": str(path)}),
                       selection.source if selection else DETECTION)


def check_against_gguf(original, engine: LlamaCppEngine, super_weights=None, prompt: str | None = None):
    """`superweight.quantize.check.check_models` with the other copy a GGUF run by llama.cpp: the
    same token ids (the original's tokenizer) fed to it, its weights read from the file."""
    from superweight.detect import DEFAULT_PROMPT, encode, find_super_weights
    from superweight.quantize.check import channel_activations, check_row

    view = original.view
    if view.num_layers != engine.view.num_layers:
        raise SuperweightError(f"different depths: {view.num_layers} vs {engine.view.num_layers} layers")
    for layer in range(view.num_layers):
        a, b = tuple(view.down_proj(layer).shape), engine.view.down_proj(layer).shape
        if a != b:
            raise SuperweightError(f"different shapes: layer {layer}'s down projection is {a} vs {b}")
    prompt = prompt or DEFAULT_PROMPT
    sws = list(super_weights) if super_weights is not None else find_super_weights(original, prompt)
    if not sws:
        raise SuperweightError("detection found no super weight in the original model")
    if any(s.expert is not None for s in sws):
        raise SuperweightError("the llama.cpp engine reads dense down projections only (no experts)")
    ids = encode(original, prompt)
    if int(ids.max()) >= engine.model.n_vocab:
        raise SuperweightError(f"the original's tokenizer gives token {int(ids.max())}; the GGUF's vocabulary "
                               f"has {engine.model.n_vocab} tokens")
    act_a = channel_activations(original, ids, sws)
    handler = _ChannelMaxima(engine.names, sws)
    engine.run(ids[0].tolist(), handler)
    act_b = handler.out
    rows = []
    for sw in sws:
        a = view.down_proj(sw.layer, sw.expert).value(sw.row, sw.col)
        b = float(engine.view.down_proj(sw.layer).row(sw.row)[sw.col])
        rows.append(check_row(sw, a, b, act_a, act_b))
    return rows
