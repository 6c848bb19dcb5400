"""Beat's database upkeep for issue 20: partitions made ahead, the score-bucket rollup folded, re-flagging finished.

Both run on the alerts queue (database work, no model). ``maintain_partitions`` keeps the current period and
``SKETCHWATCH_PARTITIONS_AHEAD`` more made (service.core.partitions). ``fold_score_rollup`` moves the rollup's
pending deltas into score_buckets and advances a re-flag left by a large threshold change, one batch of
``SKETCHWATCH_REFLAG_BATCH`` rows per transaction, so the workers' threshold lock is never held for long.
"""

from __future__ import annotations

import logging

from service.core import partitions, score_rollup, sketches, thresholds
from service.core.celery_app import FOLD_SCORE_ROLLUP_TASK, MAINTAIN_PARTITIONS_TASK, celery_app
from service.core.db import db
from service.core.schema import utcnow
from worker.lifecycle import ensure_database, settings

log = logging.getLogger(__name__)


@celery_app.task(name=MAINTAIN_PARTITIONS_TASK)
def maintain_partitions() -> dict:
    """Make the partitions of the current period and the next ones (PostgreSQL; nothing on SQLite)."""
    ensure_database()
    with db.session_scope() as session:
        made = partitions.ensure_partitions(session, utcnow(), settings.partition_days, settings.partitions_ahead)
    if made:
        log.info("made partitions", extra={"partitions": made})
    return {"made": made}


@celery_app.task(name=FOLD_SCORE_ROLLUP_TASK)
def fold_score_rollup() -> dict:
    """Advance a pending re-flag to its end, batch by batch, then fold the rollup's deltas."""
    ensure_database()
    reflagged = folded = 0
    while True:
        with db.session_scope() as session:
            # Shared, as the workers take it: a threshold change (exclusive) waits for this batch only.
            thresholds.lock_threshold(session)
            step = sketches.continue_reflag(session, settings.reflag_batch)
        # Folded after every batch: the dashboard's reads add up the pending deltas, so they stay few.
        with db.session_scope() as session:
            folded += score_rollup.fold(session)
        if step is None:
            break
        reflagged += step["reflagged"]
        if step["finished"]:
            log.info("re-flag finished", extra=step)
            break
    return {"reflagged": reflagged, "folded": folded}
