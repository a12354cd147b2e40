"""Shared fixtures. Tests never touch the network; the default model is the packaged GGUF."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# No silent downloads in tests: unfetched data is the one-line error, unless a test fetches it itself
# (`fetched_data`) or tests first use with a wheel it put in the cache (tests/evaluate/test_sources.py).
os.environ.setdefault("SUPERWEIGHT_OFFLINE", "1")
CORES = max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _threads(request):
    """One thread for tiny models (dominated by thread start-up), all cores for the real model."""
    torch.set_num_threads(CORES if request.node.get_closest_marker("integration") else 1)
    yield


# Every data set a test reads from the user's cache (not the fake ones tests fetch into a temporary
# cache): fetched once per session, so no test depends on another having run first, and none skips.
NEEDED_DATA = ("wiki", "c4", "lambada", "arc_easy", "piqa", "ptb-train")


@pytest.fixture(scope="session")
def fetched_data():
    """The real evaluation data the tests use, fetched (once; cached afterwards) into the user's cache."""
    from superweight.evaluate import fetch

    fetch(NEEDED_DATA)
    return NEEDED_DATA


@pytest.fixture(scope="session")
def default_lm():
    """The real default model (smollm2-135m), loaded once per session from the cached copy."""
    from superweight.model import load_model

    return load_model("smollm2-135m", quiet=True)
