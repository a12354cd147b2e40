"""Sparse Matrix Tuning (SMT; He et al. 2024, arXiv 2405.15525): train only the few square blocks
of the weight matrices whose gradients are largest.

Each eligible decoder linear's W[out, in] is cut into `block` × `block` sub-matrices (the edge blocks
are smaller when the block does not divide the shape; they are scored by their *mean* |gradient|,
so size does not favour them). A short warm-up accumulates the gradient of every eligible weight over
`warmup_steps` batches without updating anything; then blocks are taken in order of mean |gradient|
until they hold `budget` of the eligible parameters (the last one may overshoot by less than a block).

Training touches nothing else, and keeps optimizer state for the chosen blocks only: each chosen
block becomes its own small `nn.Parameter` (registered on its linear as `smt_blocks`, so the
Trainer's optimizer and `zero_grad` see it); the full weight is frozen. A forward pre-hook copies the
blocks into the weight before every forward pass, so the forward pass is the module's own, and
a forward hook attaches a custom autograd node that computes each block's gradient,
grad_y[:, rows]ᵀ · x[:, cols], instead of the full weight gradient. AdamW's weight decay therefore
decays the chosen weights themselves (as full fine-tuning does), and every entry outside the chosen
blocks stays bit-identical. `merge()` writes the blocks in and removes the parameters and hooks.
Only decoder linears (nn.Linear, GPT-2's Conv1D) are eligible; fused 3-D expert tensors are not.

>>> plan = plan_smt(lm, warmup_batches, SMTConfig(block=256, budget=0.01))  # doctest: +SKIP
>>> with sparse_tuning(lm, plan) as tuner:  # doctest: +SKIP
...     train(lm.model)
>>> plan.placement()  # kind × layer counts of the chosen blocks  # doctest: +SKIP
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.model.adapters import is_conv1d, linear_matrix
from superweight.model.load import LoadedModel
from superweight.records import SuperWeight

DEFAULT_BLOCK = 256  # the paper's l
PARAM_NAME = "smt_blocks"  # the ParameterList attached to a linear while it is tuned


@dataclass
class SMTConfig:
    """Block size, warm-up length, trainable budget, eligible module kinds, super weight blocks."""

    block: int = DEFAULT_BLOCK
    warmup_steps: int = 8  # batches whose gradients are accumulated before choosing
    budget: float = 0.01  # share of the eligible parameters trained, in (0, 1]
    kinds: tuple[str, ...] | None = None  # module kinds that may be chosen (None: every declared kind)
    exclude_super: bool = False  # never choose a block that holds a super weight

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise SuperweightError(f"SMT block size must be a positive integer, got {self.block!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise SuperweightError(f"SMT warm-up steps must be a positive integer, got {self.warmup_steps!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) \
                or not (0 < self.budget <= 1):
            raise SuperweightError(f"SMT budget must be a share of the parameters in (0, 1], got {self.budget!r}")
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
            if not self.kinds or not all(isinstance(k, str) and k for k in self.kinds):
                raise SuperweightError("SMT module kinds must be a non-empty list of names (e.g. q,k,v)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Block:
    """One sub-matrix W[row0:row0+rows, col0:col0+cols] of a decoder linear, with its score."""

    name: str  # the linear's module path
    kind: str
    layer: int
    row0: int
    col0: int
    rows: int
    cols: int
    score: float  # mean |gradient| over the warm-up

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def contains(self, row: int, col: int) -> bool:
        return self.row0 <= row < self.row0 + self.rows and self.col0 <= col < self.col0 + self.cols

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SMTPlan:
    """The chosen blocks and what they were chosen from."""

    config: SMTConfig
    blocks: list[Block]  # chosen, best first
    eligible_params: int
    candidates: int  # blocks scored
    excluded: list[Block] = field(default_factory=list)  # blocks left out because they hold a super weight
    kinds: list[str] = field(default_factory=list)  # eligible kinds, in the adapter's order
    num_layers: int = 0
    holding_super: list[Block] = field(default_factory=list)  # chosen blocks that hold a super weight

    @property
    def trainable_params(self) -> int:
        return sum(b.size for b in self.blocks)

    def placement(self) -> dict:
        """Where the chosen blocks fall: counts and parameters per module kind × layer."""
        kinds, layers = list(self.kinds), list(range(self.num_layers))
        counts = [[0] * len(layers) for _ in kinds]
        params = [[0] * len(layers) for _ in kinds]
        for b in self.blocks:
            i = kinds.index(b.kind)
            counts[i][b.layer] += 1
            params[i][b.layer] += b.size
        return {"kinds": kinds, "layers": layers, "blocks": counts, "params": params,
                "blocks_per_kind": {k: sum(r) for k, r in zip(kinds, counts)},
                "params_per_kind": {k: sum(r) for k, r in zip(kinds, params)}}

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "eligible_params": self.eligible_params,
                "trainable_params": self.trainable_params,
                "trainable_share": self.trainable_params / self.eligible_params if self.eligible_params else 0.0,
                "candidates": self.candidates, "blocks": [b.to_dict() for b in self.blocks],
                "excluded": [b.to_dict() for b in self.excluded],
                "holding_super": [b.to_dict() for b in self.holding_super], "placement": self.placement()}


# --- pure block arithmetic -----------------------------------------------------------------------

def block_mean_abs(t: torch.Tensor, block: int) -> torch.Tensor:
    """Mean |t| over each block × block tile of a 2-D tensor, `[ceil(rows/b), ceil(cols/b)]`;
    edge tiles are averaged over the entries they actually have."""
    rows, cols = t.shape
    nr, nc = math.ceil(rows / block), math.ceil(cols / block)
    padded = torch.zeros(nr * block, nc * block, dtype=torch.float64)
    padded[:rows, :cols] = t.detach().abs().to(torch.float64)
    sums = padded.view(nr, block, nc, block).sum(dim=(1, 3))  # [nr, nc]
    heights = torch.tensor([min(block, rows - i * block) for i in range(nr)], dtype=torch.float64)
    widths = torch.tensor([min(block, cols - j * block) for j in range(nc)], dtype=torch.float64)
    return sums / (heights[:, None] * widths[None, :])


def choose(candidates: Sequence[Block], eligible_params: int, budget: float) -> list[Block]:
    """The best-scored blocks until they hold `budget` of `eligible_params` (at least one block).

    Ties are broken by position (name, row, col), so the choice is deterministic."""
    target = budget * eligible_params
    chosen, total = [], 0
    for b in sorted(candidates, key=lambda b: (-b.score, b.name, b.row0, b.col0)):
        if total >= target:
            break
        chosen.append(b)
        total += b.size
    return chosen


# --- the warm-up ---------------------------------------------------------------------------------

def eligible_linears(lm: LoadedModel, kinds: Sequence[str] | None) -> list[tuple[int, str, str, nn.Module]]:
    """`(layer, kind, name, module)` of the decoder linears SMT may choose from."""
    every = list(lm.view.decoder_linears_by_kind())
    declared = [k for k in dict.fromkeys(kind for _, kind, _, _ in every)]
    if kinds is not None:
        unknown = [k for k in kinds if k not in declared]
        if unknown:
            raise SuperweightError(f"unknown module kind(s) {', '.join(unknown)} for {lm.model_type}; "
                                   f"this model has: {', '.join(declared)}")
    wanted = set(kinds) if kinds is not None else set(declared)
    chosen = [t for t in every if t[1] in wanted]
    if not chosen:
        raise SuperweightError("no decoder linear of the chosen kinds to tune")
    return chosen


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The causal-LM loss the Trainer optimises: the model's own loss with `labels`."""
    return model(**batch).loss


def score_blocks(lm: LoadedModel, batches: Iterable[dict], config: SMTConfig,
                 loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss) -> tuple[list[Block], int]:
    """Warm-up: accumulate gradients over `config.warmup_steps` batches (no update), then the mean
    |gradient| of every block of every eligible linear. Returns (blocks, eligible parameter count).

    Every parameter's `requires_grad`, the gradients and the train/eval mode are restored after."""
    model = lm.model
    linears = eligible_linears(lm, config.kinds)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    weights = [linear_matrix(m) for _, _, _, m in linears]  # W[out, in] views
    eligible = sum(w.numel() for w in weights)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for _, _, _, m in linears:
            m.weight.requires_grad_(True)
        model.train()
        n = 0
        for batch in batches:
            if n == config.warmup_steps:
                break
            loss = loss_fn(model, batch) / config.warmup_steps
            loss.backward()
            n += 1
        if n == 0:
            raise SuperweightError("SMT warm-up got no batches")
        blocks = []
        for (layer, kind, name, m), w in zip(linears, weights):
            grad = _grad_matrix(m)  # the gradient in W[out, in] layout
            means = block_mean_abs(grad, config.block)
            for i in range(means.shape[0]):
                for j in range(means.shape[1]):
                    r0, c0 = i * config.block, j * config.block
                    blocks.append(Block(name, kind, layer, r0, c0, min(config.block, w.shape[0] - r0),
                                        min(config.block, w.shape[1] - c0), float(means[i, j])))
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)
    return blocks, eligible


def _grad_matrix(module: nn.Module) -> torch.Tensor:
    """The weight's gradient read like `linear_matrix` reads the weight: [out, in]."""
    grad = module.weight.grad if module.weight.grad is not None else torch.zeros_like(module.weight)
    return grad.T if is_conv1d(module) else grad


def super_weight_blocks(lm: LoadedModel, blocks: Sequence[Block], super_weights: Sequence[SuperWeight]) -> list[Block]:
    """The blocks that hold one of the super weights (matched by module, then row and column)."""
    by_module = {}
    for sw in super_weights:
        module = lm.view.down_proj(sw.layer, sw.expert).module
        by_module.setdefault(id(module), []).append((sw.row, sw.col))
    names = {name: id(m) for _, _, name, m in lm.view.decoder_linears_by_kind()}
    return [b for b in blocks if any(b.contains(r, c) for r, c in by_module.get(names.get(b.name), ()))]


def plan_smt(lm: LoadedModel, batches: Iterable[dict], config: SMTConfig | None = None,
             super_weights: Sequence[SuperWeight] = (),
             loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss) -> SMTPlan:
    """Warm up, score every block, and choose the blocks to train."""
    config = config or SMTConfig()
    candidates, eligible = score_blocks(lm, batches, config, loss_fn)
    excluded = super_weight_blocks(lm, candidates, super_weights) if config.exclude_super else []
    left_out = {id(b) for b in excluded}
    pool = [b for b in candidates if id(b) not in left_out]
    if not pool:
        raise SuperweightError("every SMT block holds a super weight; nothing left to train")
    kinds = list(dict.fromkeys(b.kind for b in candidates))
    chosen = choose(pool, eligible, config.budget)
    holding = super_weight_blocks(lm, chosen, super_weights) if super_weights else []
    return SMTPlan(config, chosen, eligible, len(candidates), excluded, kinds, lm.view.num_layers, holding)


# --- training only the chosen blocks -------------------------------------------------------------

class _BlockGrads(torch.autograd.Function):
    """Identity on the linear's output y; in backward, each block's gradient grad_y[:, r]ᵀ · x[:, c]."""

    @staticmethod
    def forward(ctx, y, x, spans, *blocks):
        ctx.save_for_backward(x)
        ctx.spans = spans
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])  # [tokens, in]
        g2 = grad_y.reshape(-1, grad_y.shape[-1])  # [tokens, out]
        grads = [(g2[:, r0:r1].T @ x2[:, c0:c1]).to(x.dtype) for r0, r1, c0, c1 in ctx.spans]
        return (grad_y, None, None, *grads)


class _TunedLinear:
    """The chosen blocks of one linear: their parameters, spans and the version last copied in."""

    def __init__(self, module: nn.Module, blocks: list[Block]):
        self.module = module
        self.blocks = blocks
        self.spans = [(b.row0, b.row0 + b.rows, b.col0, b.col0 + b.cols) for b in blocks]
        w = linear_matrix(module)
        self.params = nn.ParameterList([nn.Parameter(w[r0:r1, c0:c1].detach().clone())
                                        for r0, r1, c0, c1 in self.spans])

    def sync(self) -> None:
        """Copy every block into the weight. Always, not only when a block's version counter moved:
        fused optimizers (AdamW(fused=True), the Trainer's default) update in place without bumping
        it. The copy is the chosen share of the weights, once per forward pass."""
        w = linear_matrix(self.module)
        with torch.no_grad():
            for p, (r0, r1, c0, c1) in zip(self.params, self.spans):
                w[r0:r1, c0:c1].copy_(p.detach())

    def pre_hook(self, module, args):
        self.sync()

    def hook(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return None
        return _BlockGrads.apply(output, inputs[0], self.spans, *self.params)


class SparseTuner:
    """Chosen blocks attached to a model as trainable parameters (see the module docstring)."""

    def __init__(self, lm: LoadedModel, plan: SMTPlan):
        self.lm = lm
        self.plan = plan
        modules = {name: m for _, _, name, m in lm.view.decoder_linears_by_kind()}
        by_name: dict[str, list[Block]] = {}
        for b in plan.blocks:
            if b.name not in modules:
                raise SuperweightError(f"SMT block in {b.name}, which this model does not have")
            by_name.setdefault(b.name, []).append(b)
        self.tuned = {name: _TunedLinear(modules[name], blocks) for name, blocks in by_name.items()}
        self._handles: list = []
        self._flags: dict = {}

    def install(self) -> None:
        """Freeze every parameter, attach the block parameters and the hooks."""
        model = self.lm.model
        self._flags = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for t in self.tuned.values():
                t.module.register_module(PARAM_NAME, t.params)
                self._handles.append(t.module.register_forward_pre_hook(t.pre_hook))
                self._handles.append(t.module.register_forward_hook(t.hook))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Write the blocks into the weights, drop the parameters and hooks, restore `requires_grad`."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for t in self.tuned.values():
            t.sync()
            if PARAM_NAME in t.module._modules:
                del t.module._modules[PARAM_NAME]
        for p, flag in self._flags.items():
            p.requires_grad_(flag)
        self._flags = {}

    def slot(self, sw: SuperWeight) -> tuple[torch.Tensor, int] | None:
        """The block parameter holding a super weight, with its flat index, or None if none does."""
        module = self.lm.view.down_proj(sw.layer, sw.expert).module
        for t in self.tuned.values():
            if t.module is module:
                for b, p in zip(t.blocks, t.params):
                    if b.contains(sw.row, sw.col):
                        return p, (sw.row - b.row0) * b.cols + (sw.col - b.col0)
        return None

    def parameters(self) -> list[nn.Parameter]:
        return [p for t in self.tuned.values() for p in t.params]


@contextmanager
def sparse_tuning(lm: LoadedModel, plan: SMTPlan) -> Iterator[SparseTuner]:
    """Train only the plan's blocks inside the block; on exit they are written into the weights.

    The model is changed in place (that is the point of training); outside the blocks nothing is."""
    tuner = SparseTuner(lm, plan)
    tuner.install()
    try:
        yield tuner
    finally:
        tuner.remove()
