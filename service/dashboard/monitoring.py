"""Monitoring pages: worker and queue health with the score drift (``/monitoring``) and the per-client
breakdown (``/monitoring/clients``). Every staff member sees every client; the figures come from
``service.core.monitoring`` and ``service.core.drift``, which the alert evaluation uses too."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app, render_template, request

from service.core import drift, monitoring, rollups
from service.core.celery_app import ALERTS_QUEUE, QUEUE
from service.core.model_info import model_meta
from service.core.schema import StatsRollupState, utcnow
from service.dashboard import bp
from service.dashboard.overview import parse_client
from service.extensions import app_settings, db
from service.params import ParamError, parse_int, parse_time

log = logging.getLogger(__name__)

REFERENCES = ("model", "baseline", "period")


def broker_depths(settings) -> dict[str, int] | None:
    """Messages waiting in the scoring and alerts queues (Redis only; None when unknown)."""
    if not settings.uses_redis:
        return None
    from service.metrics import read_redis_depth

    try:
        return {name: read_redis_depth(settings.broker_url, name)[0] for name in (QUEUE, ALERTS_QUEUE)}
    except Exception as exc:  # noqa: BLE001 - the page shows the broker as unknown instead of failing
        log.warning("broker depth unavailable: %s", type(exc).__name__)
        return None


def _drift(session, settings, args, now):
    """The drift panel's result and the parameters it was computed with (ParamError for bad ones)."""
    window_s = parse_int(args, "window", settings.drift_window_s, 60, 30 * 86_400)
    kind = (args.get("ref") or "").strip() or settings.drift_reference
    if kind not in REFERENCES:
        raise ParamError("ref", f"expected one of {', '.join(REFERENCES)}; got {kind!r}")
    client = parse_client(args)
    since = now - timedelta(seconds=window_s)
    if kind == "period":
        ref_since, ref_until = parse_time(args, "ref_since"), parse_time(args, "ref_until")
        if ref_since is None or ref_until is None or ref_since >= ref_until:
            raise ParamError("ref_since", "a reference period needs ref_since earlier than ref_until")
        reference = drift.period_reference(session, ref_since, ref_until, client)
    else:
        reference = drift.reference_for(session, kind, model_meta(settings.model_dir), since, client)
    return drift.measure(session, reference, since, now, client), {"window": window_s, "ref": kind, "client": client}


@bp.get("/monitoring", endpoint="monitoring")
def monitoring_page():
    """Queue depth, the oldest queued sketch, the workers seen, the rollup, and the score drift."""
    session = db.session
    settings = app_settings(current_app)
    now = utcnow()
    error = None
    try:
        result, params = _drift(session, settings, request.args, now)
    except ParamError as exc:
        error = exc
        result, params = _drift(session, settings, {}, now)
    health = monitoring.queue_health(session, now)
    state = session.get(StatsRollupState, rollups.STATE_ID)
    page = render_template(
        "dashboard/monitoring.html",
        health=health,
        alerts_workers=[w for w in health.workers if w.runs_alerts and w.state == "alive"],
        broker=broker_depths(settings),
        drift=result,
        params=params,
        references=REFERENCES,
        rollup=state,
        clients=sorted(monitoring.clients_last_seen(session)),
        args=request.args,
        error=error,
        settings=settings,
    )
    return page, (400 if error else 200)


@bp.get("/monitoring/clients")
def clients():
    """Per client: the last 24 hours' volume and flag rate against the client's own previous week, last seen."""
    rows = monitoring.client_breakdown(db.session, utcnow())
    return render_template("dashboard/clients.html", rows=rows)
