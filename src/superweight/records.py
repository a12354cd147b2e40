"""Plain, serialisable records that every feature passes around.

Detection returns `MassiveActivation` records (huge values seen in the residual stream, with what
makes each one) and `SuperWeight` records (weights that make one: candidates until verified);
interventions, the catalog, quantization and reports consume them. `SuperActivation` is the small
(layer, channel, position) view of a massive activation that a super weight makes. Coordinates follow
the paper's Table 2: `(layer, row, col)` into `layers[layer].mlp.down_proj.weight[row, col]` read as
W[row=output channel, col=input channel], zero-based; `expert` is set only for mixture-of-experts
down projections.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# What makes a massive activation (`Origin.kind`), in the words the reports use.
SUPER_WEIGHT = "super weight"  # one or a few weights of the activation's own row (its channel)
INPUT_FEATURE = "input feature"  # one huge input feature feeding several rows through a few weights
NORM_GAIN = "post-MLP norm gain"  # the norm on the MLP output has a huge gain on this channel
ATTENTION = "attention"  # the attention branch adds it
EMBEDDING = "embedding"  # the token embedding already carries it
MLP = "MLP"  # the MLP branch adds it, spread over many weights (no few of them make it)
ORIGINS = (SUPER_WEIGHT, INPUT_FEATURE, NORM_GAIN, ATTENTION, EMBEDDING, MLP)
EMBEDDING_LAYER = -1  # `first_layer` of a massive activation already in the embedding output

# Verdicts of verification, graded by the perplexity ratio with it removed (`verify.VerdictScale`):
# for a candidate weight, and for a massive activation; MATTERS is the middle grade of both.
SUPER, SPIKE = "super weight", "spike only"
NEEDED, NOT_NEEDED = "needed", "not needed"
MATTERS = "matters"


def known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of `d` that name a field of dataclass `cls` (a file may carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class Record:
    """`to_dict` / `from_dict` for a flat dataclass record; keys it does not know are ignored."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**known_fields(cls, d))


@dataclass
class SuperWeight(Record):
    """One super weight and what was measured about it (fields after `expert` are optional)."""

    layer: int
    row: int  # output channel = the channel of the super activation
    col: int  # input channel = the intermediate feature that spikes
    expert: int | None = None
    value: float | None = None  # W[row, col] in the unedited model
    input_value: float | None = None  # the down projection's input spike X[pos, col]
    output_value: float | None = None  # the down projection's output spike Y[pos, row]
    position: int | None = None  # token position of the spike
    token: str | None = None
    dominance: float | None = None  # |X·W| of this product / sum over all products of Y[pos, row]
    output_without: float | None = None  # Y[pos, row] with this weight zeroed
    rank: int | None = None  # rank by |w| within its matrix (1 = largest)
    round: int | None = None  # detection round in which it was found (1-based)
    late: bool = False  # a spike in the late layers rather than an early super weight
    norm_output: float | None = None  # after the post-MLP norm (Gemma 2/3, OLMo 2)
    norm_gain: float | None = None  # that norm's gain on `row`
    norm_gain_median: float | None = None  # ... and its median gain over channels
    prompts_found: int | None = None  # for multi-prompt runs: in how many prompts it appeared
    verdict: str | None = None  # "super weight" | "spike only" when verified causally
    ppl_ratio: float | None = None  # perplexity with it zeroed alone / unedited
    ppl_ratio_given_others: float | None = None  # with all early ones zeroed / all but this one

    @property
    def coord(self) -> tuple[int, int, int]:
        return (self.layer, self.row, self.col)

    @property
    def key(self) -> tuple[int, int, int, int | None]:
        return (self.layer, self.row, self.col, self.expert)

    def label(self) -> str:
        e = f", expert {self.expert}" if self.expert is not None else ""
        return f"({self.layer}, {self.row}, {self.col}{e})"

    @classmethod
    def of(cls, c) -> "SuperWeight":
        """A record from a record (itself) or a (layer, row, col[, expert]) tuple — the one place a
        tuple becomes a record; its range is checked against a model by `ModelView.check`."""
        if isinstance(c, cls):
            return c
        from superweight.errors import SuperweightError

        try:
            values = tuple(None if v is None else int(v) for v in c)
        except (TypeError, ValueError):
            raise SuperweightError(f"a coordinate is (layer, row, col) or (layer, row, col, expert), got {c!r}") from None
        if len(values) not in (3, 4) or None in values[:3]:
            raise SuperweightError(f"a coordinate is (layer, row, col) or (layer, row, col, expert), got {c!r}")
        return cls(*values[:3], expert=values[3] if len(values) == 4 else None)



@dataclass
class SuperActivation(Record):
    """A huge value in the residual stream: which layer creates it, where it sits, how big it is."""

    layer: int  # the layer after which it first appears in the residual stream
    channel: int  # hidden channel (= the super weight's row)
    position: int  # token position
    value: float  # the residual stream's value there
    token: str | None = None



@dataclass
class Origin:
    """What makes a massive activation, measured at the layer where it first appears.

    The layer's increment on the channel at that position (`increment` = h_out − h_in) splits into
    the attention branch and the MLP branch (`attention_share` + `mlp_share` ≈ 1); within the MLP
    branch, the down projection's products X[pos, k]·W[row, k] say whether a few weights make it.
    `weights` are the super weight candidates: the row's weights that make it (kind "super weight"),
    or every row that one input feature `column` feeds (kind "input feature"); empty otherwise.
    """

    kind: str
    weights: list[SuperWeight] = field(default_factory=list)
    column: int | None = None  # "input feature": the input feature (down projection column)
    rows: list[int] = field(default_factory=list)  # ... and the rows it feeds
    input_value: float | None = None  # X[pos, column] for the weight kinds
    weight_share: float | None = None  # share of the MLP output (before any norm) those weights make
    # (kind "MLP": the share its few largest products make, under the threshold)
    increment: float | None = None  # h_out − h_in on the channel at the position, first layer
    attention_share: float | None = None  # attention branch / increment
    mlp_share: float | None = None  # MLP branch (after any post-MLP norm) / increment
    mlp_raw: float | None = None  # the MLP output before the post-MLP norm
    gain: float | None = None  # the post-MLP norm's gain on the channel
    gain_ratio: float | None = None  # ... over the norm's median |gain|

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = [w.to_dict() for w in self.weights]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Origin":
        d = known_fields(cls, d)
        d["weights"] = [SuperWeight.from_dict(w) for w in d.get("weights", [])]
        return cls(**d)


@dataclass
class MassiveActivation:
    """A value of the residual stream far above the typical magnitude of its own hidden state.

    Seen after layer `first_layer` (`EMBEDDING_LAYER` = -1: already in the embedding output) at
    `channel`, at every position in `positions` (`position` is where it is largest), and carried
    on through `last_layer` (the unbroken run of layers where it stays massive). `origin` says what
    makes it; `verdict` whether the model needs it (set by verification: the activation is set to
    the channel's typical value from `first_layer` on and perplexity is measured).
    """

    channel: int
    position: int
    first_layer: int
    last_layer: int
    value: float  # h[position, channel] after first_layer
    median: float  # median |h| of that hidden state (its typical magnitude)
    peak: float  # the largest |h| at (position, channel) over the run, signed
    peak_layer: int
    token: str | None = None
    positions: list[int] = field(default_factory=list)
    origin: Origin | None = None
    late: bool = False  # first appears in the late layers (reported apart)
    prompts_found: int | None = None  # for multi-prompt runs: in how many prompts it appeared
    verdict: str | None = None  # "needed" | "not needed" when verified
    ppl_ratio: float | None = None  # perplexity with it ablated / unedited

    @property
    def ratio(self) -> float:
        """|value| over the median |h| of its hidden state."""
        return abs(self.value) / self.median if self.median > 0 else float("inf")

    @property
    def layers(self) -> int:
        """How many layers it persists through (first to last, inclusive)."""
        return self.last_layer - self.first_layer + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["origin"] = self.origin.to_dict() if self.origin else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MassiveActivation":
        d = known_fields(cls, d)
        if d.get("origin") is not None:
            d["origin"] = Origin.from_dict(d["origin"])
        return cls(**d)

    def as_super_activation(self) -> SuperActivation:
        return SuperActivation(self.first_layer, self.channel, self.position, self.value, self.token)
