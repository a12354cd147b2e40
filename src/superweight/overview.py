"""Everything the tool knows about one model, gathered for the report a person reads.

The report page is built from data, never from the terminal's text: detection with its causal
verification and the catalog comparison, the residual-stream trace, and the result files of other
runs (`ablate`, `stopwords`, `scale`, `quantize`, `eval`, `check`, `finetune` — each JSON says which
command made it), read back and checked, or run here on request (`ablate`, `quantize`). Every run
evaluates the model as it is and leaves its weights bit-identical.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from superweight._io import SCHEMA_VERSION, result_header
from superweight.errors import SuperweightError
from superweight.events import OnEvent
from superweight.selection import DETECTION, Selection
from superweight.verify import VERIFY_THRESHOLD, VerdictScale

# result kinds the report can show (the `kind` of a result file's header)
INCLUDABLE = ("ablate", "stopwords", "scale", "quantize", "eval", "check", "finetune", "census")
REPORT_BLOCKS = (128, 16384)  # Figure 7 in the report: a usual group size and a large block
REPORT_BITS = 4


@dataclass
class OverviewConfig:
    """What to gather. `verify` False skips the causal check (`verify_threshold`: the perplexity ratio
    that makes a candidate a super weight; `matters_threshold`: the one from which it matters);
    `ablate` / `quantize` run Table 1 and Figure 7 + Table 3
    with the given evaluator; `include` are result files to show."""

    prompts: tuple[str, ...] = ()  # default: detection's prompt; the trace follows the first
    verify_threshold: float = VERIFY_THRESHOLD
    matters_threshold: float | None = None  # default: verify.MATTERS_THRESHOLD (or verify_threshold if lower)
    verify: bool = True
    ablate: bool = False
    quantize: bool = False
    bits: int = REPORT_BITS
    blocks: tuple[int, ...] = REPORT_BLOCKS
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        scale = VerdictScale(self.verify_threshold, self.matters_threshold)
        self.verify_threshold, self.matters_threshold = scale.needed, scale.matters
        if not self.blocks or any(not isinstance(b, int) or b < 1 for b in self.blocks):
            raise SuperweightError(f"block sizes must be positive whole numbers, got {list(self.blocks)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Overview:
    """The model's description, detection (verified), its trace, and other results as payloads."""

    model: dict
    detection: object  # superweight.detect.DetectionRun
    trace: object  # superweight.activations.TraceResult
    results: list[dict] = field(default_factory=list)  # result files (header + figures), in order
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**result_header("report", model=self.model, config=self.config),
                "detection": self.detection.to_dict(), "trace": self.trace.to_dict(),
                "results": self.results}


def read_result(path: str | Path) -> dict:
    """A result file written by a `superweight` command (`--json`), checked: one clear line for a
    missing or unreadable file, something that is not a superweight result, or a kind the report
    cannot show."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuperweightError(f"result file {str(path)!r} does not exist") from None
    except OSError as e:
        raise SuperweightError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SuperweightError(f"{str(path)!r} is not a JSON file ({e})") from None
    if not isinstance(payload, dict) or payload.get("tool") != "superweight":
        raise SuperweightError(f"{str(path)!r} is not a superweight result (no \"tool\": \"superweight\")")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise SuperweightError(f"{str(path)!r} has schema version {payload.get('schema_version')!r}; "
                               f"this superweight reads version {SCHEMA_VERSION}")
    if payload.get("kind") not in INCLUDABLE:
        raise SuperweightError(f"{str(path)!r} is a {payload.get('kind')!r} result; the report shows "
                               f"{', '.join(INCLUDABLE)} (detection and the trace it runs itself)")
    payload.setdefault("source_file", str(path))
    return payload


def planned_evaluations(config: OverviewConfig) -> int:
    """How many evaluations `gather` runs (for a progress bar): Table 1's four conditions, the
    sweep's baseline and methods × blocks, and the three W8A8 methods."""
    from superweight.ablation import CONDITIONS
    from superweight.quantize.sweep import SWEEP_METHODS, TABLE3

    n = len(CONDITIONS) if config.ablate else 0
    if config.quantize:
        n += 1 + len(SWEEP_METHODS) * len(config.blocks) + 1 + len(TABLE3)
    return n


def gather(lm, config: OverviewConfig | None = None, detect_config=None, evaluator: Callable | None = None,
           on_event: OnEvent | None = None) -> Overview:
    """Detect (and verify), trace, read the included results, and run what `config` asks for.

    `detect_config` (a `DetectConfig`) sets detection's thresholds (default: its defaults).
    `evaluator(lm) -> summary` evaluates the model as it is (an `EvalSettings.evaluator()`); it is
    needed only for `ablate` / `quantize`. `on_event` hears detection's prompts and verification,
    then each evaluation as a "stage" (`planned_evaluations(config)` of them; `superweight.events`).

    >>> ov = gather(load_model("smollm2-135m"))
    >>> ov.detection.result.massive[0].origin.kind
    'super weight'
    """
    from superweight.activations import trace
    from superweight.detect import DEFAULT_PROMPT, DetectConfig, run_detection

    config = config or OverviewConfig()
    included = [read_result(p) for p in config.include]  # every file checked before any work
    if (config.ablate or config.quantize) and evaluator is None:
        raise SuperweightError("running the ablation or the quantization sweep needs an evaluator")
    prompts = list(config.prompts) or [DEFAULT_PROMPT]
    detect_config = detect_config or DetectConfig()
    run = run_detection(lm, prompts, detect_config, verify_threshold=config.verify_threshold if config.verify else None,
                        matters_threshold=config.matters_threshold, on_event=on_event)
    # the trace follows the first prompt; a detection merged over several prompts is not that prompt's
    traced = trace(lm, prompts[0], detect_config, detection=run.result if len(set(prompts)) == 1 else None)
    results = list(included)
    detected = Selection(list(run.result.early), DETECTION)
    if config.ablate:
        results.append(_ablate(lm, detected, evaluator, on_event))
    if config.quantize:
        results += _quantize(lm, detected, evaluator, config, on_event)
    return Overview(lm.describe(), run, traced, results, {**config.to_dict(), "detect": detect_config.to_dict()})


def _ablate(lm, selection: Selection, evaluator, on_event: OnEvent | None) -> dict:
    from superweight.ablation import ablation_table

    return ablation_table(lm, selection, evaluator, on_event=on_event).to_dict()


def _quantize(lm, selection: Selection, evaluator, config: OverviewConfig, on_event: OnEvent | None) -> list[dict]:
    from superweight.quantize.sweep import run_sweep, run_w8a8

    sweep = run_sweep(lm, evaluator, [config.bits], list(config.blocks), super_weights=selection, on_event=on_event)
    w8a8 = run_w8a8(lm, evaluator, on_event=on_event)
    return [sweep.to_dict(), w8a8.to_dict()]
