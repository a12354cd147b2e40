"""lm-eval task definitions for offline use, mirroring lm-eval's standard ones.

Each YAML here is a copy of the matching lm-eval 0.4 task (same prompt, choices, target and metrics)
with the hub path replaced by a local loader. The data file itself is only known at run time (it lives
in the user's cache), so `superweight.evaluate.zeroshot` writes a two-line YAML that `include`s one of
these and fills in `dataset_kwargs.data_files`. `task_utils.py` holds the few prompt functions that
lm-eval defines in Python (HellaSwag preprocessing, WinoGrande's partial scoring).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
