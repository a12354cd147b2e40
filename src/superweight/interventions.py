"""Edits of a loaded model as context managers that restore the exact original bits on exit.

Every edit saves the original values it touches (clones, so bit-identical) and writes them back in
`finally`, also when the body raises. Edits compose: nest them, or use `contextlib.ExitStack`.
All writes go through `superweight.model.offload.Overrides`, so they work the same on layers that
accelerate keeps offloaded under a memory budget (the edited tensor stands in for the offloaded one
for the block; the model's files are never written).

The paper's ablations (Table 1, Figure 6) are these edits: `prune` (zero the super weights),
`scale` (multiply them by a factor), `prune_top_k` (zero the K largest other weights, the control)
and `restore_super_activation` (zero the super weights but write their super activation back).
`ablate_massive` changes no weight: scoped hooks set a massive activation to its channel's typical
value from the layer where it first appears on (does the model need it, whatever makes it?).
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from superweight.errors import SuperweightError
from superweight.massive import MassiveCriterion
from superweight.model.adapters import EXPERT_LAYOUTS, ModelView
from superweight.model.hooks import hooked, observe_down_projs
from superweight.model.offload import Overrides, read_param
from superweight.records import SuperWeight

PROBE_TEXT = "The super weight is a single scalar that large language models depend on."


def check_factor(factor) -> float:
    """A scaling factor as a float; a one-line error for anything that is not a finite number."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise SuperweightError(f"scaling factor {factor!r} is not a number") from None
    if isinstance(factor, bool) or value != value or value in (float("inf"), float("-inf")):
        raise SuperweightError(f"scaling factor {factor!r} is not a finite number")
    return value


@contextmanager
def set_weights(view: ModelView, values: dict) -> Iterator[None]:
    """Set down-projection entries `{coord: new_value}` for the block; restore them exactly after."""
    keys = [sw.key for sw in view.check(values)]
    with Overrides() as edits:
        for key, new in zip(keys, values.values()):
            layer, row, col, expert = key
            proj = view.down_proj(layer, expert)
            edits.set_entries(proj.module, proj.param, proj.index(row, col), new)
        yield


@contextmanager
def prune(view: ModelView, coords: Iterable) -> Iterator[None]:
    """Zero the given super weights (records or coordinates) for the block."""
    coords = list(coords)
    with set_weights(view, {sw.key: 0.0 for sw in view.check(coords)}):
        yield


@contextmanager
def scale(view: ModelView, coords: Iterable, factor: float) -> Iterator[None]:
    """Multiply the given super weights by `factor` for the block (Figure 6)."""
    factor = check_factor(factor)
    keys = [sw.key for sw in view.check(coords)]
    vals = {k: view.down_proj(k[0], k[3]).value(k[1], k[2]) * factor for k in keys}
    with set_weights(view, vals):
        yield


# --- prune the K largest other weights (the paper's "Prune Non-SW") ----------------------------

@dataclass
class PrunedWeights:
    """What `prune_top_k` zeroed: how many, the magnitude range, and where (module name → count)."""

    k: int
    smallest: float  # the smallest |w| that was pruned
    largest: float  # the largest |w| that was pruned
    per_module: dict[str, int] = field(default_factory=dict)
    candidates: int = 0  # how many weights were eligible (selected modules, super weights excluded)

    def to_dict(self) -> dict:
        return asdict(self)


def _weight_2d(module: nn.Module) -> torch.Tensor:
    """The module's weight as stored ([out, in] for nn.Linear, [in, out] for GPT-2 Conv1D)."""
    w = read_param(module, "weight")
    if w.dim() != 2:
        raise SuperweightError(f"{type(module).__name__} weight is {w.dim()}-D, expected a matrix")
    return w


def _excluded_flat(view: ModelView, keys) -> dict[int, list[int]]:
    """Super weight coordinates as flat indices into each module's stored weight, by module id."""
    out: dict[int, list[int]] = {}
    for layer, row, col, expert in keys:
        proj = view.down_proj(layer, expert)
        if proj.layout in EXPERT_LAYOUTS:
            continue  # fused expert parameters are not among the decoder linears
        cols = proj.module.weight.shape[1]  # the stored shape, from metadata
        flat = row * cols + col if proj.layout == "linear" else col * cols + row
        out.setdefault(id(proj.module), []).append(flat)
    return out


def select_linears(view: ModelView, modules: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The decoder's linear layers whose name matches any glob in `modules` (all when None).

    >>> [n for n, _ in select_linears(lm.view, ["*.mlp.down_proj"])][:1]
    ['model.layers.0.mlp.down_proj']
    """
    linears = list(view.decoder_linears())
    if modules is None:
        return linears
    picked = [(n, m) for n, m in linears if any(fnmatch.fnmatchcase(n, p) for p in modules)]
    if not picked:
        example = linears[0][0] if linears else "model.layers.0.mlp.down_proj"
        raise SuperweightError(f"no decoder linear layer matches {', '.join(modules)} "
                               f"(names look like {example!r}; use globs such as '*.mlp.down_proj')")
    return picked


def top_k_weights(view: ModelView, k: int, exclude: Iterable = (),
                  modules: Sequence[str] | None = None) -> tuple[list, torch.Tensor, int]:
    """The `k` largest-magnitude weights of the selected decoder linears, `exclude` left out.

    Found layer by layer: each matrix's own top k is merged into a running top k, so memory stays
    at one matrix plus 2k numbers. Returns `([(name, module, flat indices into module.weight)],
    their magnitudes, how many weights were eligible)`; modules holding none are left out.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise SuperweightError(f"K must be a positive whole number of weights, got {k!r}")
    linears = select_linears(view, modules)
    excluded = _excluded_flat(view, [sw.key for sw in view.check(exclude)])
    best_v = torch.empty(0)
    best_m = torch.empty(0, dtype=torch.long)
    best_i = torch.empty(0, dtype=torch.long)
    eligible = 0
    for m_idx, (_, mod) in enumerate(linears):
        a = _weight_2d(mod).detach().abs().flatten().float().cpu()  # [out*in], a copy
        skip = excluded.get(id(mod), [])
        if skip:
            a[torch.tensor(skip)] = -1.0
        eligible += a.numel() - len(skip)
        v, i = torch.topk(a, min(k, a.numel()))
        best_v = torch.cat([best_v, v])
        best_m = torch.cat([best_m, torch.full_like(i, m_idx)])
        best_i = torch.cat([best_i, i])
        if best_v.numel() > k:
            keep = torch.topk(best_v, k).indices
            best_v, best_m, best_i = best_v[keep], best_m[keep], best_i[keep]
    if k > eligible:
        raise SuperweightError(f"K = {k:,} is larger than the {eligible:,} weights in the selected "
                               f"linear layers (super weights excluded)")
    out = []
    for m_idx in sorted(set(best_m.tolist())):
        name, mod = linears[m_idx]
        out.append((name, mod, torch.sort(best_i[best_m == m_idx]).values))
    return out, best_v, eligible


@contextmanager
def prune_top_k(view: ModelView, k: int = 7000, exclude: Iterable = (),
                modules: Sequence[str] | None = None) -> Iterator[PrunedWeights]:
    """Zero the `k` largest-magnitude weights of the decoder's linear layers, except `exclude`.

    The paper's "Prune Non-SW" control (Table 1): `exclude` are the super weights (records or
    coordinates), `modules` optional globs over decoder linear names (default: all of them, i.e.
    every nn.Linear / Conv1D inside the decoder layers; embeddings and the LM head are not touched).

    >>> from superweight.evaluate import perplexity
    >>> sws = [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)]
    >>> with prune_top_k(lm.view, 7000, exclude=sws) as info:
    ...     ppl = perplexity(lm, "wiki", max_tokens=512).ppl
    >>> info.k, ppl > 100
    (7000, True)
    """
    chosen, values, eligible = top_k_weights(view, k, exclude, modules)
    info = PrunedWeights(k=k, smallest=float(values.min()), largest=float(values.max()),
                         per_module={name: int(idx.numel()) for name, _, idx in chosen},
                         candidates=eligible)
    with Overrides(spill=True) as edits:  # offloaded matrices: edited copies on disk, not in RAM
        for _, mod, idx in chosen:
            width = mod.weight.shape[1]
            edits.set_entries(mod, "weight", (idx // width, idx % width), 0.0)
        yield info


# --- prune the super weights but restore the super activation (Table 1, last row) --------------

@dataclass
class RestoreLog:
    """Filled while `restore_super_activation` is active: what was written back, per forward pass."""

    sites: list[dict] = field(default_factory=list)  # {"layer", "channel", "threshold"|"positions"}
    calls: int = 0  # forward passes through a hooked down projection
    restored: int = 0  # activations written back, summed over passes

    def to_dict(self) -> dict:
        return asdict(self)


def _sa_thresholds(records: list, keys: list, first: dict, threshold: float | None) -> dict[int, float]:
    """Per channel: the |value| from which an activation counts as the super activation."""
    out = {}
    for row, layer in first.items():
        if threshold is not None:
            out[row] = float(threshold)
            continue
        seen = [abs(r.output_value) for r, k in zip(records, keys)
                if isinstance(r, SuperWeight) and r.output_value and k[0] == layer and k[1] == row]
        if not seen:
            raise SuperweightError(
                f"no super activation size known for channel {row} at layer {layer}: pass records "
                "from detect() or measure_super_activations(), or give threshold= or positions=")
        out[row] = SA_THRESHOLD_FRACTION * min(seen)
    return out


SA_THRESHOLD_FRACTION = 0.25  # an activation counts as the super activation from 1/4 of its size


@contextmanager
def restore_super_activation(view: ModelView, super_weights: Iterable, *,
                             positions: Sequence[int] | None = None,
                             threshold: float | None = None) -> Iterator[RestoreLog]:
    """Prune the super weights, but keep the super activation they create (Table 1, "+ restore SA").

    Definition. Every super weight is set to zero for the block. For each output channel `row` of
    a super weight, let `L` be the first (lowest) layer holding a super weight on that row: the
    layer where the super activation first appears. A forward hook on layer `L`'s down projection
    recomputes its output on the very same input with that layer's super weights put back
    (`module.forward` with the original values, so bit-identical to the unpruned layer when its
    input is unchanged) and writes the recomputed value into channel `row` at the super activation
    positions only. Every other channel, every other position and every other layer keep the
    pruned model's values; super weights at later layers of the same row stay pruned.

    Super activation positions, per sequence: `positions` (sequence indices, e.g. `[0]`) when
    given; otherwise the tokens where the unpruned value |Y_orig[t, row]| reaches `threshold`,
    which defaults to `SA_THRESHOLD_FRACTION` (1/4) of the super activation recorded on the
    records (`SuperWeight.output_value`, filled by detection or `measure_super_activations`).

    Because the unpruned value is recomputed from the current input, this works on any text and
    needs no reference pass; with super weights at one layer (or all later than `L`), the restored
    activations equal the unpruned model's exactly. Dense down projections only.

    >>> from superweight.evaluate import perplexity
    >>> sws = measure_super_activations(lm, [SuperWeight(11, 507, 1229), SuperWeight(11, 507, 1487)])
    >>> with restore_super_activation(lm.view, sws) as log:
    ...     ppl = perplexity(lm, "wiki", max_tokens=512).ppl
    >>> log.restored > 0, ppl < 30
    (True, True)
    """
    records = view.check(super_weights)
    keys = [sw.key for sw in records]
    if any(k[3] is not None for k in keys):
        raise SuperweightError("restoring the super activation is supported for dense down "
                               "projections only, not mixture-of-experts experts")
    if not keys:
        raise SuperweightError("no super weights given to prune")
    originals = {}
    for rec, key in zip(records, keys):
        cur = view.down_proj(key[0]).value(key[1], key[2])
        if cur == 0.0 and isinstance(rec, SuperWeight) and rec.value:
            cur = rec.value  # already pruned by an outer context: use the recorded value
        originals[key] = cur
    first: dict[int, int] = {}
    for layer, row, _, _ in keys:
        first[row] = min(first.get(row, layer), layer)
    thresholds = None if positions is not None else _sa_thresholds(records, keys, first, threshold)
    log = RestoreLog()
    pairs = []
    for layer in sorted(set(first.values())):
        rows = sorted(r for r, l in first.items() if l == layer)
        at_layer = [k for k in keys if k[0] == layer]
        for r in rows:
            site = {"layer": layer, "channel": r}
            site.update({"positions": list(positions)} if thresholds is None
                        else {"threshold": thresholds[r]})
            log.sites.append(site)
        proj = view.down_proj(layer)
        pairs.append((proj.module, _restore_hook(proj, at_layer, originals, rows, positions,
                                                 thresholds, log)))
    with prune(view, keys), hooked(pairs):
        yield log


def _restore_hook(proj, keys, originals, rows, positions, thresholds, log):
    def hook(module, inputs, output):
        with torch.no_grad():
            with Overrides() as edits:  # this layer's super weights back, for one recomputation
                for key in keys:
                    edits.set_entries(proj.module, proj.param, proj.index(key[1], key[2]), originals[key])
                y_orig = module.forward(*inputs)  # [batch, seq, hidden], the unpruned layer's output
            y = output.clone()
            seq = y.shape[-2] if y.dim() >= 2 else 1
            for r in rows:
                if thresholds is None:
                    mask = torch.zeros(seq, dtype=torch.bool, device=y.device)
                    mask[[p for p in positions if 0 <= p < seq]] = True
                    mask = mask.expand_as(y[..., r])
                else:
                    mask = y_orig[..., r].abs() >= thresholds[r]
                y[..., r] = torch.where(mask, y_orig[..., r], y[..., r])
                log.restored += int(mask.sum())
            log.calls += 1
        return y
    return hook


def measure_super_activations(lm, super_weights: Iterable, text: str = PROBE_TEXT) -> list[SuperWeight]:
    """Copies of the records with the super activation each creates on `text` measured.

    For every super weight, one forward pass records the down projection's output on its row:
    `output_value` and `position` at the token where |Y[t, row]| is largest, `input_value` the
    input X[t, col] there, and `value` the weight itself. Use it to give catalog or hand-typed
    coordinates the sizes `restore_super_activation` needs.
    """
    recs = lm.view.check(super_weights)
    keys = [r.key for r in recs]
    seen: dict[tuple, tuple] = {}

    def callback(proj, x, y, positions):
        for key in keys:
            if key[0] == proj.layer and key[3] == proj.expert:
                t = int(y[:, key[1]].abs().argmax())
                seen[key] = (float(y[t, key[1]]), int(positions[t]), float(x[t, key[2]]))

    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"].to(lm.device)
    with torch.no_grad(), observe_down_projs(lm.view, callback, sorted({k[0] for k in keys})):
        lm.model(input_ids=ids)
    out = []
    for rec, key in zip(recs, keys):
        y, t, x = seen[key]
        w = lm.view.down_proj(key[0], key[3]).value(key[1], key[2])
        out.append(replace(rec, value=w, output_value=y, position=t, input_value=x))
    return out


# --- ablate a massive activation itself (does the model need it?) ---------------------------------

@dataclass
class AblationLog:
    """Filled while `ablate_massive` is active: how many values were replaced, over all passes."""

    channel: int
    first_layer: int
    replaced: int = 0
    calls: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _typical_fill(h: torch.Tensor, channel: int, criterion: MassiveCriterion, log: AblationLog) -> torch.Tensor:
    """h [..., hidden] with every massive value on `channel` replaced by the channel's median over
    the positions where it is not massive (0 where it is massive at every position)."""
    flat = h.reshape(-1, h.shape[-1])  # [tokens, hidden]
    col = flat[:, channel]
    mask = col.abs() > criterion.threshold(flat)
    log.calls += 1
    if not bool(mask.any()):
        return h
    rest = col[~mask]
    typical = rest.median() if rest.numel() else torch.zeros((), dtype=col.dtype, device=col.device)
    out = flat.clone()
    out[mask, channel] = typical
    log.replaced += int(mask.sum())
    return out.reshape(h.shape)


@contextmanager
def ablate_massive(view: ModelView, channel: int, first_layer: int,
                   criterion: MassiveCriterion = MassiveCriterion()) -> Iterator[AblationLog]:
    """Remove a massive activation for the block: from the layer where it first appears on, every
    massive value on `channel` is set to the channel's typical value.

    Definition. After layer `first_layer` and after every later layer (`first_layer` = -1: already in
    the embedding output entering layer 0), an entry h[t, channel] is massive by `criterion`
    (|h| > max(floor, ratio × the median |h| of that hidden state)) — detection's, applied to the text
    being run, so it finds the activation wherever it forms (the first token, a delimiter). Each
    such entry is replaced by the median of h[:, channel] over the positions where the channel is
    not massive: the value the channel has at an ordinary token. Zero would also remove it, but a
    channel's ordinary value is not always near zero; where every position is massive, 0 is used.
    Forward hooks only: no weight changes, and the hooks are removed on exit (also on error).

    >>> from superweight.evaluate import perplexity
    >>> from superweight.massive import MassiveCriterion
    >>> with ablate_massive(lm.view, 507, 11, MassiveCriterion(floor=100, ratio=1000)) as log:
    ...     ppl = perplexity(lm, "wiki", max_tokens=512).ppl
    >>> ppl > 1000
    True
    """
    hidden = view.down_projs(0)[0].shape[0]
    if not 0 <= channel < hidden:
        raise SuperweightError(f"channel {channel} out of range: the hidden state has {hidden} channels")
    if first_layer != -1:
        view.check_layer(first_layer)
    log = AblationLog(channel, first_layer)

    def on_output(module, inputs, output):
        if isinstance(output, torch.Tensor):
            return _typical_fill(output, channel, criterion, log)
        return (_typical_fill(output[0], channel, criterion, log), *output[1:])

    def on_input(module, args, kwargs):
        if args:
            return (_typical_fill(args[0], channel, criterion, log), *args[1:]), kwargs
        kwargs = dict(kwargs, hidden_states=_typical_fill(kwargs["hidden_states"], channel, criterion, log))
        return args, kwargs

    handles = []
    try:
        if first_layer == -1:
            handles.append(view.layers[0].register_forward_pre_hook(on_input, with_kwargs=True))
        for layer in view.layers[max(first_layer, 0):]:
            handles.append(layer.register_forward_hook(on_output))
        yield log
    finally:
        for h in handles:
            h.remove()
