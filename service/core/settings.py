"""Typed settings, read once from ``SKETCHWATCH_*`` environment variables."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# Peak resident size of one scoring pool process with its model loaded, by scoring runtime, the largest
# measured. LiteRT: 120-128 MB after 10^4 sketches (the imports are most of it; the stroke kernels are C). Keras, the
# fallback for an artifact without model.tflite: 936 MB on a fresh install (CI, the "scoring process ready"
# line), 769-809 MB on the development machine. Re-measure when the scoring runtime or its imports change.
POOL_PROCESS_FOOTPRINT_MB = {"litert": 130, "keras": 940}
# The default memory cap leaves half the footprint again on top: installs differ by a fifth (library builds,
# CPU kernels), a process grows with the batch shapes it has seen, and the worker reports a process that
# starts above 90% of its cap.
MEMORY_CAP_HEADROOM = 1.5


def default_data_dir() -> Path:
    """Where the zero-setup SQLite database and broker files live."""
    return Path(os.environ.get("SKETCHWATCH_DATA_DIR", Path.cwd() / "instance"))


class Settings(BaseSettings):
    """All configuration of the service, the worker and the CLI."""

    model_config = SettingsConfigDict(env_prefix="SKETCHWATCH_", extra="ignore", frozen=True)

    env: Literal["development", "production", "testing"] = "development"
    secret_key: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    broker_url: str = ""
    # Redis re-delivers an unacked message after this long; it must exceed the longest task.
    visibility_timeout_s: int = 3600
    model_dir: str | None = None
    default_threshold: float | None = None
    # Model registry (docs/models.md): where registered artifacts are copied (default <data_dir>/models), the
    # http(s) URL other hosts read that folder at (a tar.gz per version is written then), where workers cache
    # downloaded artifacts (default <data_dir>/model-cache), and how stale a worker's view of the active and
    # shadow versions may be.
    model_store: Path | None = None
    model_store_url: str = ""
    model_cache_dir: Path | None = None
    model_poll_s: float = Field(default=2.0, ge=0, le=300)
    # Stored sketches re-scored per task after a promote: small enough that live scoring tasks interleave.
    rescore_batch: int = Field(default=500, ge=1, le=10_000)
    # Training from reviews (docs/model.md, "Retraining from reviews"): the folder with the base training files
    # named in the parent model's model.json (default: the shared Quick Draw folder beside the repository),
    # the fewest usable staff-reviewed sketches that start a run, the epochs of a warm-started run, the seeded
    # share of reviewed sketches held back for evaluation, how much more a reviewed non-cat weighs than a base
    # one, the time budget, and the deliveries a run may take before a lost worker marks it failed.
    training_data_dir: Path | None = None
    training_min_reviews: int = Field(default=20, ge=1)
    training_epochs: int = Field(default=12, ge=1, le=200)
    training_holdback: float = Field(default=0.2, ge=0.0, lt=0.9)
    training_review_weight: float = Field(default=40.0, ge=0.0, le=1000.0)
    training_warm_start: bool = True
    training_max_minutes: float = Field(default=4.0, gt=0, le=240)
    training_max_attempts: int = Field(default=2, ge=1, le=10)
    training_seed: int = 0

    max_content_length: int = 8 * 1024 * 1024
    max_batch: int = 1000
    max_strokes: int = 256
    max_points: int = 8192
    max_image_pixels: int = 16_000_000

    worker_batch_size: int = 256
    # Each web process sends at most one scoring task per this interval, gathering ids meanwhile (0: one per request).
    enqueue_linger_ms: float = Field(default=250.0, ge=0, le=10_000)
    # A key revoked through another process stops working within this long (0 looks it up every request).
    api_key_cache_s: float = Field(default=5.0, ge=0, le=300)
    tf_threads: int = 1
    # A pool process whose peak resident size passed this is replaced after its task (0: never); a leak
    # in TensorFlow or a native library then costs one model load, not the host's memory.
    # None derives it from the runtime the model will load (see POOL_PROCESS_FOOTPRINT_MB).
    worker_max_memory_mb: int | None = Field(default=None, ge=0)
    # Scoring is background work: at a lower CPU priority it never delays an intake answer on a shared host.
    worker_nice: int = Field(default=10, ge=0, le=19)
    task_max_retries: int = 5
    sweep_interval_s: float = 30.0
    sweep_after_s: float = 120.0
    max_attempts: int = 5
    # Partitions of sketches on PostgreSQL (service.core.partitions): days per partition, and how many
    # partitions beyond the current one beat keeps made ahead of time.
    partition_days: int = Field(default=7, ge=1, le=366)
    partitions_ahead: int = Field(default=2, ge=1, le=52)
    # Re-flagging after a threshold change: rows per transaction of the beat task that finishes what the
    # change itself did not (service.core.sketches.reflag; the threshold page shows its progress).
    reflag_batch: int = Field(default=20_000, ge=100, le=1_000_000)
    # Retention (service.core.retention), in days, 0 keeping for ever; an admin's values on the dashboard
    # replace these. Images: bitmaps and reconstructions of unflagged, unreviewed sketches. Sketches: whole
    # unflagged, unreviewed sketches. Kept: flagged or reviewed sketches with their reviews (at least Sketches).
    retention_images_days: int = Field(default=30, ge=0, le=36_500)
    retention_sketches_days: int = Field(default=0, ge=0, le=36_500)
    retention_kept_days: int = Field(default=0, ge=0, le=36_500)
    # Beat applies the retention limits this often.
    retention_interval_s: float = Field(default=3600.0, ge=60, le=7 * 86_400)

    # Monitoring and alerts (docs/monitoring.md). Beat evaluates every alert rule this often.
    alert_interval_s: float = Field(default=30.0, ge=1, le=3600)
    # Webhook destinations an admin may set: hosts, *.domains, IPs or CIDRs, comma-separated. Empty: any
    # public address, never a private, loopback, link-local or otherwise reserved one (SSRF, see the docs).
    webhook_allowlist: str = ""
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    # The first retry waits this long, each next one twice as long (at most webhook_backoff_max_s).
    webhook_backoff_s: float = Field(default=5.0, ge=0, le=3600)
    webhook_backoff_max_s: float = Field(default=600.0, ge=0, le=86_400)
    # The dashboard's address as receivers reach it: the base of the links in webhook payloads.
    public_url: str = "http://127.0.0.1:8000"
    # Drift reference: the model's held-out cat score percentiles, or the week before the recent window.
    drift_reference: Literal["model", "baseline"] = "model"
    drift_window_s: int = Field(default=3600, ge=60, le=30 * 86_400)

    ratelimit_enabled: bool = True
    ratelimit_storage_uri: str = "memory://"
    ratelimit_submit: str = "6000 per minute"
    ratelimit_login: str = "10 per minute"
    ratelimit_headers: bool = False  # X-RateLimit-* on every answer (two more storage round trips each)

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("webhook_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        """Refuse a malformed webhook allowlist at start-up rather than at the first delivery."""
        from service.core.webhooks import parse_allowlist

        parse_allowlist(value)
        return value

    @model_validator(mode="after")
    def _fill_and_check(self) -> "Settings":
        """Derive zero-setup defaults and refuse to run production without secrets."""
        if self.env == "production":
            missing = [n for n in ("secret_key", "database_url", "broker_url") if not getattr(self, n)]
            if missing:
                names = ", ".join("SKETCHWATCH_" + n.upper() for n in missing)
                raise ValueError(f"production needs {names}")
        if not self.secret_key:
            # Development only: sessions do not survive a restart, which is what we want there.
            object.__setattr__(self, "secret_key", secrets.token_hex(32))
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'sketchwatch.db'}")
        if not self.broker_url:
            # Celery's filesystem transport: no server, and measured ~5x faster than sqla+sqlite here.
            object.__setattr__(self, "broker_url", "filesystem://")
        return self

    @property
    def broker_dir(self) -> Path:
        """Folder of the serverless filesystem broker."""
        return self.data_dir / "broker"

    @property
    def training_data_path(self) -> Path:
        """Folder of the base training files: as configured, else the shared Quick Draw folder."""
        if self.training_data_dir is not None:
            return self.training_data_dir
        # The folder models.export.default_data_dir names, without importing the ML package here.
        return Path(__file__).resolve().parents[3] / "shared" / "data" / "quickdraw"

    @property
    def model_store_dir(self) -> Path:
        """Folder of the model store (registered artifacts, one folder per version)."""
        return self.model_store or self.data_dir / "models"

    @property
    def model_cache_path(self) -> Path:
        """Folder where workers unpack artifacts they downloaded by URL."""
        return self.model_cache_dir or self.data_dir / "model-cache"

    @property
    def uses_redis(self) -> bool:
        """True when the broker is Redis (production)."""
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def memory_cap_mb(self) -> int:
        """The pool processes' memory cap in MB (0: none): as configured, else derived from the scoring runtime."""
        if self.worker_max_memory_mb is not None:
            return self.worker_max_memory_mb
        from models.artifact import has_tflite

        runtime = "litert" if has_tflite(self.model_dir) else "keras"
        return round(POOL_PROCESS_FOOTPRINT_MB[runtime] * MEMORY_CAP_HEADROOM)


def get_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment, with ``overrides`` (lowercase names) taking precedence."""
    if overrides:
        return Settings(**{k.lower(): v for k, v in overrides.items()})
    return _env_settings()


@lru_cache(maxsize=1)
def _env_settings() -> Settings:
    return Settings()
