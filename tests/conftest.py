"""Shared fixtures. Tests never touch the network; the default model is the packaged GGUF."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def default_lm():
    """The real default model (smollm2-135m), loaded once per session from the cached copy."""
    from superweight.model import load_model

    return load_model("smollm2-135m", quiet=True)
