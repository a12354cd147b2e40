"""Perplexity and KL divergence of a GGUF in llama.cpp, on the same windows as our PyTorch evaluator.

The token ids are ours — the text tokenized by the loaded model's Hugging Face tokenizer and cut
into non-overlapping windows by `superweight.evaluate.perplexity` — and are fed to llama.cpp as
they are (no BOS is substituted for a window's first token). Each window is one llama.cpp graph
with an empty KV cache and, as `llama-perplexity` scores, only the second half counts: the logits
at positions `seqlen // 2 … seqlen − 2` predict tokens `seqlen // 2 + 1 … seqlen − 1`, so a window
of `seqlen` tokens scores `seqlen − 1 − seqlen // 2` of them (our PyTorch evaluator scores all
`seqlen − 1`; `score_torch` scores the second half too, for a like-for-like comparison).

The KL divergence statistics are those `llama-perplexity --kl-divergence` prints: KL(base ‖ model)
per scored token (natural log), its mean ± standard error, median, percentiles, maximum; the share
of tokens where both pick the same top token; Δp (the model's probability of the right token minus
the base's); the perplexity of both and their ratio. One window's logits are in memory at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from superweight.errors import SuperweightError

SCORING = ("llama-perplexity: non-overlapping windows of our token ids, each its own context, "
           "only the second half of each window scored (positions seqlen//2 … seqlen−2 predict the next token)")
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0)

Logits = Callable[[list[int]], np.ndarray]  # one window's token ids → float32 [n, vocab]


@dataclass
class GgufPerplexity:
    """Perplexity of a model on windows, scored as llama-perplexity scores."""

    model: str
    ppl: float
    ppl_stderr: float
    nll: float
    tokens: int  # scored tokens
    windows: int
    seqlen: int
    first_scored: int  # first predicted position inside a window
    seconds: float
    scoring: str = SCORING

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KLDivergence:
    """KL(base ‖ model) over the scored tokens, with what `llama-perplexity --kl-divergence` prints."""

    model: str
    reference: str
    tokens: int
    windows: int
    seqlen: int
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_max: float
    kld_min: float
    kld_percentiles: dict[str, float]
    same_top: float  # share of scored tokens where both models' top token is the same
    same_top_stderr: float
    delta_p_mean: float  # mean of p_model(right token) − p_base(right token)
    delta_p_rms: float
    ppl: float
    ppl_reference: float
    ppl_ratio: float  # ppl / ppl_reference = exp(mean ln-ratio)
    ln_ppl_ratio: float
    seconds: float
    scoring: str = SCORING
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --- logits providers ---------------------------------------------------------------------------------
def gguf_logits(model, *, n_ctx: int = 512, n_threads: int | None = None
                ) -> tuple[str, Logits, Callable[[], None]]:
    """(name, logits function, close) for a GGUF path (opened with a context of `n_ctx`) or an open
    `LlamaCppModel` (left open)."""
    from superweight.runtime.llamacpp import LlamaCppModel

    if isinstance(model, LlamaCppModel):
        return str(model.path), model.logits, lambda: None
    m = LlamaCppModel(model, n_ctx=n_ctx, n_threads=n_threads)
    return str(model), m.logits, m.close


def torch_logits(lm) -> tuple[str, Logits, Callable[[], None]]:
    """(name, logits function, close) for a `LoadedModel` (its PyTorch forward, in eval mode)."""
    from superweight.model.offload import input_device

    def logits(tokens: list[int]) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.tensor([tokens], device=input_device(lm.model))
            return lm.model(input_ids=ids, use_cache=False).logits[0].float().cpu().numpy()

    return lm.ref, logits, lambda: None


def _provider(model, seqlen: int, n_threads: int | None):
    if hasattr(model, "model") and hasattr(model, "tokenizer"):  # a LoadedModel
        return torch_logits(model)
    return gguf_logits(model, n_ctx=seqlen, n_threads=n_threads)


# --- the statistics -----------------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _check(windows: torch.Tensor) -> tuple[int, int]:
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 4:
        raise SuperweightError("scoring needs at least one window of at least 4 tokens")
    return windows.shape[0], windows.shape[1]


def window_nll(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """NLL of each scored token of one window (second half, as llama-perplexity): float64 [k]."""
    n = len(tokens)
    first = n // 2
    logp = _log_softmax(logits[first:n - 1])  # [k, vocab]
    return -logp[np.arange(n - 1 - first), np.asarray(tokens[first + 1:])]


def gguf_perplexity(model, windows: torch.Tensor, *, n_threads: int | None = None) -> GgufPerplexity:
    """Perplexity of `model` (a GGUF path, a `LlamaCppModel`, or a `LoadedModel`) on `windows`
    `[n, seqlen]`, scored as llama-perplexity scores (second half of each window).

    `ppl_stderr` is llama-perplexity's "±": ppl · sqrt(var(nll) / (tokens − 1)).

    >>> r = gguf_perplexity("model-q4km.gguf", text_windows(lm, "wiki", seqlen=512))  # doctest: +SKIP
    """
    n, seqlen = _check(windows)
    start = time.perf_counter()
    name, logits, close = _provider(model, seqlen, n_threads)
    total = total2 = 0.0
    count = 0
    try:
        for w in windows.tolist():
            nll = window_nll(logits(w), w)
            total, total2, count = total + nll.sum(), total2 + (nll * nll).sum(), count + nll.size
    finally:
        close()
    mean = total / count
    ppl = math.exp(mean)
    var = total2 / count - mean * mean
    err = ppl * math.sqrt(var / (count - 1)) if count > 1 and var > 0 else 0.0
    return GgufPerplexity(model=name, ppl=ppl, ppl_stderr=err, nll=mean, tokens=count, windows=n,
                          seqlen=seqlen, first_scored=seqlen // 2, seconds=time.perf_counter() - start)


def kl_divergence(model, reference, windows: torch.Tensor, *, n_threads: int | None = None) -> KLDivergence:
    """KL(reference ‖ model) on the scored tokens of `windows`, one window at a time.

    `model` and `reference` are each a GGUF path, a `LlamaCppModel`, or a `LoadedModel` (PyTorch
    logits); both must have the same vocabulary.

    >>> r = kl_divergence("model-q4km.gguf", "model-f32.gguf", windows)  # doctest: +SKIP
    >>> r.kld_mean, r.same_top  # doctest: +SKIP
    """
    return kl_divergences([model], reference, windows, n_threads=n_threads)[0]


def kl_divergences(models, reference, windows: torch.Tensor, *, n_threads: int | None = None,
                   per_token: bool = False) -> list[KLDivergence]:
    """`kl_divergence` of several models against one reference, the reference run once per window
    (each model's and the reference's logits of one window in memory at a time). `per_token` keeps
    each scored token's KLD and same-top flag in `extra` (for paired comparisons, `paired_difference`)."""
    n, seqlen = _check(windows)
    first = seqlen // 2
    opened = []
    try:
        for m in [reference, *models]:
            opened.append(_provider(m, seqlen, n_threads))
        (ref_name, logits_b, _), rest = opened[0], opened[1:]
        acc = [_Tally() for _ in rest]
        for w in windows.tolist():
            lb = logits_b(w)
            b = _log_softmax(lb[first:seqlen - 1])  # [k, vocab]
            right = np.asarray(w[first + 1:])
            for tally, (_, logits_q, _) in zip(acc, rest):
                t = time.perf_counter()
                lq = logits_q(w)
                if lq.shape[-1] != lb.shape[-1]:
                    raise SuperweightError(f"the models' vocabularies differ ({lq.shape[-1]} vs {lb.shape[-1]} tokens)")
                tally.add(_log_softmax(lq[first:seqlen - 1]), b, right)
                tally.seconds += time.perf_counter() - t
    finally:
        for _, _, close in opened:
            close()
    return [tally.result(name, ref_name, n, seqlen, per_token) for tally, (name, _, _) in zip(acc, rest)]


@dataclass
class _Tally:
    """Per scored token: KLD, same top token, Δp, both NLLs (a few floats per token, no logits)."""

    parts: dict = field(default_factory=lambda: {k: [] for k in ("kld", "top", "dp", "nq", "nb")})
    seconds: float = 0.0

    def add(self, q: np.ndarray, b: np.ndarray, right: np.ndarray) -> None:
        rows = np.arange(right.size)
        self.parts["kld"].append((np.exp(b) * (b - q)).sum(axis=-1))
        self.parts["top"].append(q.argmax(axis=-1) == b.argmax(axis=-1))
        self.parts["dp"].append(np.exp(q[rows, right]) - np.exp(b[rows, right]))
        self.parts["nq"].append(-q[rows, right])
        self.parts["nb"].append(-b[rows, right])

    def result(self, name: str, ref_name: str, n: int, seqlen: int, per_token: bool = False) -> KLDivergence:
        kld, top, dp, nq, nb = (np.concatenate(self.parts[k]) for k in ("kld", "top", "dp", "nq", "nb"))
        kld = np.maximum(kld, 0.0)  # float rounding can leave -1e-17 where the distributions are equal
        k = kld.size
        share = float(top.mean())
        return KLDivergence(
            model=name, reference=ref_name, tokens=k, windows=n, seqlen=seqlen,
            kld_mean=float(kld.mean()), kld_stderr=float(kld.std(ddof=1) / math.sqrt(k)) if k > 1 else 0.0,
            kld_median=float(np.median(kld)), kld_max=float(kld.max()), kld_min=float(kld.min()),
            kld_percentiles={f"{p:g}": float(np.percentile(kld, p)) for p in KLD_PERCENTILES},
            same_top=share, same_top_stderr=math.sqrt(share * (1 - share) / (k - 1)) if k > 1 else 0.0,
            delta_p_mean=float(dp.mean()), delta_p_rms=float(np.sqrt((dp * dp).mean())),
            ppl=math.exp(nq.mean()), ppl_reference=math.exp(nb.mean()),
            ppl_ratio=math.exp(nq.mean() - nb.mean()), ln_ppl_ratio=float(nq.mean() - nb.mean()),
            seconds=self.seconds,
            extra={"kld": kld.tolist(), "same_top": top.astype(int).tolist()} if per_token else {})


def paired_difference(a: KLDivergence, b: KLDivergence) -> dict:
    """Mean KLD of `a` minus that of `b` over the same scored tokens, with the standard error of the
    per-token differences (negative: `a` is closer to the reference); also the same-top difference.
    Both need `per_token=True`."""
    if not (a.extra.get("kld") and b.extra.get("kld")) or len(a.extra["kld"]) != len(b.extra["kld"]):
        raise SuperweightError("a paired difference needs per-token KLDs of the same tokens (per_token=True)")
    d = np.asarray(a.extra["kld"]) - np.asarray(b.extra["kld"])
    t = np.asarray(a.extra["same_top"]) - np.asarray(b.extra["same_top"])
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return {"kld_diff": float(d.mean()), "kld_diff_stderr": se, "same_top_diff": float(t.mean()),
            "same_top_diff_stderr": float(t.std(ddof=1) / math.sqrt(t.size)) if t.size > 1 else 0.0,
            "tokens": int(d.size)}


def score_torch(lm, windows: torch.Tensor) -> GgufPerplexity:
    """Our PyTorch model scored exactly as `gguf_perplexity` scores a GGUF (second half of each window)."""
    return gguf_perplexity(lm, windows)


def text_windows(lm, source="wiki", *, seqlen: int = 512, max_tokens: int | None = None,
                 hub: bool = False, tokenizer=None) -> torch.Tensor:
    """Our evaluator's windows `[n, seqlen]` of a text (a registered name, a file, or a list of
    documents), tokenized by `lm`'s tokenizer (or `tokenizer`, e.g. one read from a GGUF, with
    `lm=None`) and cut by `superweight.evaluate.perplexity`; an empty text is refused."""
    from superweight.evaluate import sources
    from superweight.evaluate.perplexity import tokenize, windows

    docs = list(source) if isinstance(source, (list, tuple)) else sources.documents(source, hub=hub)
    if not any(isinstance(d, str) and d.strip() for d in docs):
        raise SuperweightError("the text is empty")
    return windows(tokenize(tokenizer if tokenizer is not None else lm.tokenizer, docs, max_tokens), seqlen)
