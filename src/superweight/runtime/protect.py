"""Which GGUF tensors to keep at a higher type when llama.cpp quantizes a model with super weights,
and the matching control: the same overrides on layers without one.

`weight` keeps each super weight's down projection (`blk.L.ffn_down.weight`; for a routed expert the
layer's whole expert stack `blk.L.ffn_down_exps.weight`, since llama.cpp types whole tensors);
`circuit` also keeps what makes the down projection's input spike — that layer's gate and up
projections (`ffn_gate`, `ffn_up`; a fused gate_up model such as Phi-3 has only `ffn_up`, and MoE
layers `ffn_gate_exps` / `ffn_up_exps`), plus any tensors the caller names as feeding it.

A gain only counts where it beats its control: `control_overrides` moves every protected tensor
`blk.L.X` to `blk.C.X`, C the mirror layer `n_layers − 1 − L`, or, when that layer holds a super
weight or is already used, the nearest free layer (lower first). Same tensor kinds, same shapes in
a model whose layers are alike, so the same file size — checked against the source's shapes when
they are given. Patterns are anchored and escaped (`^blk\\.1\\.ffn_down\\.weight$`), so layer 1
never matches layer 11.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from superweight.errors import SuperweightError
from superweight.records import SuperWeight

PROTECT_MODES = ("none", "weight", "circuit")
PROTECT_TYPES = ("Q8_0", "F16")
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
GATE_UP = ("ffn_gate", "ffn_up")


def tensor_pattern(name: str) -> str:
    """The llama.cpp override pattern that matches exactly the tensor `name`."""
    return "^" + re.escape(name) + "$"


def protected_tensors(super_weights: Iterable[SuperWeight], protect: str = "weight", *,
                      names: Sequence[str] | None = None, feeders: Sequence[str] = ()) -> list[str]:
    """GGUF tensor names to protect for these super weights (sorted; empty for "none" or no weights).

    `names` (the model's GGUF tensor names) restricts gate/up to those that exist and checks the
    down projections do; `feeders` are extra tensor names kept in "circuit" mode.
    """
    if protect not in PROTECT_MODES:
        raise SuperweightError(f"protect must be one of {', '.join(PROTECT_MODES)}, got {protect!r}")
    out: set[str] = set()
    if protect == "none":
        return []
    for sw in super_weights:
        routed = sw.expert is not None
        suffix = "_exps" if routed else ""
        down = f"blk.{sw.layer}.ffn_down{suffix}.weight"
        if names is not None and down not in names and not routed and f"blk.{sw.layer}.ffn_down_shexp.weight" in names:
            down, suffix = f"blk.{sw.layer}.ffn_down_shexp.weight", "_shexp"
        if names is not None and down not in names:
            raise SuperweightError(f"the model has no tensor {down} for the super weight at {sw.coord}")
        out.add(down)
        if protect == "circuit":
            ups = [f"blk.{sw.layer}.{kind}{suffix}.weight" for kind in GATE_UP]
            out.update(u for u in ups if names is None or u in names)
    if protect == "circuit":
        for name in feeders:
            if names is not None and name not in names:
                raise SuperweightError(f"the model has no tensor {name}")
            out.add(name)
    return sorted(out, key=_natural)


def protect_overrides(super_weights: Iterable[SuperWeight], protect: str = "weight", *,
                      protect_type: str = "Q8_0", names: Sequence[str] | None = None,
                      feeders: Sequence[str] = ()) -> list[tuple[str, str]]:
    """`[(pattern, type)]` for `quantize_gguf`: each protected tensor, anchored, at `protect_type`.

    >>> protect_overrides([SuperWeight(2, 7, 9)], "circuit")
    [('^blk\\\\.2\\\\.ffn_down\\\\.weight$', 'Q8_0'), ('^blk\\\\.2\\\\.ffn_gate\\\\.weight$', 'Q8_0'), ('^blk\\\\.2\\\\.ffn_up\\\\.weight$', 'Q8_0')]
    """
    kind = _protect_type(protect_type)
    return [(tensor_pattern(n), kind) for n in protected_tensors(super_weights, protect, names=names,
                                                                 feeders=feeders)]


def control_layers(layers: Iterable[int], n_layers: int, avoid: Iterable[int] = (),
                   alike: Callable[[int, int], bool] | None = None) -> dict[int, int]:
    """`{layer: control layer}`: the mirror `n_layers − 1 − layer`, else the nearest free layer
    (lower first); never a layer in `layers` or `avoid`, never the same control twice. With
    `alike(layer, candidate)`, the nearest free candidate for which it holds comes first."""
    layers = sorted(set(layers))
    taken = set(layers) | set(avoid)
    out: dict[int, int] = {}
    for layer in layers:
        mirror = n_layers - 1 - layer
        order = [c for d in range(n_layers) for c in dict.fromkeys((mirror - d, mirror + d))
                 if 0 <= c < n_layers and c not in taken]
        if not order:
            raise SuperweightError(f"no layer without a super weight is left for a control of layer {layer} "
                                   f"({n_layers} layers)")
        pick = next((c for c in order if alike(layer, c)), order[0]) if alike else order[0]
        out[layer] = pick
        taken.add(pick)
    return out


def control_overrides(super_weights: Iterable[SuperWeight], protect: str = "weight", *, n_layers: int,
                      protect_type: str = "Q8_0", tensors: dict[str, dict] | None = None,
                      feeders: Sequence[str] = (), stock_types: dict[str, str] | None = None
                      ) -> list[tuple[str, str]]:
    """The same overrides as `protect_overrides`, moved to layers without a super weight.

    `tensors` (`quantize.gguf_tensors(src)`) checks that every control tensor exists with the same
    shape as the tensor it stands in for. `stock_types` ({tensor: type} of the stock quantization)
    prefers a control layer whose tensors of the protected kinds have the same stock types as the
    super weight layer's — then, with the stock types pinned, protected and control files have the
    same size.

    >>> control_overrides([SuperWeight(2, 7, 9)], "weight", n_layers=6)
    [('^blk\\\\.3\\\\.ffn_down\\\\.weight$', 'Q8_0')]
    """
    super_weights = list(super_weights)
    names = list(tensors) if tensors is not None else None
    chosen = protected_tensors(super_weights, protect, names=names, feeders=feeders)
    layers = {int(_BLOCK.match(n).group(1)) for n in chosen if _BLOCK.match(n)}
    kinds = {m.group(2) for m in map(_BLOCK.match, chosen) if m}

    def alike(layer: int, candidate: int) -> bool:
        return all(stock_types.get(f"blk.{layer}.{k}") == stock_types.get(f"blk.{candidate}.{k}") for k in kinds)

    mapping = control_layers(layers, n_layers, avoid={sw.layer for sw in super_weights},
                             alike=alike if stock_types else None)
    kind = _protect_type(protect_type)
    out = []
    for name in chosen:
        m = _BLOCK.match(name)
        if not m:
            raise SuperweightError(f"{name} is not in a layer, so it has no control layer")
        twin = f"blk.{mapping[int(m.group(1))]}.{m.group(2)}"
        if tensors is not None:
            if twin not in tensors:
                raise SuperweightError(f"the control tensor {twin} for {name} is not in the model")
            if tensors[twin]["shape"] != tensors[name]["shape"]:
                raise SuperweightError(f"the control tensor {twin} has shape {tensors[twin]['shape']}, "
                                       f"{name} has {tensors[name]['shape']}: not the same size")
        out.append((tensor_pattern(twin), kind))
    return out


def _protect_type(name: str) -> str:
    key = name.upper()
    if key not in PROTECT_TYPES:
        raise SuperweightError(f"protect type must be one of {', '.join(PROTECT_TYPES)}, got {name!r}")
    return key


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
