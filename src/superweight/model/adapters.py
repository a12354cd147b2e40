"""Architecture knowledge, declared as data: the only place that knows module paths.

Every other module asks an `Adapter` for the decoder layers, each layer's MLP down projection(s)
read as `W[row=output channel, col=input channel]`, and any norm applied to the MLP output before
the residual add. Adding an architecture means adding one `Adapter(...)` entry to `ADAPTERS`.
The adapter also names the two branches each layer adds to the residual stream — the attention
module (and any norm on its output) and the MLP module (and any norm on its output) — so that a
massive activation's increment can be split into the attention part and the MLP part.
The adapter also says which projections produce the down projection's input features (gate/up,
fc1, fused gate_up, expert gate_up), how a fused experts module computes an expert's input
(`experts_act`: act(gate)·up from its fused gate_up), where a mixture-of-experts router is, and which
linears read the residual stream (`residual_readers`: where a super activation enters later layers).
`superweight.testing` uses that to plant super weights in tiny models, hooks use it to see inside
fused experts, and W8A8 uses it to protect super activations, all with no per-architecture code.

| layout    | module                        | stored weight     | W[row, col] is            |
|-----------|-------------------------------|-------------------|---------------------------|
| "linear"  | nn.Linear                     | [out, in]         | weight                    |
| "conv1d"  | GPT-2 Conv1D                  | [in, out]         | weight.T (a view)         |
| "experts" | fused MoE experts (3-D param) | [experts, out, in]| param[expert] (a view)    |
| "experts_t" | fused, transposed (gpt-oss)   | [experts, in, out]| param[expert].T (a view)  |

Mixture-of-experts models come in two storages and both are read here: fused experts (transformers
5: one 3-D parameter per projection in `mlp.experts`) and unfused ones (an `nn.ModuleList` of small
MLPs, as remote-code checkpoints such as DeepSeek's keep them: `mlp.experts[e].down_proj`). Which one
a layer has is seen from the module at the adapter's `down_proj` path; a MoE model's dense layers
(DeepSeek-V3's first layers, Qwen-MoE's `mlp_only_layers`) use `dense_down_proj` instead.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.offload import read_param
from superweight.records import SuperWeight

LAYOUTS = ("linear", "conv1d", "experts", "experts_t")
EXPERT_LAYOUTS = ("experts", "experts_t")


@dataclass(frozen=True)
class UpProj:
    """A projection that produces the down projection's input features (gate, up, fc1, ...).

    `path` is from one decoder layer; `layout` is read like the down projection's (linear: weight
    [out, in]; conv1d: [in, out]; experts: a 3-D parameter [experts, out, in]). A fused projection
    (`chunks` > 1, e.g. Phi-3's gate_up_proj, split with `.chunk(chunks)`) holds intermediate feature
    `c` at output rows `c, I + c, ...` where I is the intermediate size (`interleaved`: at rows
    `chunks·c, chunks·c + 1, ...`).
    """

    path: str
    layout: str = "linear"
    param: str = "weight"
    chunks: int = 1
    interleaved: bool = False  # fused chunks stored interleaved (gpt-oss: gate at 2c, up at 2c + 1)
    bias: str | None = None  # experts layouts: the 2-D bias parameter [experts, out], if any

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.chunks < 1:
            raise ValueError(f"chunks must be at least 1, got {self.chunks}")


GATED = (UpProj("mlp.gate_proj"), UpProj("mlp.up_proj"))  # Llama-style: act(gate(x)) * up(x)

# What each decoder linear does, as (kind, glob on its path inside one decoder layer); first match wins.
# Fine-tuning chooses modules by kind (SMT's "which kinds may be chosen", LoRA's targets).
LLAMA_KINDS = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
               ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
               ("down", "mlp.down_proj"))
FUSED_EXPERTS = (UpProj("mlp.experts", layout="experts", param="gate_up_proj", chunks=2),)
UNFUSED_EXPERT = ("gate_proj", "up_proj")  # inside one expert of an nn.ModuleList of experts
MOE_KINDS = LLAMA_KINDS + (("gate", "mlp.experts.*.gate_proj"), ("up", "mlp.experts.*.up_proj"),
                           ("down", "mlp.experts.*.down_proj"))

# Linears (paths from one decoder layer) whose input is the residual stream, normalised or not: a
# super activation created in an earlier layer reaches the later layers through exactly these.
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
LLAMA_READERS = QKV + ("mlp.gate_proj", "mlp.up_proj")


@dataclass
class FeatureRow:
    """The weights that produce one intermediate feature in one projection, as views.

    `weight` is [hidden] (the row of W_up that makes the feature), `bias` a 1-element view or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    name: str
    module: nn.Module  # the module whose forward input is the MLP input
    index: int = -1  # the feature's row in the module's W[out, in] (fused: j·I + feature)


@dataclass(frozen=True)
class Adapter:
    """Where a family of models keeps the pieces super weight analysis needs.

    Paths are dotted attribute paths: `layers` from the model root, the others from one decoder layer.
    """

    model_types: tuple[str, ...]
    layers: str = "model.layers"
    down_proj: str = "mlp.down_proj"
    layout: str = "linear"
    post_mlp_norm: str | None = None  # norm applied to the MLP output before the residual add
    norm_gain_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    shared_down_proj: str | None = None  # a dense shared expert beside routed ones (Qwen2-MoE)
    expert_param: str = "down_proj"  # for layout "experts": the 3-D down projection parameter
    notes: str = ""
    up_projs: tuple[UpProj, ...] = GATED  # what produces the down projection's input features
    shared_up_projs: tuple[UpProj, ...] = ()  # ... of the shared expert (Qwen2-MoE)
    router: str | None = None  # MoE router: a module whose `weight` [experts, hidden] scores experts
    # The two branches a decoder layer adds to the residual stream (sequentially or in parallel):
    attention: str = "self_attn"  # the attention module; its output is the attention branch ...
    post_attn_norm: str | None = None  # ... unless a norm on that output comes before the add (Gemma 2/3, OLMo 2)
    attn_out: str = "self_attn.o_proj"  # the attention's output projection (planting in tests)
    mlp: str | None = "mlp"  # the MLP module (None: the down projection's output is the MLP branch)
    residual_readers: tuple[str, ...] = LLAMA_READERS  # modules whose input is the residual stream
    experts_act: str | None = None  # fused experts: attribute of the experts module holding act()
    linear_kinds: tuple[tuple[str, str], ...] = LLAMA_KINDS  # (kind, glob inside a layer)
    # --- mixtures of experts (layout "experts" / "experts_t") ---
    experts_gate: str | None = None  # experts' method mapping the whole gate_up output to the down
    # projection's input (gpt-oss's clamped, interleaved `_apply_gate`); else act(gate)·up of the halves
    expert_bias: str | None = None  # the experts' down projection bias [experts, hidden] (gpt-oss)
    dense_down_proj: str | None = None  # the MLP of a MoE model's dense layers (DeepSeek-V3's first ones)
    dense_up_projs: tuple[UpProj, ...] = GATED  # ... and what feeds it
    shared_gate: str | None = None  # a gate scaling the shared expert's output (Qwen2-MoE's sigmoid gate)
    expert_down: str = "down_proj"  # unfused experts (an nn.ModuleList): each expert's down projection
    expert_ups: tuple[str, ...] = UNFUSED_EXPERT  # ... and what feeds it, act(gate)·up

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout in EXPERT_LAYOUTS and not (self.experts_act or self.experts_gate):
            raise ValueError("a fused experts adapter must name the experts' activation (experts_act)")

    @property
    def is_moe(self) -> bool:
        return self.layout in EXPERT_LAYOUTS

    def kind_of(self, path: str) -> str:
        """The kind ("q", "v", "down", ...) of a decoder linear at `path` inside one layer, or "other"."""
        return next((k for k, glob in self.linear_kinds if fnmatch.fnmatchcase(path, glob)), "other")


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(("llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "cohere", "stablelm")),
    Adapter(("phi3",), notes="fused gate_up_proj; down_proj is a plain Linear",
            up_projs=(UpProj("mlp.gate_up_proj", chunks=2),),
            residual_readers=("self_attn.qkv_proj", "mlp.gate_up_proj"),
            linear_kinds=(("qkv", "self_attn.qkv_proj"), ("o", "self_attn.o_proj"),
                          ("gate_up", "mlp.gate_up_proj"), ("down", "mlp.down_proj"))),
    Adapter(("olmo",)),
    Adapter(("olmo2", "olmo3"), post_mlp_norm="post_feedforward_layernorm",
            post_attn_norm="post_attention_layernorm"),
    Adapter(("gemma",)),
    Adapter(("gemma2", "gemma3_text"), post_mlp_norm="post_feedforward_layernorm", norm_gain_offset=1.0,
            post_attn_norm="post_attention_layernorm"),
    Adapter(("gpt2",), layers="transformer.h", down_proj="mlp.c_proj", layout="conv1d",
            up_projs=(UpProj("mlp.c_fc", layout="conv1d"),), attention="attn", attn_out="attn.c_proj",
            residual_readers=("attn.c_attn", "mlp.c_fc"),
            linear_kinds=(("qkv", "attn.c_attn"), ("o", "attn.c_proj"), ("up", "mlp.c_fc"),
                          ("down", "mlp.c_proj"))),
    Adapter(("gpt_neox",), layers="gpt_neox.layers", down_proj="mlp.dense_4h_to_h",
            up_projs=(UpProj("mlp.dense_h_to_4h"),), attention="attention", attn_out="attention.dense",
            residual_readers=("attention.query_key_value", "mlp.dense_h_to_4h"),
            linear_kinds=(("qkv", "attention.query_key_value"), ("o", "attention.dense"),
                          ("up", "mlp.dense_h_to_4h"), ("down", "mlp.dense_4h_to_h")),
            notes="attention and MLP added in parallel (use_parallel_residual)"),
    Adapter(("opt",), layers="model.decoder.layers", down_proj="fc2", up_projs=(UpProj("fc1"),),
            attn_out="self_attn.out_proj", mlp=None, residual_readers=QKV + ("fc1",),
            linear_kinds=(("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                          ("o", "self_attn.out_proj"), ("up", "fc1"), ("down", "fc2")),
            notes="fc1/fc2 sit in the layer: no MLP module"),
    Adapter(("mixtral",), down_proj="mlp.experts", layout="experts", up_projs=FUSED_EXPERTS,
            router="mlp.gate", experts_act="act_fn", residual_readers=QKV + ("mlp.gate", "mlp.experts"),
            linear_kinds=MOE_KINDS),
    Adapter(("qwen2_moe",), down_proj="mlp.experts", layout="experts",
            shared_down_proj="mlp.shared_expert.down_proj", up_projs=FUSED_EXPERTS,
            shared_up_projs=(UpProj("mlp.shared_expert.gate_proj"),
                             UpProj("mlp.shared_expert.up_proj")),
            router="mlp.gate", experts_act="act_fn", shared_gate="mlp.shared_expert_gate",
            dense_down_proj="mlp.down_proj",
            residual_readers=QKV + ("mlp.gate", "mlp.experts", "mlp.shared_expert.gate_proj",
                                    "mlp.shared_expert.up_proj", "mlp.shared_expert_gate",
                                    "mlp.gate_proj", "mlp.up_proj"),
            linear_kinds=MOE_KINDS + (("gate", "mlp.shared_expert.gate_proj"),
                                      ("up", "mlp.shared_expert.up_proj"),
                                      ("down", "mlp.shared_expert.down_proj"),
                                      ("router", "mlp.shared_expert_gate"))),
    Adapter(("qwen3_moe", "olmoe"), down_proj="mlp.experts", layout="experts", up_projs=FUSED_EXPERTS,
            router="mlp.gate", experts_act="act_fn", dense_down_proj="mlp.down_proj",
            residual_readers=QKV + ("mlp.gate", "mlp.experts", "mlp.gate_proj", "mlp.up_proj"),
            linear_kinds=MOE_KINDS,
            notes="Qwen3-MoE's mlp_only_layers / decoder_sparse_step give dense layers"),
    Adapter(("deepseek_v3",), down_proj="mlp.experts", layout="experts", up_projs=FUSED_EXPERTS,
            shared_down_proj="mlp.shared_experts.down_proj",
            shared_up_projs=(UpProj("mlp.shared_experts.gate_proj"), UpProj("mlp.shared_experts.up_proj")),
            router="mlp.gate", experts_act="act_fn", dense_down_proj="mlp.down_proj",
            residual_readers=("self_attn.q_proj", "self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa",
                              "mlp.gate", "mlp.experts", "mlp.shared_experts.gate_proj",
                              "mlp.shared_experts.up_proj", "mlp.gate_proj", "mlp.up_proj"),
            linear_kinds=(("q", "self_attn.q_proj"), ("q_a", "self_attn.q_a_proj"),
                          ("q_b", "self_attn.q_b_proj"), ("kv_a", "self_attn.kv_a_proj_with_mqa"),
                          ("kv_b", "self_attn.kv_b_proj"), ("o", "self_attn.o_proj"),
                          ("gate", "mlp.shared_experts.gate_proj"), ("up", "mlp.shared_experts.up_proj"),
                          ("down", "mlp.shared_experts.down_proj"), *MOE_KINDS[4:]),
            notes="multi-head latent attention; the first first_k_dense_replace layers are dense; "
                  "a shared expert beside the routed ones (sigmoid, grouped top-k router)"),
    Adapter(("gpt_oss",), down_proj="mlp.experts", layout="experts_t",
            up_projs=(UpProj("mlp.experts", layout="experts_t", param="gate_up_proj", chunks=2,
                             interleaved=True, bias="gate_up_proj_bias"),),
            router="mlp.router", experts_gate="_apply_gate", expert_bias="down_proj_bias",
            residual_readers=QKV + ("mlp.router", "mlp.experts"),
            notes="experts stored transposed [experts, in, out] with biases; clamped SwiGLU on "
                  "interleaved gate/up; attention sinks"),
)

HOW_TO_ADD = (
    "add an Adapter(...) entry for it to superweight/model/adapters.py, or try it anyway with "
    "--layers PATH --down-proj PATH (e.g. --layers model.layers --down-proj mlp.down_proj)"
)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D: a linear layer that stores its weight as [in, out]."""
    return type(module).__name__ == "Conv1D"


def linear_matrix(module: nn.Module) -> torch.Tensor:
    """W[out, in] of a decoder linear layer: nn.Linear's weight, or Conv1D's transposed (a view;
    a copy when the layer is offloaded)."""
    w = read_param(module, "weight")
    return w.T if is_conv1d(module) else w


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a decoder linear layer, without reading its weights."""
    rows, cols = module.weight.shape
    return (cols, rows) if is_conv1d(module) else (rows, cols)


def known_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str, layers: str | None = None, down_proj: str | None = None) -> Adapter:
    """The adapter for a `config.model_type`, with optional path overrides for unknown ones."""
    base = next((a for a in ADAPTERS if model_type in a.model_types), None)
    if base is None:
        if not (layers and down_proj):
            raise SuperweightError(
                f"unsupported architecture {model_type!r} (known: {', '.join(known_model_types())}); "
                + HOW_TO_ADD)
        return Adapter((model_type,), layers=layers, down_proj=down_proj, residual_readers=())
    if layers or down_proj:
        return replace(base, layers=layers or base.layers, down_proj=down_proj or base.down_proj)
    return base


def get_path(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise SuperweightError(f"module path {path!r} not found in {type(root).__name__} (no {part!r})")
        obj = getattr(obj, part)
    return obj


@dataclass
class DownProj:
    """One down projection: `matrix()` is W[row=out, col=in], a view sharing the module's storage
    (for an offloaded layer, a copy of the offloaded values: edit through `index` and
    `superweight.model.offload.Overrides`, as `superweight.interventions` does)."""

    layer: int
    module: nn.Module
    layout: str
    expert: int | None = None
    param: str = "weight"
    shared: bool = False
    _name: str = field(default="", repr=False)
    bias_param: str | None = None  # a bias added to this projection's output (experts: [experts, out])

    def matrix(self) -> torch.Tensor:
        w = read_param(self.module, self.param)
        if self.layout == "conv1d":
            return w.T
        if self.layout == "experts":
            return w[self.expert]
        if self.layout == "experts_t":
            return w[self.expert].T
        return w

    def row(self, row: int) -> torch.Tensor:
        """W[row, :] as float32 on the CPU: one output channel's weights (what detection reads of a
        layer it only observes; a GGUF-backed projection reads just that row)."""
        return self.matrix()[row].detach().float().cpu()

    def value(self, row: int, col: int) -> float:
        """W[row, col], the weight itself, as a Python float (any layout, any device)."""
        return float(self.matrix()[row, col].detach())

    def column(self, col: int) -> torch.Tensor:
        """W[:, col] as float32 on the CPU: what one input feature feeds into every output channel."""
        return self.matrix()[:, col].detach().float().cpu()

    def rank(self, row: int, col: int) -> int:
        """1-based rank of |W[row, col]| among all of W's entries (1 = the largest)."""
        from superweight.tensor.stats import rank_by_magnitude

        return rank_by_magnitude(self.matrix().detach(), row, col)

    def whole(self) -> tuple:
        """The index of this projection's whole matrix in the stored parameter (an expert's slice)."""
        return (self.expert,) if self.layout in EXPERT_LAYOUTS else (Ellipsis,)

    def bias(self) -> torch.Tensor | None:
        """The bias [out] added to this projection's output, or None."""
        name = self.bias_param or ("bias" if self.layout in ("linear", "conv1d") else None)
        b = read_param(self.module, name) if name else None
        if not isinstance(b, torch.Tensor):
            return None
        return b[self.expert] if self.layout in EXPERT_LAYOUTS else b

    def index(self, row, col) -> tuple:
        """Where W[row, col] sits in the stored parameter `module.<param>` (rows/cols: ints or tensors)."""
        if self.layout == "conv1d":
            return (col, row)
        if self.layout == "experts":
            return (self.expert, row, col)
        if self.layout == "experts_t":
            return (self.expert, col, row)
        return (row, col)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of W, from the parameter's metadata (no weights are read)."""
        shape = tuple(getattr(self.module, self.param).shape)
        if self.layout in ("conv1d", "experts_t"):
            return shape[-2:][::-1]  # type: ignore[return-value]
        return shape[-2:]  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self._name


class ModelView:
    """A loaded model seen through its adapter: layers, down projections, post-MLP norms."""

    def __init__(self, model: nn.Module, adapter: Adapter):
        self.model = model
        self.adapter = adapter
        layers = get_path(model, adapter.layers)
        if not isinstance(layers, (nn.ModuleList, list, tuple)):
            raise SuperweightError(f"{adapter.layers!r} is a {type(layers).__name__}, not a list of layers")
        self.layers = list(layers)
        self._checked: set[tuple] = set()  # coordinates already validated by `check`
        if not self.layers:
            raise SuperweightError("the model has no decoder layers")
        for i in range(len(self.layers)):  # fail early, with the path in the message
            self.down_projs(i)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def check(self, coords: Iterable) -> list[SuperWeight]:
        """Coordinates (records or (layer, row, col[, expert]) tuples) as `SuperWeight` records, each
        validated against this model's shapes — once: a key already checked is not checked again.
        The one validation of coordinates; a one-line error for any out of range."""
        records = [SuperWeight.of(c) for c in coords]
        for sw in records:
            if sw.key in self._checked:
                continue
            layer, row, col, expert = sw.key
            self.check_layer(layer)
            rows, cols = self.down_proj(layer, expert).shape
            if not (0 <= row < rows and 0 <= col < cols):
                raise SuperweightError(f"coordinate ({layer}, {row}, {col}) outside the down projection of "
                                       f"layer {layer}, which is {rows} x {cols} (row = output, col = input)")
            self._checked.add(sw.key)
        return records

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise SuperweightError(f"layer {layer} out of range: the model has {self.num_layers} layers "
                                   f"(0..{self.num_layers - 1})")

    def _down_path(self, layer: int) -> str:
        """The adapter's down projection path in this layer: the experts, or (a MoE model's dense
        layer, which has none) `dense_down_proj`."""
        a = self.adapter
        if a.is_moe and a.dense_down_proj and self._optional(layer, a.down_proj) is None \
                and self._optional(layer, a.dense_down_proj) is not None:
            return a.dense_down_proj
        return a.down_proj

    def down_module(self, layer: int) -> nn.Module:
        self.check_layer(layer)
        return get_path(self.layers[layer], self._down_path(layer))

    def is_moe_layer(self, layer: int) -> bool:
        """Whether the layer routes tokens to experts (a MoE model's dense layers do not)."""
        return self.adapter.is_moe and self._down_path(layer) == self.adapter.down_proj

    def is_unfused(self, layer: int) -> bool:
        """Whether the layer keeps its experts unfused, as an nn.ModuleList of small MLPs."""
        return self.is_moe_layer(layer) and isinstance(self.down_module(layer), nn.ModuleList)

    @property
    def is_moe(self) -> bool:
        return any(self.is_moe_layer(i) for i in range(self.num_layers))

    def num_experts(self, layer: int) -> int:
        """How many routed experts the layer has (0 for a dense layer)."""
        return sum(p.expert is not None for p in self.down_projs(layer))

    def down_projs(self, layer: int) -> list[DownProj]:
        """All down projections of a layer: one for dense MLPs, one per expert (+ shared) for MoE."""
        a = self.adapter
        module = self.down_module(layer)
        path = self._down_path(layer)
        name = f"{a.layers}.{layer}.{path}"
        if self.is_moe_layer(layer):
            if isinstance(module, nn.ModuleList):  # unfused: one small MLP per expert
                out = []
                for e, expert in enumerate(module):
                    down = getattr(expert, a.expert_down, None)
                    if not isinstance(getattr(down, "weight", None), torch.Tensor):
                        raise SuperweightError(f"{name}.{e}.{a.expert_down} is not a linear layer")
                    out.append(DownProj(layer, down, "linear", expert=e,
                                        _name=f"{name}.{e}.{a.expert_down}"))
            else:
                param = getattr(module, a.expert_param, None)
                if not isinstance(param, torch.Tensor) or param.dim() != 3:
                    raise SuperweightError(f"{name}.{a.expert_param} is not a 3-D expert weight")
                out = [DownProj(layer, module, a.layout, expert=e, param=a.expert_param,
                                _name=f"{name}.{a.expert_param}[{e}]", bias_param=a.expert_bias)
                       for e in range(param.shape[0])]
            if a.shared_down_proj:
                shared = get_path(self.layers[layer], a.shared_down_proj)
                out.append(DownProj(layer, shared, "linear", shared=True,
                                    _name=f"{a.layers}.{layer}.{a.shared_down_proj}"))
            return out
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise SuperweightError(f"{name} ({type(module).__name__}) has no weight matrix")
        return [DownProj(layer, module, "linear" if a.is_moe else a.layout, _name=name)]

    def down_proj(self, layer: int, expert: int | None = None) -> DownProj:
        projs = self.down_projs(layer)
        n = sum(p.expert is not None for p in projs)
        if expert is None:
            dense = [p for p in projs if p.expert is None]
            if len(dense) != 1:
                raise SuperweightError(f"layer {layer} is a mixture of experts: give an expert index")
            return dense[0]
        if n == 0:
            raise SuperweightError(f"layer {layer} has no experts (a dense MLP): give no expert index")
        for p in projs:
            if p.expert == expert:
                return p
        raise SuperweightError(f"expert {expert} out of range for layer {layer} "
                               f"({n} experts, 0..{n - 1})")

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        if self.adapter.post_mlp_norm is None:
            return None
        return get_path(self.layers[layer], self.adapter.post_mlp_norm)

    def _optional(self, layer: int, path: str | None) -> nn.Module | None:
        """The module at `path` in a layer, or None when the adapter names none or it is absent."""
        if path is None:
            return None
        try:
            return get_path(self.layers[layer], path)
        except SuperweightError:
            return None

    def branches(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        """(attention, MLP): the modules whose outputs a layer adds to the residual stream.

        The attention branch is the post-attention norm when the architecture has one on the
        attention output, else the attention module; the MLP branch is the post-MLP norm, else the
        MLP module, else the down projection. None where the path is unknown (an architecture run
        with `--layers/--down-proj` overrides): the decomposition then lacks that branch.
        """
        self.check_layer(layer)
        a = self.adapter
        attn = self._optional(layer, a.post_attn_norm) or self._optional(layer, a.attention)
        mlp = self.post_mlp_norm(layer) or self._optional(layer, a.mlp)
        if mlp is None and a.mlp is None:
            mlp = self.down_module(layer)
        return attn, mlp

    def attn_out_bias(self, layer: int) -> torch.Tensor | None:
        """The bias [hidden] of the attention's output projection (a view), or None if it has none."""
        module = self._optional(layer, self.adapter.attn_out)
        bias = getattr(module, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def norm_gain(self, layer: int) -> torch.Tensor | None:
        """The post-MLP norm's effective per-channel gain, [hidden], or None."""
        norm = self.post_mlp_norm(layer)
        if norm is None or getattr(norm, "weight", None) is None:
            return None
        return read_param(norm, "weight").detach().float() + self.adapter.norm_gain_offset

    def feature_rows(self, layer: int, col: int, expert: int | None = None) -> list[FeatureRow]:
        """Views of the weights (and biases) that produce intermediate feature `col` of a layer
        (copies for an offloaded layer).

        For a dense MLP: the adapter's `up_projs`; for a routed expert: that expert's slice of them;
        for a MoE layer with `expert=None`: the shared expert's `shared_up_projs`.
        """
        a = self.adapter
        self.check_layer(layer)
        moe = self.is_moe_layer(layer)
        specs = a.up_projs if (expert is not None or not moe) else a.shared_up_projs
        if a.is_moe and not moe:
            specs = a.dense_up_projs
        elif expert is not None and self.is_unfused(layer):
            if not 0 <= expert < len(self.down_module(layer)):
                raise SuperweightError(f"expert {expert} out of range for layer {layer}")
            specs = tuple(UpProj(f"{self._down_path(layer)}.{expert}.{p}") for p in a.expert_ups)
            expert = None  # each unfused expert is a dense MLP of its own
        if not specs:
            raise SuperweightError(f"the {a.model_types[0]} adapter declares no projections that "
                                   f"produce the down projection's input"
                                   + (" of a shared expert" if moe else ""))
        rows = []
        for spec in specs:
            module = get_path(self.layers[layer], spec.path)
            w = read_param(module, spec.param)
            name = f"{a.layers}.{layer}.{spec.path}.{spec.param}"
            if not isinstance(w, torch.Tensor):
                raise SuperweightError(f"{name} is not a weight")
            bias = read_param(module, "bias") if spec.layout not in EXPERT_LAYOUTS else None
            if spec.layout in EXPERT_LAYOUTS:
                if expert is None or not 0 <= expert < w.shape[0]:
                    raise SuperweightError(f"{name}: expert {expert} out of range ({w.shape[0]} experts)")
                w, name = w[expert], f"{name}[{expert}]"  # [out, in] ("experts_t": [in, out])
                if spec.bias:
                    bias = read_param(module, spec.bias)[expert]
            out_dim = 1 if spec.layout in ("conv1d", "experts_t") else 0
            inter = w.shape[out_dim] // spec.chunks
            if not 0 <= col < inter:
                raise SuperweightError(f"feature {col} out of range for {name} ({inter} features)")
            for j in range(spec.chunks):
                r = spec.chunks * col + j if spec.interleaved else j * inter + col
                row = w[:, r] if out_dim == 1 else w[r]  # [hidden]
                b = bias[r:r + 1] if isinstance(bias, torch.Tensor) else None
                rows.append(FeatureRow(row, b, f"{name}[{r}]", module, r))
        return rows

    def up_specs(self, layer: int) -> tuple[UpProj, ...]:
        """Every projection in a layer that feeds one of its down projections (all experts', the
        shared expert's; each unfused expert's own gate/up)."""
        a = self.adapter
        if not self.is_moe_layer(layer):
            return a.dense_up_projs if a.is_moe else a.up_projs
        routed = a.up_projs
        if self.is_unfused(layer):
            path = self._down_path(layer)
            routed = tuple(UpProj(f"{path}.{e}.{p}") for e in range(len(self.down_module(layer)))
                           for p in a.expert_ups)
        return routed + a.shared_up_projs

    def router_weight(self, layer: int) -> torch.Tensor | None:
        """The MoE router's weight [experts, hidden] of a layer, or None for dense models."""
        if self.adapter.router is None:
            return None
        self.check_layer(layer)
        if not self.is_moe_layer(layer):
            return None
        w = read_param(get_path(self.layers[layer], self.adapter.router), "weight")
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise SuperweightError(f"{self.adapter.router} of layer {layer} has no 2-D router weight")
        return w

    def _experts_spec(self) -> UpProj:
        a = self.adapter
        spec = next((u for u in a.up_projs if u.layout in EXPERT_LAYOUTS), None)
        if spec is None or spec.chunks != 2 or not (a.experts_act or a.experts_gate):
            raise SuperweightError(f"the {a.model_types[0]} adapter declares no fused gated experts")
        return spec

    def experts_gate_up(self, layer: int) -> torch.Tensor:
        """The fused experts' gate_up weight of a layer, [experts, 2·intermediate, hidden] (real values,
        also for an offloaded layer)."""
        spec = self._experts_spec()
        return read_param(get_path(self.layers[layer], spec.path), spec.param)

    def expert_input(self, layer: int, expert: int, hidden: torch.Tensor,
                     gate_up: torch.Tensor | None = None) -> torch.Tensor:
        """What a fused experts module feeds expert `expert`'s down projection for `hidden`
        [tokens, hidden]: act(gate)·up from the experts' fused gate_up, [tokens, intermediate] —
        the same computation as the module's own forward, declared by the adapter. `gate_up`: that
        expert's [2·intermediate, hidden] weight when the caller has read it already."""
        spec = self._experts_spec()
        module = get_path(self.layers[layer], spec.path)
        w = gate_up if gate_up is not None else self.experts_gate_up(layer)[expert]
        gate_up_out = hidden @ w if spec.layout == "experts_t" else nn.functional.linear(hidden, w)
        if spec.bias:
            gate_up_out = gate_up_out + read_param(module, spec.bias)[expert].to(gate_up_out.device)
        if self.adapter.experts_gate:
            return getattr(module, self.adapter.experts_gate)(gate_up_out)
        gate, up = gate_up_out.chunk(2, dim=-1)
        return getattr(module, self.adapter.experts_act)(gate) * up

    def expert_output(self, proj: DownProj, x: torch.Tensor, down: torch.Tensor | None = None) -> torch.Tensor:
        """A routed expert's down projection output for its input x [tokens, intermediate], as the
        experts module computes it (bias included), before the routing weight. `down`: that
        expert's stored down weight when the caller has read it already."""
        w = down if down is not None else read_param(proj.module, proj.param)[proj.expert]
        y = x @ w if proj.layout == "experts_t" else nn.functional.linear(x, w)
        b = proj.bias()
        return y + b.to(y.device) if b is not None else y

    def residual_readers(self, layer: int) -> list[tuple[str, nn.Module]]:
        """The modules of a layer whose input is the residual stream (q/k/v, gate/up, fc1, a MoE
        router and experts, a shared expert), by name as in `decoder_linears`."""
        self.check_layer(layer)
        a = self.adapter
        if not a.residual_readers:
            raise SuperweightError(f"the {a.model_types[0]} adapter declares no residual-stream "
                                   "readers; add them to superweight/model/adapters.py")
        if not a.is_moe:
            return [(f"{a.layers}.{layer}.{path}", get_path(self.layers[layer], path))
                    for path in a.residual_readers]
        # a MoE model's layers differ (dense or routed; q_proj or q_a_proj): the ones present
        out = [(f"{a.layers}.{layer}.{path}", m) for path in a.residual_readers
               if (m := self._optional(layer, path)) is not None]
        if not out:
            raise SuperweightError(f"none of the residual-stream readers the {a.model_types[0]} adapter "
                                   f"declares is in layer {layer}")
        return out

    def decoder_linears(self) -> Iterator[tuple[str, nn.Module]]:
        """Every linear-like module inside the decoder layers (nn.Linear and GPT-2 Conv1D), by name."""
        for _, _, name, mod in self.decoder_linears_by_kind():
            yield name, mod

    def decoder_linears_by_kind(self) -> Iterator[tuple[int, str, str, nn.Module]]:
        """`(layer, kind, name, module)` for every decoder linear; kinds from `Adapter.linear_kinds`."""
        for i, layer in enumerate(self.layers):
            for name, mod in layer.named_modules():
                if isinstance(mod, nn.Linear) or is_conv1d(mod):
                    yield i, self.adapter.kind_of(name), f"{self.adapter.layers}.{i}.{name}", mod
