"""Imports every API route module so they register on the blueprint."""

import importlib

for _name in ("sketches", "stats", "reviews", "openapi"):
    try:
        importlib.import_module(f"service.api.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - during bring-up only
        if exc.name != f"service.api.{_name}":
            raise
