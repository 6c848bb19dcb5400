"""The flagging threshold in force, and its changes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core import sketches
from service.core.model_info import model_meta
from service.core.schema import MODEL_ACTIVE, ModelVersion, ThresholdChange

FALLBACK_THRESHOLD = 0.5
# Serialises "read threshold + write flags" between workers and a threshold change (PostgreSQL only;
# SQLite already serialises writers).
_ADVISORY_LOCK_KEY = 0x5C3A7C


def default_threshold(settings) -> float:
    """The threshold before anyone changed it: configured, else the model's suggestion."""
    if settings.default_threshold is not None:
        return float(settings.default_threshold)
    suggested = model_meta(settings.model_dir).get("suggested_threshold")
    return float(suggested) if suggested is not None else FALLBACK_THRESHOLD


def lock_threshold(session: Session, exclusive: bool = False) -> None:
    """Hold the threshold lock until this transaction ends, so flags never mix two thresholds.

    Workers take it shared (they don't block each other); a threshold change takes it exclusive.
    """
    if session.get_bind().dialect.name == "postgresql":
        fn = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
        session.execute(select(fn(_ADVISORY_LOCK_KEY)))


def current_threshold(session: Session, settings) -> float:
    """The latest applied threshold, or the default."""
    value = session.execute(
        select(ThresholdChange.value).order_by(ThresholdChange.id.desc()).limit(1)
    ).scalar_one_or_none()
    return float(value) if value is not None else default_threshold(settings)


def apply_threshold(session: Session, settings, value: float, who: str, reason: str = "") -> ThresholdChange:
    """Record a change and re-flag the stored scores in SQL, without the model.

    With a model registry, only the active version's sketches are re-flagged: the threshold is on its score
    scale, and sketches another version scored keep the flags of that version's threshold.
    """
    lock_threshold(session, exclusive=True)
    active = session.execute(
        select(ModelVersion.version).where(ModelVersion.status == MODEL_ACTIVE).limit(1)
    ).scalar_one_or_none()
    return apply_model_threshold(session, settings, value, who, reason, active)


def apply_model_threshold(
    session: Session, settings, value: float, who: str, reason: str, model_version: str | None
) -> ThresholdChange:
    """Record a change and re-flag the sketches scored by ``model_version`` (None: every scored sketch)."""
    lock_threshold(session, exclusive=True)
    previous = current_threshold(session, settings)
    change = ThresholdChange(value=float(value), previous=previous, changed_by=who, reason=reason or "")
    session.add(change)
    sketches.reflag(session, value, model_version)
    return change
