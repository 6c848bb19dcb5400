"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

QUICKDRAW_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "quickdraw"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only Quick Draw data folder beside the repo; tests using it skip only when it is absent."""
    if not QUICKDRAW_DIR.is_dir():
        pytest.skip(f"shared Quick Draw data not found at {QUICKDRAW_DIR}")
    return QUICKDRAW_DIR


pytest_plugins = ["stack_fixtures"]
