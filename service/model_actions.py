"""The registry actions as the web does them (dashboard and API alike): change, commit, then queue the re-scoring.

The registry (service.core.registry) changes statuses and leaves the commit to its caller; a re-scoring job
must reach the queue only once the promote it follows is committed, so both happen here, in that order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.core import registry
from service.core.schema import ModelVersion, RescoreJob

log = logging.getLogger(__name__)


@dataclass
class Switched:
    """The version now active and the re-scoring job started for it (None when none was asked for or sent)."""

    version: ModelVersion
    job: RescoreJob | None
    sent: bool


def _after_switch(session: Session, settings, celery, version: ModelVersion, actor: str, rescore: bool) -> Switched:
    job = registry.start_rescore(session, version.version, actor) if rescore else None
    session.commit()
    sent = False
    if job is not None:
        try:
            registry.enqueue_rescore(settings, job.id, app=celery)
            sent = True
        except Exception:  # noqa: BLE001 - the switch is committed either way; the job stays queued and visible
            log.warning("re-scoring job %s could not be sent", job.id, exc_info=True)
    return Switched(version, job, sent)


def bootstrap(session: Session, settings) -> None:
    """Register the configured model as active when the registry is empty (as the CLI does), and commit.

    A model that cannot be read is logged and left for the page or answer to show as "no versions".
    """
    try:
        registry.ensure_bootstrapped(session, settings)
    except registry.RegistryError:
        session.rollback()
        log.warning("the model registry could not be bootstrapped", exc_info=True)
        return
    session.commit()


def set_shadow(session: Session, version: str, actor: str) -> ModelVersion:
    """Put ``version`` in shadow and commit (RegistryError, nothing changed, when refused)."""
    try:
        found = registry.set_shadow(session, version, actor)
    except registry.RegistryError:
        session.rollback()
        raise
    session.commit()
    return found


def promote(session: Session, settings, celery, version: str, actor: str, rescore: bool = True) -> Switched:
    """Promote ``version``, commit, then queue the re-scoring of the stored sketches (RegistryError when refused)."""
    try:
        found = registry.promote(session, version, actor, settings=settings)
    except registry.RegistryError:
        session.rollback()
        raise
    return _after_switch(session, settings, celery, found, actor, rescore)


def rollback(session: Session, settings, celery, actor: str, rescore: bool = True) -> Switched:
    """Restore the previous active version, commit, then queue the re-scoring (RegistryError when refused)."""
    try:
        found = registry.rollback(session, actor, settings=settings)
    except registry.RegistryError:
        session.rollback()
        raise
    return _after_switch(session, settings, celery, found, actor, rescore)
