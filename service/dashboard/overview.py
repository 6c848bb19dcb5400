"""Overview page: score histogram with the threshold line, counts, time and model filters."""

from __future__ import annotations

from flask import current_app, render_template, request

from service.extensions import app_settings
from service import stats
from service.dashboard import bp
from service.dashboard.charts import histogram_chart
from service.dashboard.params import RANGES, ParamError, parse_bins, parse_bool, parse_filter
from service.extensions import db
from service.core.thresholds import current_threshold


def _settings():
    return app_settings(current_app)


@bp.get("/")
def overview():
    """Histogram of stored scores, threshold line and counts, for a time window and model version."""
    session = db.session
    error = None
    try:
        flt = parse_filter(request.args)
        bins = parse_bins(request.args)
        log = parse_bool(request.args, "log")
    except ParamError as exc:
        error = exc
        flt, bins, log = stats.StatsFilter(), stats.DEFAULT_BINS, False
    hist, counts = stats.overview(session, flt, bins)
    threshold = current_threshold(session, _settings())
    chart = histogram_chart(hist, threshold, log=log)
    page = render_template(
        "dashboard/overview.html",
        chart=chart,
        hist=hist,
        counts=counts,
        threshold=threshold,
        flt=flt,
        bins=bins,
        log=log,
        versions=stats.model_versions(session),
        ranges=list(RANGES),
        args=request.args,
        error=error,
    )
    return page, (400 if error else 200)
