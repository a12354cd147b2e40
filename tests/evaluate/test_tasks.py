"""The offline task YAMLs score exactly like lm-eval's standard ones: same prompts, targets, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from superweight.evaluate import sources
from superweight.tasks import TASKS_DIR

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

STANDARD = Path(lm_eval.__file__).parent / "tasks"
STANDARD_YAML = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
                 "hellaswag": "hellaswag/hellaswag.yaml", "lambada_openai": "lambada/lambada_openai.yaml",
                 "piqa": "piqa/piqa.yaml", "sciq": "sciq/sciq.yaml", "winogrande": "winogrande/default.yaml"}
SCORING_KEYS = ("task", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list",
                "target_delimiter", "fewshot_delimiter", "num_fewshot")
SAMPLE_DOCS = {
    "winogrande": {"sentence": "The trophy did not fit in the suitcase because _ was too big.",
                   "option1": "the trophy", "option2": "the suitcase", "answer": "1"},
}


def _pair(task: str) -> tuple[dict, dict]:
    ours = load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=True)
    theirs = load_yaml(STANDARD / STANDARD_YAML[task], resolve_func=True)
    return ours, theirs


@pytest.mark.parametrize("task", sorted(STANDARD_YAML))
def test_offline_yaml_mirrors_lm_eval(task):
    if not (STANDARD / STANDARD_YAML[task]).is_file():
        pytest.skip(f"this lm-eval has no {STANDARD_YAML[task]}")
    ours, theirs = _pair(task)
    for key in SCORING_KEYS:
        a, b = ours.get(key), theirs.get(key)
        if callable(a) or callable(b):
            doc = SAMPLE_DOCS[task]
            assert a(doc) == b(doc), key
        else:
            assert a == b, key
    assert ours["dataset_path"] in ("json", "arrow") and "training_split" not in ours


def test_hellaswag_preprocessing_matches():
    datasets = pytest.importorskip("datasets")
    ours, theirs = _pair("hellaswag")
    doc = {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow [title] covering",
           "ctx_b": "the window of a car", "endings": ["a [step] b", " c  d "], "label": "1"}
    ds = datasets.Dataset.from_list([doc])
    assert ours["process_docs"](ds).to_list() == theirs["process_docs"](ds).to_list()


def test_every_task_source_has_a_yaml():
    for name in sources.TASK_SOURCES:
        assert (TASKS_DIR / f"{sources.SOURCES[name].task}.yaml").is_file()
