"""The scoring model's metadata (model.json), read without importing TensorFlow."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from models.artifact import ArtifactError, read_meta, resolve_model_dir


@lru_cache(maxsize=8)
def model_meta(configured: str | None = None) -> dict[str, Any]:
    """Parsed model.json of the model in use ({} when it is missing or invalid)."""
    try:
        return read_meta(resolve_model_dir(configured))
    except ArtifactError:
        return {}
