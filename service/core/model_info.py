"""The scoring model's metadata (model.json), read without importing TensorFlow."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import models


def model_dir(configured: str | None) -> Path:
    """The configured model directory, or the one shipped inside the package."""
    return Path(configured) if configured else Path(models.__file__).resolve().parent / "shipped"


@lru_cache(maxsize=8)
def model_meta(configured: str | None = None) -> dict:
    """Parsed model.json of the model in use ({} when there is none)."""
    path = model_dir(configured) / "model.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
