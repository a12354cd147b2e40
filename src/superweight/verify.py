"""Causal check of what detection saw: does the model need it?

A down projection spike is only a super weight if the model needs it. For each candidate we zero it
alone and measure perplexity on a short real text (the fetched Wikipedia text when available, else a
plain English passage shipped with the package), and call it a super weight when perplexity grows by
at least `threshold` times — alone, or given the other early super weights already zeroed (two weights
of one row can build one super activation together, so that either alone does little); otherwise it
is only a spike. The paper's own issue tracker reports
models where zeroing the spike weight does nothing — this tells the two apart.

A massive activation is checked the same way, whatever makes it (a weight, a norm's gain,
attention, the embedding): it is ablated — set to its channel's typical value from the layer where
it first appears on (`interventions.ablate_massive`) — and it is *needed* when perplexity grows by
at least `threshold` times.

Verdicts are graded, not binary (`VerdictScale`): a ratio of 2.7 is not "harmless" because it is
under 3. Between `matters` (1.25) and `needed` (3) a weight or an activation *matters*; below it, it
is not needed (a weight: spike only). The ratio is always reported beside the word, and the scale is
written into every result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

import torch

from superweight.errors import SuperweightError
from superweight.events import VERIFY, OnEvent, emitter
from superweight.interventions import ablate_massive, prune
from superweight.massive import MassiveCriterion
from superweight.model.load import LoadedModel
from superweight.records import MATTERS, NEEDED, NOT_NEEDED, SPIKE, SUPER, MassiveActivation, SuperWeight

VERIFY_TOKENS = 512  # enough text for a stable perplexity, cheap on a CPU
VERIFY_THRESHOLD = 3.0  # perplexity ratio that makes a spike a super weight (and an activation needed)
MATTERS_THRESHOLD = 1.25  # perplexity ratio from which a weight or an activation matters
VERIFY_CHARS = 6000  # characters of Wikipedia text to take (comfortably more than VERIFY_TOKENS)
ABLATED_TO = ("the channel's median over the positions where it is not massive (0 where it is massive "
              "at every position), from the layer where it first appears on")


@dataclass(frozen=True)
class VerdictScale:
    """What a perplexity ratio (with a weight zeroed, or an activation ablated) means.

    >>> scale = VerdictScale(needed=3, matters=1.25)
    >>> scale.activation(8860), scale.activation(2.7), scale.activation(1.08)
    ('needed', 'matters', 'not needed')
    >>> scale.weight(3.15), scale.weight(1.3), scale.weight(1.0)
    ('super weight', 'matters', 'spike only')
    >>> scale.legend()
    'needed (a weight: super weight) ≥ ×3, matters ≥ ×1.25, below ×1.25 not needed (a weight: spike only)'
    """

    needed: float = VERIFY_THRESHOLD
    matters: float | None = None  # default: MATTERS_THRESHOLD, or `needed` when that is lower

    def __post_init__(self):
        needed = check_threshold(self.needed)
        matters = min(MATTERS_THRESHOLD, needed) if self.matters is None else check_threshold(self.matters, "matters")
        if matters > needed:
            raise SuperweightError(f"the 'matters' threshold (×{matters:g}) is above the 'needed' one (×{needed:g})")
        object.__setattr__(self, "needed", needed)
        object.__setattr__(self, "matters", matters)

    def activation(self, ratio: float) -> str:
        return NEEDED if ratio >= self.needed else MATTERS if ratio >= self.matters else NOT_NEEDED

    def weight(self, ratio: float) -> str:
        return SUPER if ratio >= self.needed else MATTERS if ratio >= self.matters else SPIKE

    def legend(self) -> str:
        return (f"needed (a weight: super weight) ≥ ×{self.needed:g}, matters ≥ ×{self.matters:g}, "
                f"below ×{self.matters:g} not needed (a weight: spike only)")

    def to_dict(self) -> dict:
        return {"needed": self.needed, "matters": self.matters, "legend": self.legend()}


@dataclass
class Verification:
    text_source: str
    tokens: int
    ppl: float  # the model as it is
    ppl_all_pruned: float  # all early super weights zeroed together
    threshold: float  # the scale's `needed` ratio
    ablated_to: str = ABLATED_TO  # what an ablated massive activation is replaced with
    not_formed: list[tuple[int, int]] = field(default_factory=list)  # (channel, first layer): no verdict
    scale: VerdictScale = field(default_factory=VerdictScale)

    def to_dict(self) -> dict:
        return {**self.__dict__, "scale": self.scale.to_dict()}


def verification_text(min_chars: int = VERIFY_CHARS) -> tuple[str, str]:
    """(text, source name): the first Wikipedia articles if fetched, else the bundled passage."""
    from superweight.evaluate.sources import DOC_SEPARATOR, documents

    try:
        docs = documents("wiki")
    except SuperweightError:  # not fetched: `superweight data fetch wiki` makes it available
        return resources.files("superweight").joinpath("data/verify.txt").read_text(), "bundled passage"
    picked: list[str] = []
    while docs and sum(map(len, picked)) < min_chars:
        picked.append(docs.pop(0))
    return DOC_SEPARATOR.join(picked), "wiki"


def text_perplexity(lm: LoadedModel, ids: torch.Tensor) -> float:
    """Perplexity of one window of token ids [1, seq] with the model's own loss."""
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss))


def verify(lm: LoadedModel, super_weights: Sequence[SuperWeight], text: str | None = None,
           max_tokens: int = VERIFY_TOKENS, threshold: float = VERIFY_THRESHOLD,
           massive: Sequence[MassiveActivation] = (),
           criterion: MassiveCriterion = MassiveCriterion(),
           matters: float | None = None, on_event: OnEvent | None = None) -> Verification:
    """Zero each candidate alone, measure perplexity, and set its `ppl_ratio` and `verdict`; ablate
    each massive activation (`criterion`: detection's) and set its `ppl_ratio` and `verdict`
    ("needed" / "matters" / "not needed", on the `VerdictScale(threshold, matters)`); one that does
    not form on the text gets no verdict and is listed in `not_formed`."""
    return verify_with(lambda t, n: _TorchScorer(lm, t, n), super_weights, text=text, max_tokens=max_tokens,
                       threshold=threshold, massive=massive, criterion=criterion, matters=matters,
                       on_event=on_event)


class _TorchScorer:
    """One window of the text in the PyTorch model; weights zeroed and activations ablated by
    `superweight.interventions`."""

    def __init__(self, lm: LoadedModel, text: str, max_tokens: int):
        limit = min(max_tokens, getattr(lm.model.config, "max_position_embeddings", max_tokens) or max_tokens)
        self.lm = lm
        self.ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :limit].to(lm.device)
        if self.ids.shape[1] < 2:
            raise SuperweightError("the verification text is too short (fewer than 2 tokens)")

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[1])

    def ppl(self, pruned: Sequence = (), ablate: tuple | None = None, log=None) -> float:
        from contextlib import ExitStack

        with ExitStack() as stack:
            if pruned:
                stack.enter_context(prune(self.lm.view, list(pruned)))
            if ablate is not None:
                channel, first, criterion = ablate
                inner = stack.enter_context(ablate_massive(self.lm.view, channel, first, criterion))
                value = text_perplexity(self.lm, self.ids)
                log.replaced += inner.replaced
                log.calls += inner.calls
                return value
            return text_perplexity(self.lm, self.ids)


def verify_with(make_scorer, super_weights: Sequence[SuperWeight], *, text: str | None = None,
                max_tokens: int = VERIFY_TOKENS, threshold: float = VERIFY_THRESHOLD,
                massive: Sequence[MassiveActivation] = (),
                criterion: MassiveCriterion = MassiveCriterion(), matters: float | None = None,
                on_event: OnEvent | None = None) -> Verification:
    """`verify` with any engine: `make_scorer(text, max_tokens)` gives an object with `tokens` and
    `ppl(pruned=records, ablate=(channel, first_layer, MassiveCriterion), log=AblationLog)` (the
    PyTorch model here; llama.cpp in `superweight.runtime.detect`). `on_event` hears each perplexity
    ("verify", ended with the perplexity)."""
    from superweight.interventions import AblationLog

    scale = VerdictScale(threshold, matters)
    source = "given text"
    if text is None:
        text, source = verification_text()
    if not text.strip():
        raise SuperweightError("the verification text is empty")
    scorer = make_scorer(text, max_tokens)
    early = [sw for sw in super_weights if not sw.late]
    emit, done = emitter(on_event), [0]
    total = 2 + len(super_weights) + (len(early) if len(early) > 1 else 0) + len(massive)

    def ppl(name: str, *args, **kwargs) -> float:
        done[0] += 1
        emit(VERIFY, name, done[0], total)
        value = scorer.ppl(*args, **kwargs)
        emit(VERIFY, name, done[0], total, value, ended=True)
        return value

    base = ppl("as loaded")
    all_pruned = ppl("early candidates zeroed", early)
    for sw in super_weights:
        sw.ppl_ratio = ppl(f"{sw.label()} zeroed", [sw]) / base
        if any(sw is o for o in early) and len(early) > 1:  # two weights can make one super activation together
            others = [o for o in early if o is not sw]
            sw.ppl_ratio_given_others = all_pruned / ppl(f"early candidates but {sw.label()} zeroed", others)
        joint = sw.ppl_ratio_given_others or 0.0
        sw.verdict = scale.weight(max(sw.ppl_ratio, joint))
    not_formed = []
    for act in massive:
        log = AblationLog(act.channel, act.first_layer)
        value = ppl(f"channel {act.channel} ablated", ablate=(act.channel, act.first_layer, criterion), log=log)
        if log.replaced == 0:  # nothing to ablate on this text: no evidence either way
            act.ppl_ratio, act.verdict = None, None
            not_formed.append((act.channel, act.first_layer))
            continue
        act.ppl_ratio = value / base
        act.verdict = scale.activation(act.ppl_ratio)
    return Verification(source, scorer.tokens, base, all_pruned, scale.needed, not_formed=not_formed, scale=scale)


def check_threshold(threshold, what: str = "verification") -> float:
    """A verification threshold: a perplexity ratio above 1 (a finite number)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise SuperweightError(f"the {what} threshold {threshold!r} is not a number") from None
    if not math.isfinite(value) or value <= 1:
        raise SuperweightError(f"the {what} threshold is a perplexity ratio above 1, got {threshold!r}")
    return value
