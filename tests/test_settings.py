"""Settings: read from SKETCHWATCH_* env, typed, with zero-setup defaults and fail-fast production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.settings import Settings, get_settings


def test_zero_setup_defaults_need_no_server(tmp_path):
    s = get_settings({"data_dir": tmp_path})
    assert s.database_url == f"sqlite:///{tmp_path / 'sketchwatch.db'}"
    assert s.broker_url == "filesystem://" and s.broker_dir == tmp_path / "broker"
    assert s.secret_key and len(s.secret_key) >= 32


def test_env_vars_are_read_and_typed(monkeypatch, tmp_path):
    monkeypatch.setenv("SKETCHWATCH_MAX_BATCH", "17")
    monkeypatch.setenv("SKETCHWATCH_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("SKETCHWATCH_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.max_batch == 17 and s.uses_redis


def test_bad_type_is_rejected(monkeypatch):
    monkeypatch.setenv("SKETCHWATCH_MAX_BATCH", "many")
    with pytest.raises(ValidationError, match="max_batch"):
        Settings()


@pytest.mark.parametrize("missing", ["secret_key", "database_url", "broker_url"])
def test_production_fails_fast_without_secrets(missing):
    values = {
        "env": "production",
        "secret_key": "x" * 40,
        "database_url": "postgresql+psycopg://u@h/db",
        "broker_url": "redis://r:6379/0",
    }
    values.pop(missing)
    with pytest.raises(ValidationError, match="SKETCHWATCH_" + missing.upper()):
        get_settings(values)


def test_the_memory_cap_default_follows_the_scoring_runtime(tmp_path):
    """LiteRT artifacts get a cap from LiteRT's footprint, Keras-only ones from TensorFlow's; a set value wins."""
    from service.core.settings import MEMORY_CAP_HEADROOM, POOL_PROCESS_FOOTPRINT_MB, Settings

    shipped = Settings(env="testing")
    assert shipped.memory_cap_mb == round(POOL_PROCESS_FOOTPRINT_MB["litert"] * MEMORY_CAP_HEADROOM)
    keras_only = Settings(env="testing", model_dir=str(tmp_path))
    assert keras_only.memory_cap_mb == round(POOL_PROCESS_FOOTPRINT_MB["keras"] * MEMORY_CAP_HEADROOM)
    assert Settings(env="testing", worker_max_memory_mb=0).memory_cap_mb == 0
    assert Settings(env="testing", worker_max_memory_mb=2048).memory_cap_mb == 2048
