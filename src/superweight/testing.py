"""Tiny models of every supported architecture, an offline byte tokenizer, and planted super weights.

Real weights exist here for one architecture only (Llama-style SmolLM2), so every other layout is
tested on tiny randomly initialised models built from a `transformers` config. A random model has no
super weight; `plant_super_weight` writes one into the weights (no hooks), and detection must then
find exactly that coordinate. The other makers of massive activations are planted in the weights
too — one input feature feeding several rows (`plant_input_feature`), a post-MLP norm's gain
(`plant_norm_activation`), the attention output (`plant_attention_activation`), the embedding
(`plant_embedding_activation`) — and `python -m superweight.testing DEMO DIR` saves the README's
demo models. Which projections make the down projection's input, and where a MoE
router is, come from the architecture adapter (`Adapter.up_projs`, `.router`), so planting has no
per-architecture code. Importable by tests and benchmarks; nothing here needs pytest or a network.

>>> model = tiny_model("llama")
>>> sw = plant_super_weight(model, layer=2, row=7, col=11)
>>> sw.coord
(2, 7, 11)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.adapters import FeatureRow, ModelView, adapter_for, get_path
from superweight.model.hooks import hooked
from superweight.records import SuperWeight

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 64, 128, 4, 2
SPECIALS = ("<s>", "</s>", "<pad>")  # ids 256, 257, 258 after the 256 bytes
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
VOCAB = 256 + len(SPECIALS)

_IDS = dict(vocab_size=VOCAB, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
_DECODER = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS, max_position_embeddings=256)
_MOE = dict(num_experts_per_tok=2)

# config keyword arguments per model_type; `num_hidden_layers` is added by `tiny_model`
TINY_CONFIGS: dict[str, dict] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma2": {**_DECODER, "query_pre_attn_scalar": HIDDEN // HEADS},
    "gemma3_text": {**_DECODER, "query_pre_attn_scalar": HIDDEN // HEADS},
    "phi3": _DECODER,
    "olmo": _DECODER,
    "olmo2": _DECODER,
    "gpt2": dict(n_embd=HIDDEN, n_inner=INTERMEDIATE, n_head=HEADS, n_positions=256,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "gpt_neox": dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                     max_position_embeddings=256),
    "opt": dict(hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, word_embed_proj_dim=HIDDEN,
                num_attention_heads=HEADS, max_position_embeddings=256),
    "mixtral": {**_DECODER, **_MOE, "num_local_experts": 4},
    "qwen2_moe": {**_DECODER, **_MOE, "num_experts": 4, "moe_intermediate_size": INTERMEDIATE,
                  "shared_expert_intermediate_size": INTERMEDIATE, "decoder_sparse_step": 1},
    "qwen3_moe": {**_DECODER, **_MOE, "num_experts": 4, "moe_intermediate_size": INTERMEDIATE,
                  "decoder_sparse_step": 1, "norm_topk_prob": True},
    "olmoe": {**_DECODER, **_MOE, "num_experts": 4},
    # DeepSeek-V3: multi-head latent attention, a first dense layer, one shared expert, sigmoid
    # routing in one group
    "deepseek_v3": {**_DECODER, **_MOE, "n_routed_experts": 4, "n_shared_experts": 1,
                    "moe_intermediate_size": INTERMEDIATE, "first_k_dense_replace": 1, "n_group": 1,
                    "topk_group": 1, "q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 8, "v_head_dim": 16, "num_key_value_heads": HEADS,
                    "head_dim": 8},
    "gpt_oss": {**_DECODER, **_MOE, "num_local_experts": 4, "sliding_window": 16, "layer_types": None,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
}
TINY_TYPES: tuple[str, ...] = tuple(TINY_CONFIGS)


def tiny_model(model_type: str, *, num_layers: int = 6, seed: int = 0, **overrides) -> nn.Module:
    """A tiny randomly initialised causal LM (hidden 64, intermediate 128, float32, eval mode).

    Deterministic from `seed` (the global RNG is left as it was); `overrides` go to the config.

    >>> tiny_model("gpt2").config.n_layer
    6
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in TINY_CONFIGS:
        raise SuperweightError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_TYPES)}")
    kwargs = {**_IDS, **TINY_CONFIGS[model_type], "num_hidden_layers": num_layers, **overrides}
    if "layer_types" in kwargs and kwargs["layer_types"] is None:  # gpt-oss: alternate, one per layer
        kwargs["layer_types"] = [("sliding_attention", "full_attention")[i % 2] for i in range(num_layers)]
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what the ByteLevel pre-tokenizer emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tiny_tokenizer():
    """An offline byte-level tokenizer: token id = byte value, then <s> (prepended), </s>, <pad>.

    >>> tiny_tokenizer()("hi").input_ids
    [256, 104, 105]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({s: 256 + i for i, s in enumerate(SPECIALS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", add_bos_token=True)


# --- planting --------------------------------------------------------------------------------------

_STATE = "_superweight_planted"  # attribute on the model: what was planted, for re-planting
ROUTER_LOGIT = 10.0  # the planted expert's router logit (random ones are ~0.2): routed at every token
SHIFT_RATIO = 4.0  # the shared direction's size over the largest per-token residual norm


@dataclass(frozen=True)
class _Plant:
    layer: int
    row: int
    col: int
    expert: int | None
    weight: float
    input_scale: float


@dataclass
class _State:
    plants: list[_Plant]
    direction: torch.Tensor | None = None  # [hidden] unit vector added to every token embedding


def plant_super_weight(model: nn.Module, layer: int, row: int, col: int, *, expert: int | None = None,
                       weight: float = 50.0, input_scale: float = 100.0, view: ModelView | None = None
                       ) -> SuperWeight:
    """Write a super weight into the model's weights: W[row, col] = `weight`, input feature `col` ≈
    `input_scale` at every token, so the down projection's output[row] ≈ weight · input_scale.

    Feature `col` is made large by setting the rows of the projections that produce it (gate and up,
    fc1, fused gate_up, an expert's gate_up; `Adapter.up_projs`):
    - if they all have a bias (GPT-2, GPT-NeoX, OPT): weight rows 0 and biases b = input_scale^(1/n)
      for n projections, so the feature is act(b) (x b) = input_scale at every token, exactly;
    - otherwise the rows read a direction that every token shares. A random model has none, so one
      is added, once, to every token embedding (a unit vector `u` scaled well above the per-token
      residual); a feature reading `u` plus the channels of earlier-layer planted super activations
      (which take over the normalised residual after them) is positive at every token, and its size
      is measured with one forward pass and scaled to `input_scale`. For a routed expert the router's
      row reads the same direction, so the expert is chosen at every token.
    Zeroing W[row, col] removes the spike; everything else stays O(1). Plants of earlier calls are
    re-planted (in layer order) so that any order of calls works. Returns the planted record.
    """
    view = view or ModelView(model, adapter_for(model.config.model_type))
    rows, cols = view.down_proj(layer, expert).shape
    if not (0 <= row < rows and 0 <= col < cols):
        raise SuperweightError(f"({layer}, {row}, {col}) outside the {rows} x {cols} down projection")
    state: _State = getattr(model, _STATE, None) or _State([])
    plant = _Plant(layer, row, col, expert, float(weight), float(input_scale))
    state.plants = [p for p in state.plants if (p.layer, p.row, p.col, p.expert) !=
                    (layer, row, col, expert)] + [plant]
    object.__setattr__(model, _STATE, state)  # a plain attribute, not a submodule or buffer
    with torch.no_grad():
        view.down_proj(layer, expert).matrix()[row, col] = plant.weight
        for p in sorted(state.plants, key=lambda p: p.layer):
            _make_feature(model, view, state, p)
    return SuperWeight(layer, row, col, expert=expert, value=plant.weight, input_value=plant.input_scale,
                       output_value=plant.weight * plant.input_scale)


def planted(model: nn.Module) -> list[SuperWeight]:
    """The super weights planted in a model so far, in layer order."""
    state: _State | None = getattr(model, _STATE, None)
    plants = sorted(state.plants, key=lambda p: (p.layer, p.row, p.col)) if state else []
    return [SuperWeight(p.layer, p.row, p.col, expert=p.expert, value=p.weight,
                        input_value=p.input_scale) for p in plants]


def _make_feature(model: nn.Module, view: ModelView, state: _State, p: _Plant) -> None:
    """Make intermediate feature p.col of layer p.layer (of p.expert) ≈ p.input_scale at every token."""
    feats = view.feature_rows(p.layer, p.col, p.expert)
    per_row = p.input_scale ** (1 / len(feats))  # gated: act(g)·u with g ≈ u ≈ per_row ≫ 1
    if all(f.bias is not None for f in feats) and p.expert is None:
        for f in feats:
            f.weight.zero_()
            f.bias.fill_(per_row)
        return
    if state.direction is None:
        state.direction = _add_shared_direction(model, view)
    v = state.direction.clone()
    for q in state.plants:  # after an earlier super activation, the normalised residual is mostly it
        if q.layer < p.layer:
            v[q.row] += math.copysign(1.0, q.weight)
    v /= v.norm()
    for f in feats:
        f.weight.copy_(v)
        if f.bias is not None:
            f.bias.zero_()
    s = _read_along(model, view, feats[0], v)  # [tokens] the feature's pre-activation, per unit row
    if not bool((s > 0).all()):
        raise SuperweightError(f"could not plant at layer {p.layer}: no direction shared by all tokens "
                               f"(projection min {float(s.min()):.3g})")
    scale = float(s.median())
    for f in feats:
        f.weight.mul_(per_row / scale)
    router = view.router_weight(p.layer)
    if router is not None and p.expert is not None:
        router[p.expert].copy_(v * (ROUTER_LOGIT / scale))


def _probe_ids(model: nn.Module) -> torch.Tensor:
    """A fixed probe sequence [1, 48] of token ids spread over the vocabulary."""
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(1234)
    return torch.randperm(vocab, generator=g)[:48].unsqueeze(0)


def _read_along(model: nn.Module, view: ModelView, feat: FeatureRow, v: torch.Tensor,
                ids: torch.Tensor | None = None) -> torch.Tensor:
    """The input of the projection holding `feat`, projected on `v`, for every probe token."""
    seen: list[torch.Tensor] = []

    def hook(module, inputs, output):
        x = inputs[0].detach()
        seen.append(x.reshape(-1, x.shape[-1]) @ v)

    with hooked([(feat.module, hook)]):
        model(input_ids=_probe_ids(model) if ids is None else ids)
    return seen[0]


def _add_shared_direction(model: nn.Module, view: ModelView) -> torch.Tensor:
    """Add c·u to every token embedding, c well above the largest per-token residual norm; return u."""
    emb = model.get_input_embeddings().weight  # [vocab, hidden]
    hidden = emb.shape[1]
    g = torch.Generator().manual_seed(4321)
    u = torch.randn(hidden, generator=g)
    u = u - u.mean()  # survives LayerNorm's mean subtraction
    u = u / u.norm()
    ids = _probe_ids(model)
    before = _layer_inputs(model, view, ids)
    typical = max(float(h.norm(dim=-1).max()) for h in before)
    emb += u
    after = _layer_inputs(model, view, ids)[0]
    per_unit = float(((after - before[0]) @ u).mean())  # embedding multipliers (Gemma: sqrt(hidden))
    emb += u * (SHIFT_RATIO * typical / per_unit - 1)
    _project_out(view, u)
    return u


def _layer_inputs(model: nn.Module, view: ModelView, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering each decoder layer, [tokens, hidden] each.

    Read with scoped pre-hooks rather than `output_hidden_states=True`, which in transformers 5
    installs output-capturing hooks on the layers that stay there for good."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append(x.detach().reshape(-1, x.shape[-1]))

    handles = []
    try:
        for layer in view.layers:
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def _project_out(view: ModelView, u: torch.Tensor) -> None:
    """Make every feature-producing row orthogonal to `u`, so that features not planted ignore the
    shared direction (models without a norm before the MLP, like OLMo 2, would otherwise grow
    O(10) features everywhere and hide the planted one from a ratio test)."""
    for i, layer in enumerate(view.layers):
        for spec in view.up_specs(i):
            w = getattr(get_path(layer, spec.path), spec.param)
            if spec.layout in ("conv1d", "experts_t"):  # [..., in, out]
                w -= u[:, None] * (u @ w)[..., None, :]
            else:  # [..., out, in]
                w -= (w @ u)[..., None] * u


# --- super experts (mixture-of-experts models) -----------------------------------------------------

def plant_super_expert(model: nn.Module, layer: int, row: int, col: int, *, expert: int | None = 1,
                       weight: float = 50.0, input_scale: float = 100.0, sink: bool = True) -> SuperWeight:
    """A super expert as Su et al. (2025) describe it: expert `expert` of `layer` (None: the layer's
    shared expert) is routed for the first token (<s>) and its down projection weight W[row, col]
    makes a massive activation on channel `row` there (≈ weight × input_scale), which the residual
    stream carries on. With `sink`, one attention head in every later layer reads that channel in its
    keys, so the first token becomes an attention sink — made by the super expert: prune it and the
    sink goes. One super expert per model; returns the planted weight's record.

    The first token gets a direction `b` of its own in the embedding (every token also gets the shared
    direction `u` that planting uses); the expert's feature rows and its router row read `b`.
    """
    view = ModelView(model, adapter_for(model.config.model_type))
    if not view.is_moe_layer(layer):
        raise SuperweightError(f"layer {layer} has no experts")
    proj = view.down_proj(layer, expert)
    rows, cols = proj.shape
    if not (0 <= row < rows and 0 <= col < cols):
        raise SuperweightError(f"({layer}, {row}, {col}) outside the {rows} x {cols} down projection")
    state: _State = getattr(model, _STATE, None) or _State([])
    object.__setattr__(model, _STATE, state)
    with torch.no_grad():
        if state.direction is None:
            state.direction = _add_shared_direction(model, view)
        u = state.direction
        b = _add_token_direction(model, view, BOS_ID, u, row)
        proj.matrix()[row, col] = weight
        feats = view.feature_rows(layer, col, expert)
        per_row = input_scale ** (1 / len(feats))
        for f in feats:
            f.weight.copy_(b)
            if f.bias is not None:
                f.bias.zero_()
        probe = _probe_ids(model)
        ids = torch.cat([torch.tensor([[BOS_ID]]), probe[probe != BOS_ID][None]], dim=1)
        s_b = _read_along(model, view, feats[0], b, ids)  # [tokens]: position 0 is <s>
        s_u = _read_along(model, view, feats[0], u, ids)
        gate = s_b - 0.5 * s_u  # the gate (and router) read b - u/2: positive at <s> only
        if not (float(gate[0]) > 0 and bool((gate[1:] < -0.5 * float(gate[0])).all())):
            raise SuperweightError(f"could not plant at layer {layer}: the first token's direction does "
                                   f"not stand out ({float(gate[0]):.3g} vs {float(gate[1:].max()):.3g})")
        for j, f in enumerate(feats):
            if j == 0 and len(feats) > 1:
                f.weight.copy_((b - 0.5 * u) * (per_row / float(gate[0])))
            else:
                f.weight.mul_(per_row / float(s_b[0]))
        router = view.router_weight(layer)
        if router is not None and expert is not None:
            router[expert].copy_((b - 0.5 * u) * (ROUTER_LOGIT / float(gate[0])))
        if sink:
            for later in range(layer + 1, view.num_layers):
                _plant_sink(view, later, row, state.direction)
    return SuperWeight(layer, row, col, expert=expert, value=float(weight), input_value=float(input_scale),
                       output_value=float(weight * input_scale), position=0)


def _add_token_direction(model: nn.Module, view: ModelView, token_id: int, u: torch.Tensor,
                         channel: int) -> torch.Tensor:
    """Give one token's embedding a direction of its own (orthogonal to `u` and to `channel`, as large
    as `u`'s share); every feature-producing row is made orthogonal to it. Returns the unit direction."""
    emb = model.get_input_embeddings().weight  # [vocab, hidden]
    g = torch.Generator().manual_seed(2468)
    b = torch.randn(emb.shape[1], generator=g)
    b = b - b.mean()
    e = torch.zeros_like(u)
    e[channel] = 1.0
    e = e - (e @ u) * u
    for q in (u, e / e.norm()):
        b = b - (b @ q) * q
    b = b / b.norm()
    emb[token_id] += b * float(emb[token_id] @ u)  # as large as the shared direction it already has
    _project_out(view, b)
    return b


def _plant_sink(view: ModelView, layer: int, channel: int, u: torch.Tensor) -> None:
    """Head 0 of `layer` attends to any key whose normalised residual is large on `channel`: its query
    reads the shared direction `u` (every token's), its key reads `channel` (and, on a second
    dimension, `u`, so that a norm over the key does not make every token's key alike). The
    dimensions used are the rotary embedding's slowest pair, or DeepSeek's non-rotary ("nope") ones."""
    a = get_path(view.layers[layer], view.adapter.attention)
    c = torch.zeros_like(u)
    c[channel] = 1.0
    c -= u * u[channel] / (u @ u)  # the channel, less what every token has of it through u
    if hasattr(a, "q_proj") and hasattr(a, "k_proj") and a.q_proj is not None:
        hd = a.head_dim
        d, d2 = hd // 2 - 1, hd // 2 - 2  # rotate_half pairs (i, i + hd/2): the lowest frequencies
        q, k = a.q_proj.weight, a.k_proj.weight
        for h in range(q.shape[0] // hd):  # every query head ...
            q[h * hd + d] = u
            q[h * hd + d2] = 0.0
        for h in range(k.shape[0] // hd):  # ... and every key head
            k[h * hd + d] = c
            k[h * hd + d2] = u
        for m in (a.q_proj, a.k_proj):
            if m.bias is not None:
                m.bias.view(-1, hd)[:, [d, d2]] = 0.0
    elif hasattr(a, "kv_a_proj_with_mqa") and hasattr(a, "q_a_proj"):  # multi-head latent attention
        a.q_a_proj.weight[0] = u  # q latent dim 0 reads u; each query head's first "nope" dim reads it
        kv = a.kv_a_proj_with_mqa.weight
        kv[0] = c  # kv latent dim 0 reads the channel, dim 1 reads u
        kv[1] = u
        q_head, k_head = a.qk_head_dim, a.qk_nope_head_dim + a.v_head_dim
        for h in range(a.num_heads):  # ... and each key head's first "nope" dim reads latent dim 0
            a.q_b_proj.weight[h * q_head] = 0.0
            a.q_b_proj.weight[h * q_head, 0] = 4.0
            a.kv_b_proj.weight[h * k_head] = 0.0
            a.kv_b_proj.weight[h * k_head, 0] = 4.0
    else:
        raise SuperweightError(f"cannot plant an attention sink in {type(a).__name__}")


class ExpertMLP(nn.Module):
    """One unfused expert: act(gate(x))·up(x) → down, as remote-code MoE checkpoints keep them."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act: nn.Module):
        super().__init__()
        inter, hidden = gate_up.shape[0] // 2, gate_up.shape[1]
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate_up[:inter])
            self.up_proj.weight.copy_(gate_up[inter:])
            self.down_proj.weight.copy_(down)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ExpertList(nn.ModuleList):
    """Unfused experts: an nn.ModuleList of `ExpertMLP`, called like transformers' fused experts
    module (hidden [tokens, hidden], top_k_index, top_k_weights), each expert on its routed tokens."""

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden)
        for e in torch.unique(top_k_index).tolist():
            if e >= len(self):
                continue
            k, tokens = torch.where(top_k_index.T == e)  # k-major, as the old per-expert loops went
            y = self[e](hidden[tokens]) * top_k_weights[tokens, k, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out


def unfuse_experts(model: nn.Module) -> nn.Module:
    """Replace every fused experts module (3-D gate_up / down parameters) by an `ExpertList` holding
    the same weights, one small MLP per expert (the layout remote-code checkpoints use). In place;
    returns the model. Concatenated gate/up, untransposed, unbiased experts only (not gpt-oss)."""
    view = ModelView(model, adapter_for(model.config.model_type))
    for i in range(view.num_layers):
        if not view.is_moe_layer(i) or view.is_unfused(i):
            continue
        fused = view.down_module(i)
        if getattr(fused, "is_transposed", False) or getattr(fused, "has_bias", False):
            raise SuperweightError(f"cannot unfuse {type(fused).__name__}: transposed or biased experts")
        experts = ExpertList([ExpertMLP(fused.gate_up_proj[e].detach(), fused.down_proj[e].detach(),
                                        fused.act_fn) for e in range(fused.gate_up_proj.shape[0])])
        parent, name = view.adapter.down_proj.rsplit(".", 1)
        setattr(get_path(view.layers[i], parent), name, experts)
    return model


# --- other makers of massive activations -----------------------------------------------------------

def plant_input_feature(model: nn.Module, layer: int, col: int, rows: list[int], *,
                        weights: list[float] | None = None, input_scale: float = 100.0,
                        expert: int | None = None) -> list[SuperWeight]:
    """One huge input feature `col` feeding several rows of a layer's down projection: W[r, col] =
    weights[i] for each row (default 50, 40, 30, ...), feature `col` ≈ `input_scale` at every token.

    The pattern that made the iterative search find one row per round (Qwen2.5-1.5B): zero the
    largest, and the next row becomes the layer's maximum.

    >>> [s.coord for s in plant_input_feature(tiny_model("qwen2"), 2, 11, [3, 17])]
    [(2, 3, 11), (2, 17, 11)]
    """
    weights = list(weights) if weights is not None else [50.0 - 10.0 * i for i in range(len(rows))]
    if len(weights) != len(rows) or not rows:
        raise SuperweightError("give one weight per row, and at least one row")
    return [plant_super_weight(model, layer, r, col, expert=expert, weight=w, input_scale=input_scale)
            for r, w in zip(rows, weights)]


def plant_norm_activation(model: nn.Module, channel: int, *, layers: list[int] | None = None,
                          gain: float = 5000.0, col: int = 0, weight: float = 1.0,
                          input_scale: float = 10.0) -> None:
    """A massive activation made by the post-MLP norm's gain (Gemma 2/3, OLMo 2), in every given
    layer (default: every layer from 1 on, so that the median layer has it too).

    The norm's effective gain on `channel` is set to `gain` (its median stays ~1), and a modest
    weight (W[channel, col] = `weight`, input feature ≈ `input_scale`: an output of ~10, far below
    any spike threshold) gives the MLP output a steady sign on that channel; the norm turns it into
    ~sqrt(hidden) × gain. Zeroing that weight barely changes the norm's output (it re-normalises
    whatever is left): the norm, not the weight, makes the activation. Plant super weights before
    calling this (planting measures the residual stream, which the gain then changes).
    """
    view = ModelView(model, adapter_for(model.config.model_type))
    if view.post_mlp_norm(0) is None:
        raise SuperweightError(f"{model.config.model_type} has no post-MLP norm")
    layers = list(range(1, view.num_layers)) if layers is None else list(layers)
    for layer in layers:  # first, with ordinary gains: planting measures the residual stream
        plant_super_weight(model, layer, channel, col, weight=weight, input_scale=input_scale, view=view)
    with torch.no_grad():
        for layer in layers:
            view.post_mlp_norm(layer).weight[channel] = gain - view.adapter.norm_gain_offset


def plant_attention_activation(model: nn.Module, layer: int, channel: int, value: float = 5000.0) -> None:
    """A massive activation made by the attention branch: the attention output projection's bias
    on `channel` set to `value`, so every token gets it (build the model with a bias there, e.g.
    `tiny_model("llama", attention_bias=True)`)."""
    view = ModelView(model, adapter_for(model.config.model_type))
    bias = view.attn_out_bias(layer)
    if bias is None:
        raise SuperweightError("the attention output projection has no bias to plant into "
                               "(build the tiny model with attention_bias=True)")
    with torch.no_grad():
        bias[channel] = value


def plant_embedding_activation(model: nn.Module, token_id: int, channel: int, value: float = 5000.0) -> None:
    """A massive activation the token embedding already carries: embedding[token_id, channel] =
    `value` (with `BOS_ID`, every prompt's first position)."""
    with torch.no_grad():
        model.get_input_embeddings().weight[token_id, channel] = value


# --- reproducible demos (README): `python -m superweight.testing demo-norm DIR` --------------------

DEMOS = {
    "demo-norm": "Gemma 3: the post-MLP norm's gain makes a massive activation on channel 9 in every "
                 "layer from 1 on",
    "demo-column": "Qwen2: one input feature (column 11 of layer 2) feeds four rows (3, 17, 29, 40)",
    "demo-attention": "Llama: the attention output makes a massive activation (layer 1, channel 9)",
    "demo-embedding": "Llama: the embedding of <s> carries a massive activation on channel 9",
    "demo-moe": "Qwen3-MoE: expert 1 of layer 2 is a super expert (routed for <s>, W[7, 11] = 50 makes a "
                "massive activation on channel 7; later layers' attention sinks on it)",
    "demo-moe-shared": "DeepSeek-V3: the shared expert of layer 2 is the super expert (W[7, 11] = 50)",
}


def demo_model(name: str) -> nn.Module:
    """The tiny planted model of one README demo (see `DEMOS`)."""
    if name == "demo-norm":
        model = tiny_model("gemma3_text")
        plant_norm_activation(model, 9)
    elif name == "demo-column":
        model = tiny_model("qwen2")
        plant_input_feature(model, 2, 11, [3, 17, 29, 40])
    elif name == "demo-attention":
        model = tiny_model("llama", attention_bias=True)
        plant_attention_activation(model, 1, 9)
    elif name == "demo-embedding":
        model = tiny_model("llama")
        plant_embedding_activation(model, BOS_ID, 9)
    elif name == "demo-moe":
        model = tiny_model("qwen3_moe")
        plant_super_expert(model, 2, 7, 11, expert=1)
    elif name == "demo-moe-shared":
        model = tiny_model("deepseek_v3")
        plant_super_expert(model, 2, 7, 11, expert=None)
    else:
        raise SuperweightError(f"unknown demo {name!r}; known: {', '.join(DEMOS)}")
    return model


def save_model(model: nn.Module, path) -> str:
    """Write a model (safetensors) and the byte tokenizer as a local model directory; return its path."""
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def save_tiny(path, model_type: str = "llama", plant: tuple[int, int, int] | None = None, **overrides) -> str:
    """A tiny model (with a super weight planted at `plant` = (layer, row, col), if given) saved as a
    local model directory, as a user's checkpoint would be; returns its path."""
    model = tiny_model(model_type, **overrides)
    if plant is not None:
        plant_super_weight(model, *plant)
    return save_model(model, path)


def save_demo(name: str, path) -> str:
    """Write a demo model and the byte tokenizer as a local model directory; return its path."""
    return save_model(demo_model(name), path)


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in DEMOS:
        print("usage: python -m superweight.testing DEMO DIR\n"
              + "\n".join(f"  {k}: {v}" for k, v in DEMOS.items()), file=sys.stderr)
        return 2
    print(f"{save_demo(args[0], args[1])}: {DEMOS[args[0]]}; try `superweight detect {args[1]} --verify`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
