"""Model plumbing: loading, architecture adapters and scoped hooks."""

from superweight.model.adapters import ADAPTERS, Adapter, DownProj, ModelView, adapter_for
from superweight.model.load import DEFAULT_MODEL, LoadedModel, load_model, wrap_model

__all__ = ["ADAPTERS", "Adapter", "DownProj", "ModelView", "adapter_for", "DEFAULT_MODEL",
           "LoadedModel", "load_model", "wrap_model"]
