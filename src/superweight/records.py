"""Plain, serialisable records that every feature passes around.

Detection returns `SuperWeight` and `SuperActivation` records; interventions, the catalog,
quantization and reports consume them. Coordinates follow the paper's Table 2: `(layer, row, col)`
into `layers[layer].mlp.down_proj.weight[row, col]` read as W[row=output channel, col=input channel],
zero-based; `expert` is set only for mixture-of-experts down projections.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class SuperWeight:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuperWeight":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SuperActivation:
    """A huge value in the residual stream: which layer creates it, where it sits, how big it is."""

    layer: int  # the layer whose down projection output first shows it
    channel: int  # hidden channel (= the super weight's row)
    position: int  # token position
    value: float  # the down projection's output there
    token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuperActivation":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
