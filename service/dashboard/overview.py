"""Overview page: score histogram with the threshold line, counts, and the trend over time (volume, flag rate,
score quantiles, with threshold changes and model versions marked), for a time window, model and client."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from flask import current_app, render_template, request

from service import stats
from service.core import monitoring
from service.core.schema import utcnow
from service.core.thresholds import current_threshold
from service.dashboard import bp
from service.dashboard.charts import histogram_chart, rate_chart, volume_chart
from service.extensions import app_settings, db
from service.params import RANGES, ParamError, parse_axis, parse_bins, parse_bool, parse_filter

# With no bucket asked for, the window's length picks one that gives a readable number of points.
AUTO_MINUTES_UP_TO = timedelta(hours=6)
AUTO_HOURS_UP_TO = timedelta(days=21)


def _settings():
    return app_settings(current_app)


def auto_bucket(flt: stats.StatsFilter) -> str:
    """minute for windows up to 6 hours, hour up to 3 weeks, day beyond (hour without a window)."""
    if flt.since is None:
        return "hour"
    span = (flt.until or utcnow()) - flt.since
    if span <= AUTO_MINUTES_UP_TO:
        return "minute"
    return "hour" if span <= AUTO_HOURS_UP_TO else "day"


def parse_client(args) -> str | None:
    """The ``client`` filter (staff see every client; empty means all)."""
    client = (args.get("client") or "").strip() or None
    if client is not None and ("\x00" in client or len(client) > 100):
        raise ParamError("client", "not a client name")
    return client


@bp.get("/")
def overview():
    """Histogram of stored scores, threshold line, counts and the trend, for a time window, model and client."""
    session = db.session
    error = None
    try:
        flt = parse_filter(request.args)
        bins = parse_bins(request.args)
        log = parse_bool(request.args, "log")
        axis = parse_axis(request.args)
        flt = replace(flt, client=parse_client(request.args))
    except ParamError as exc:
        error = exc
        flt, bins, log, axis = stats.StatsFilter(), stats.DEFAULT_BINS, False, "score"
    bucket = (request.args.get("bucket") or "").strip() or auto_bucket(flt)
    try:
        series = monitoring.timeseries(session, bucket, flt.since, flt.until, flt.client)
    except monitoring.SeriesError as exc:
        error = error or exc
        bucket = auto_bucket(flt)
        series = monitoring.timeseries(session, bucket, flt.since, flt.until, flt.client)
    hist, counts = stats.overview(session, flt, bins, axis)
    threshold = current_threshold(session, _settings())
    chart = histogram_chart(hist, stats.logit(threshold) if axis == "logit" else threshold, log=log)
    page = render_template(
        "dashboard/overview.html",
        chart=chart,
        hist=hist,
        counts=counts,
        threshold=threshold,
        flt=flt,
        bins=bins,
        log=log,
        axis=axis,
        versions=stats.model_versions(session),
        clients=sorted(monitoring.clients_last_seen(session)),
        ranges=list(RANGES),
        args=request.args,
        error=error,
        series=series,
        bucket=bucket,
        buckets=monitoring.BUCKETS,
        volume=volume_chart(series),
        rates=rate_chart(series),
    )
    return page, (400 if error else 200)
