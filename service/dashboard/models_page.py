"""The Models page (blueprint ``models``): model versions, training from reviews, the shadow comparison.

Reviewers and admins may look; only admins act. Every action is a POST with the CSRF token, and the
registry changes (shadow, promote, roll back) are confirmed first: their buttons open a page saying what
will happen, and only that page's form (``confirm=yes``) does it, as for revoking an API key.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from werkzeug.exceptions import InternalServerError

from service import model_actions, model_compare
from service.auth.access import has_role, role_required
from service.auth.headers import add_page_headers
from service.core import registry, training_runs
from service.core.schema import (
    MODEL_CANDIDATE,
    MODEL_RETIRED,
    MODEL_SHADOW,
    ROLE_ADMIN,
    ROLE_REVIEWER,
    ShadowScore,
    Sketch,
)
from service.core.thresholds import current_threshold
from service.dashboard import errors
from service.dashboard.charts import histogram_chart
from service.dashboard.keyset import OrderedList, Segment
from service.dashboard.listing import CARD_COLUMNS
from service.extensions import app_settings, db, login_manager
from service.params import ParamError, parse_bins, parse_int

log = logging.getLogger(__name__)
bp = Blueprint("models", __name__, url_prefix="/models")

CONFIRMED = "yes"
DISAGREEMENTS_PER_PAGE = 24
MAX_PER_PAGE = 200
# Which registry action each status offers (the registry itself refuses any other transition).
CAN_SHADOW = (MODEL_CANDIDATE, MODEL_RETIRED)
CAN_PROMOTE = (MODEL_CANDIDATE, MODEL_SHADOW, MODEL_RETIRED)


@bp.before_request
def _require_login():
    # One gate for the whole blueprint, as the dashboard's: reviewers and admins may look.
    if not current_user.is_authenticated:
        if request.method not in ("GET", "HEAD"):
            return errors.session_expired()
        return login_manager.unauthorized()
    if not has_role(current_user, ROLE_REVIEWER):
        abort(403)
    return None


bp.after_request(add_page_headers)
for _code in (400, 403, 404, 405, 409, 413, 429):
    bp.register_error_handler(_code, errors.error_page)
bp.register_error_handler(InternalServerError, errors.server_error)
bp.register_error_handler(CSRFError, errors.csrf_failed)


def _settings():
    return app_settings(current_app)


def _pair() -> model_compare.Pair | None:
    """The versions the shadow comparison covers (None without a shadow version)."""
    shadow = registry.shadow(db.session)
    if shadow is None:
        return None
    active = registry.active(db.session)
    return model_compare.Pair(active=active.version if active else None, shadow=shadow.version)


def _version_or_404(version: str):
    model_actions.bootstrap(db.session, _settings())
    found = registry.get(db.session, version)
    if found is None:
        abort(404, description=f"There is no model version {version!r}.")
    return found


def metric_items(metrics) -> list[tuple[str, str]]:
    """A version's metrics as (name, text) rows: nested groups flattened to ``group.name``, numbers to 4 digits."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        elif isinstance(value, float):
            out.append((prefix, f"{value:.4g}"))
        elif value is not None and not isinstance(value, list):
            out.append((prefix, str(value)))

    walk("", metrics or {})
    return out


@bp.get("/")
def index():
    """Versions, the latest training run, re-scoring progress and the shadow comparison."""
    session = db.session
    try:
        bins = parse_bins(request.args)
    except ParamError as exc:
        abort(400, description=str(exc))
    model_actions.bootstrap(session, _settings())
    versions = registry.list_versions(session)
    active = registry.active(session)
    pair = _pair()
    comparison = charts = None
    if pair is not None:
        comparison = model_compare.compare(session, pair, bins)
        shadow = registry.get(session, pair.shadow)
        active_threshold = current_threshold(session, _settings()) if active else None
        charts = {
            "active": histogram_chart(comparison.active_hist, active_threshold),
            "shadow": histogram_chart(comparison.shadow_hist, shadow.threshold if shadow else None),
        }
    run = training_runs.latest(session)
    return render_template(
        "models/index.html",
        versions=versions,
        active=active,
        pair=pair,
        comparison=comparison,
        charts=charts,
        run=training_runs.to_dict(run) if run is not None else None,
        rescore=registry.rescore_progress(session),
        can_shadow=CAN_SHADOW,
        can_promote=CAN_PROMOTE,
        is_admin=current_user.is_admin,
        metric_items=metric_items,
    )


@bp.get("/progress.json")
def progress():
    """The latest training run and the re-scoring progress as JSON (the page's script polls it)."""
    run = training_runs.latest(db.session)
    return jsonify(
        training=training_runs.to_dict(run) if run is not None else None,
        rescore=registry.rescore_progress(db.session),
    )


def disagreement_list(pair: model_compare.Pair) -> OrderedList:
    """The sketches both versions scored whose flags differ, newest first."""

    def base(*columns, filtered: bool = True):
        stmt = select(*columns).select_from(Sketch).join(ShadowScore, ShadowScore.sketch_id == Sketch.id)
        stmt = stmt.where(ShadowScore.model_version == pair.shadow)
        return stmt.where(*pair.clauses(), model_compare.disagree()) if filtered else stmt

    return OrderedList(base, [Segment((), ((Sketch.id, True),))])


@bp.get("/disagreements")
def disagreements():
    """The queue of sketches the active and the shadow model flag differently, reviewable like flagged ones."""
    pair = _pair()
    try:
        per_page = parse_int(request.args, "per_page", DISAGREEMENTS_PER_PAGE, 1, MAX_PER_PAGE)
    except ParamError as exc:
        abort(400, description=str(exc))
    page = None
    if pair is not None:
        try:
            page = disagreement_list(pair).page(
                db.session,
                [*CARD_COLUMNS, ShadowScore.score.label("shadow_score"), ShadowScore.flagged.label("shadow_flagged")],
                per_page,
                after=request.args.get("after") or None,
                before=request.args.get("before") or None,
            )
        except ValueError as exc:
            abort(400, description=str(exc))
    return render_template(
        "models/disagreements.html",
        pair=pair,
        page=page,
        per_page=per_page,
        threshold=current_threshold(db.session, _settings()),
        shadow=registry.get(db.session, pair.shadow) if pair else None,
    )


@bp.post("/train")
@role_required(ROLE_ADMIN)
def train():
    """Queue a training run from the reviews; too few reviews is a message, and nothing is queued."""
    try:
        run = training_runs.start_from_reviews(
            db.session, _settings(), current_user.username, app=current_app.extensions["celery"]
        )
    except training_runs.NotEnoughReviews as exc:
        db.session.rollback()
        flash(f"Not trained: {exc}", "error")
        return redirect(url_for("models.index"))
    except Exception as exc:  # noqa: BLE001 - the broker: the run is recorded as failed and shows so below
        db.session.rollback()
        log.warning("training task could not be queued", exc_info=True)
        flash(f"Not trained: the training task could not be queued ({type(exc).__name__}). Try again later.", "error")
        return redirect(url_for("models.index"))
    flash(f"Training run {run.id} queued. Its progress shows below.", "success")
    return redirect(url_for("models.index"))


# --------------------------------------------------------------------------- registry actions, confirmed first


def _confirm(title: str, text: str, button: str, action_url: str, rescore: bool = False):
    """The confirmation step: nothing has happened yet; its form carries ``confirm=yes``."""
    return render_template(
        "models/confirm.html", title=title, text=text, button=button, action_url=action_url,
        cancel_url=url_for("models.index"), confirm=CONFIRMED, rescore=rescore,
    )  # fmt: skip


def _failed(exc: Exception):
    flash(f"Nothing changed: {exc}", "error")
    return redirect(url_for("models.index"))


def _switched(done: model_actions.Switched, what: str):
    if done.job is None:
        flash(f"{what} Stored sketches keep their scores.", "success")
    elif done.sent:
        flash(f"{what} Re-scoring {done.job.total:,} stored sketches; progress shows below.", "success")
    else:
        flash(f"{what} The re-scoring job could not be sent to the workers; it is kept queued.", "error")
    return redirect(url_for("models.index"))


def _rescore_asked() -> bool:
    return request.form.get("rescore") == CONFIRMED


def _confirm_shadow(version: str):
    current = registry.shadow(db.session)
    replaced = f" It replaces {current.version} as the shadow model." if current and current.version != version else ""
    return _confirm(
        f"Run {version} in shadow?",
        f"{version} scores every new sketch alongside the active model. Its scores are stored apart and the active "
        f"model's flags do not change.{replaced}",
        f"Shadow {version}",
        url_for("models.shadow", version=version),
    )


@bp.get("/<version>/shadow")
@role_required(ROLE_ADMIN)
def confirm_shadow(version: str):
    """The confirmation page before putting a version in shadow."""
    _version_or_404(version)
    return _confirm_shadow(version)


@bp.post("/<version>/shadow")
@role_required(ROLE_ADMIN)
def shadow(version: str):
    """Put a version in shadow once confirmed (``confirm=yes``, else the confirmation page)."""
    _version_or_404(version)
    if request.form.get("confirm") != CONFIRMED:
        return _confirm_shadow(version)
    try:
        model_actions.set_shadow(db.session, version, current_user.username)
    except registry.RegistryError as exc:
        return _failed(exc)
    flash(f"{version} is now in shadow: it scores new sketches alongside the active model.", "success")
    return redirect(url_for("models.index"))


def _confirm_promote(found):
    active = registry.active(db.session)
    was = f" {active.version} is retired and can be restored with Roll back." if active else ""
    return _confirm(
        f"Promote {found.version}?",
        f"Every worker switches to {found.version} within seconds and flags new sketches against its own threshold "
        f"({found.threshold:.4g}).{was} Stored sketches can be re-scored in the background; their old scores are "
        "kept in the history.",
        f"Promote {found.version}",
        url_for("models.promote", version=found.version),
        rescore=True,
    )


@bp.get("/<version>/promote")
@role_required(ROLE_ADMIN)
def confirm_promote(version: str):
    """The confirmation page before promoting a version to active."""
    return _confirm_promote(_version_or_404(version))


@bp.post("/<version>/promote")
@role_required(ROLE_ADMIN)
def promote(version: str):
    """Promote a version once confirmed (``confirm=yes``, else the confirmation page)."""
    found = _version_or_404(version)
    if request.form.get("confirm") != CONFIRMED:
        return _confirm_promote(found)
    try:
        done = model_actions.promote(
            db.session, _settings(), current_app.extensions["celery"], version, current_user.username, _rescore_asked()
        )
    except registry.RegistryError as exc:
        return _failed(exc)
    return _switched(done, f"{version} is now the active model.")


def _confirm_rollback():
    model_actions.bootstrap(db.session, _settings())
    active = registry.active(db.session)
    name = active.version if active else "the active model"
    return _confirm(
        "Roll back the active model?",
        f"{name} is retired and the version active before it is restored, with the threshold it had. Every worker "
        "switches within seconds; stored sketches can be re-scored in the background.",
        "Roll back",
        url_for("models.rollback"),
        rescore=True,
    )


@bp.get("/rollback")
@role_required(ROLE_ADMIN)
def confirm_rollback():
    """The confirmation page before rolling back."""
    return _confirm_rollback()


@bp.post("/rollback")
@role_required(ROLE_ADMIN)
def rollback():
    """Restore the previous active version once confirmed (``confirm=yes``, else the confirmation page)."""
    if request.form.get("confirm") != CONFIRMED:
        return _confirm_rollback()
    try:
        done = model_actions.rollback(
            db.session, _settings(), current_app.extensions["celery"], current_user.username, _rescore_asked()
        )
    except registry.RegistryError as exc:
        return _failed(exc)
    return _switched(done, f"Rolled back: {done.version.version} is the active model again.")

