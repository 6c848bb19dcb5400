"""Worker heartbeats: each Celery worker's main process records itself every few seconds; the health panel
lists the workers seen, the queues they consume, and whether they are still alive.

A table rather than Celery's remote control (``inspect ping``): a page must not wait a broadcast's timeout,
and the serverless filesystem broker of ``sketchwatch up`` answers no broadcasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.core.schema import WorkerHeartbeat, utcnow

INTERVAL_S = 10.0
# Missing after three silent intervals; forgotten after a day.
STALE_AFTER = timedelta(seconds=3 * INTERVAL_S)
FORGET_AFTER = timedelta(days=1)


@dataclass
class WorkerSeen:
    """One worker as its heartbeats describe it."""

    name: str
    queues: str
    concurrency: int | None
    pid: int | None
    started_at: datetime
    seen_at: datetime
    stopped_at: datetime | None
    age_s: float

    @property
    def state(self) -> str:
        """"alive", "stopped" (shut down cleanly) or "missing" (silent: killed, hung or cut off)."""
        if self.stopped_at is not None:
            return "stopped"
        return "alive" if self.age_s <= STALE_AFTER.total_seconds() else "missing"

    @property
    def runs_alerts(self) -> bool:
        """True for a worker that consumes the alerts queue."""
        from service.core.celery_app import ALERTS_QUEUE

        return ALERTS_QUEUE in self.queues.split(",")


def record(conn: Connection, name: str, queues: str, concurrency: int | None, pid: int, started_at: datetime) -> None:
    """Upsert this worker's heartbeat (an UPDATE, and an INSERT the first time)."""
    now = utcnow()
    values = {"queues": queues[:200], "concurrency": concurrency, "pid": pid, "seen_at": now, "stopped_at": None,
              "started_at": started_at}  # fmt: skip
    done = conn.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(**values))
    if done.rowcount == 0:
        conn.execute(WorkerHeartbeat.__table__.insert().values(name=name[:200], **values))
    conn.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))


def stopped(conn: Connection, name: str) -> None:
    """Record a clean shutdown."""
    conn.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(stopped_at=utcnow()))


def workers_seen(session: Session, now: datetime | None = None) -> list[WorkerSeen]:
    """Every worker heard from in the last day, the most recently seen first."""
    from service.core.rollups import as_datetime

    now = as_datetime(now or utcnow())
    rows = session.execute(select(WorkerHeartbeat).order_by(WorkerHeartbeat.seen_at.desc())).scalars().all()
    return [
        WorkerSeen(
            name=r.name, queues=r.queues, concurrency=r.concurrency, pid=r.pid, started_at=as_datetime(r.started_at),
            seen_at=as_datetime(r.seen_at), stopped_at=as_datetime(r.stopped_at),
            age_s=max(0.0, (now - as_datetime(r.seen_at)).total_seconds()),
        )  # fmt: skip
        for r in rows
    ]
