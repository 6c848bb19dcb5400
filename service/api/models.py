"""``/api/v1/models``: the model registry, training from reviews and the shadow comparison, for admin keys only.

A client key gets a 403 on every operation here (the registry is the service's, not a client's); a
missing or revoked key a 401, as everywhere. Actions are recorded as ``api:<client>``. An unknown version
or run is a 404; a transition the registry refuses (promoting the active version, shadowing it, rolling
back with nothing before it) is a 409 whose message says why, and changes nothing. Like the CLI, the first
call registers the configured model as the active version when the registry is still empty.
"""

from __future__ import annotations

import logging
from functools import wraps
from typing import Any, Literal

from flask import current_app, jsonify, request, url_for
from pydantic import BaseModel, Field

from service import model_actions, model_compare
from service.api import bp
from service.api.auth_key import current_client, current_key_is_admin, require_api_key
from service.api.errors import ApiError
from service.api.openapi import document, json_content, query_param, yes_no_schema
from service.core import registry, training_runs
from service.core.schema import MODEL_STATUSES, ModelVersion
from service.extensions import app_settings, db
from service.params import ParamError, parse_bins, parse_bool
from service.stats import DEFAULT_BINS, MAX_BINS

log = logging.getLogger(__name__)
QUEUE_RETRY_AFTER_S = 5
MAX_RUN_ID = 2**31 - 1
# What a version name may be in a URL (service.core.model_store: letters, digits, ".", "_", "-").
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def require_admin_key(view):
    """A valid API key (401 otherwise) that is an admin key (403 otherwise)."""

    @wraps(view)
    def admin_only(*args, **kwargs):
        if not current_key_is_admin():
            raise ApiError(403, "Authorization", "the model registry needs an admin API key (apikeys create --admin)")
        return view(*args, **kwargs)

    return require_api_key(admin_only)


def _settings():
    return app_settings(current_app)


def _celery():
    return current_app.extensions["celery"]


def _actor() -> str:
    return f"api:{current_client()}"


def _version_or_404(version: str) -> ModelVersion:
    model_actions.bootstrap(db.session, _settings())
    found = registry.get(db.session, version)
    if found is None:
        raise ApiError(404, "version", f"no model version {version!r}")
    return found


def _refused(exc: registry.RegistryError):
    """A transition the registry refused: 409, nothing changed."""
    return ApiError(409, "version", str(exc))


def _rescore_param() -> bool:
    try:
        return parse_bool(request.args, "rescore")
    except ParamError as exc:
        raise ApiError(400, exc.field, exc.message) from None


def _check_params(*allowed: str) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise ApiError(400, unknown[0], "unknown parameter")


def _switched(done: model_actions.Switched):
    job = done.job
    return jsonify(
        **registry.to_dict(done.version),
        rescore=registry.rescore_dict(job) if job is not None else None,
    )


@bp.get("/models")
@require_admin_key
def list_models():
    """Every registered version, newest first, with the active and the shadow one named."""
    model_actions.bootstrap(db.session, _settings())
    active, shadow = registry.active(db.session), registry.shadow(db.session)
    return jsonify(
        items=[registry.to_dict(v) for v in registry.list_versions(db.session)],
        active=active.version if active else None,
        shadow=shadow.version if shadow else None,
    )


@bp.post("/models/train")
@require_admin_key
def train_model():
    """Queue a training run from the reviews (202), or say why not (409: too few reviews; nothing queued)."""
    try:
        run = training_runs.start_from_reviews(db.session, _settings(), _actor(), app=_celery())
    except training_runs.NotEnoughReviews as exc:
        db.session.rollback()
        raise ApiError(409, "reviews", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the broker: the run is recorded as failed, the client may retry
        db.session.rollback()
        log.warning("training task could not be queued", exc_info=True)
        raise ApiError(503, None, f"could not queue the training task ({type(exc).__name__}); retry later",
                       {"Retry-After": str(QUEUE_RETRY_AFTER_S)}) from None
    resp = jsonify(training_runs.to_dict(run))
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_training_run", run_id=run.id)
    return resp


@bp.get("/models/training/<int:run_id>")
@require_admin_key
def get_training_run(run_id: int):
    """A training run's status and progress (epoch, loss, ETA) and, once done, its candidate version."""
    # training_runs.id is a 32-bit integer: a larger id names no run (and PostgreSQL would refuse the query).
    run = training_runs.get(db.session, run_id) if run_id <= MAX_RUN_ID else None
    if run is None:
        raise ApiError(404, "id", f"no training run {run_id}")
    return jsonify(training_runs.to_dict(run))


@bp.post("/models/<version>/shadow")
@require_admin_key
def shadow_model(version: str):
    """Put a version in shadow: it scores new sketches alongside the active model, without flagging."""
    _version_or_404(version)
    try:
        found = model_actions.set_shadow(db.session, version, _actor())
    except registry.RegistryError as exc:
        raise _refused(exc) from None
    return jsonify(registry.to_dict(found))


@bp.post("/models/<version>/promote")
@require_admin_key
def promote_model(version: str):
    """Make a version the active one: workers switch within seconds, its own threshold applies."""
    _check_params("rescore")
    rescore = _rescore_param()
    _version_or_404(version)
    try:
        done = model_actions.promote(db.session, _settings(), _celery(), version, _actor(), rescore)
    except registry.RegistryError as exc:
        raise _refused(exc) from None
    return _switched(done)


@bp.post("/models/rollback")
@require_admin_key
def rollback_model():
    """Restore the version that was active before the current one."""
    _check_params("rescore")
    rescore = _rescore_param()
    model_actions.bootstrap(db.session, _settings())
    try:
        done = model_actions.rollback(db.session, _settings(), _celery(), _actor(), rescore)
    except registry.RegistryError as exc:
        raise _refused(exc) from None
    return _switched(done)


@bp.get("/models/compare")
@require_admin_key
def compare_models():
    """The shadow comparison: both histograms, AUROC, precision and recall on reviewed sketches, disagreements."""
    _check_params("bins")
    try:
        bins = parse_bins(request.args)
    except ParamError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    model_actions.bootstrap(db.session, _settings())
    active, shadow = registry.active(db.session), registry.shadow(db.session)
    if shadow is None:
        return jsonify(active_version=active.version if active else None, shadow_version=None, comparison=None)
    pair = model_compare.Pair(active=active.version if active else None, shadow=shadow.version)
    out = model_compare.compare(db.session, pair, bins).to_dict()
    return jsonify(active_version=pair.active, shadow_version=pair.shadow, comparison=out)


# --------------------------------------------------------------------------- the OpenAPI description


class ModelVersionOut(BaseModel):
    """One registered model version."""

    version: str
    status: Literal[MODEL_STATUSES]  # type: ignore[valid-type]
    parent_version: str | None = Field(description="the version it was trained from")
    created_at: str | None = Field(description="ISO 8601")
    created_by: str | None = Field(description="who or what made it (a user, api:<client>, bootstrap)")
    threshold: float = Field(description="its own flag threshold (score scales differ between versions)")
    last_threshold: float | None = Field(description="the threshold in force when it was last active")
    artifact_uri: str = Field(description="where workers load it from (model store path or URL)")
    promoted_at: str | None
    promoted_by: str | None
    data_fingerprint: dict[str, Any] | None = Field(description="the base files and the reviewed sketches used")
    metrics: dict[str, Any] | None = Field(description="on the fixed evaluation split and on held-back reviewed sketches")


class RescoreOut(BaseModel):
    """A background re-scoring of the stored sketches by the active version."""

    id: int
    model_version: str
    status: Literal["queued", "running", "done", "cancelled", "failed"]
    requested_by: str
    total: int
    done: int
    fraction: float
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None


class SwitchedOut(ModelVersionOut):
    """The version now active, and the re-scoring job started for it (null without ``rescore=true``)."""

    rescore: RescoreOut | None


class ModelListOut(BaseModel):
    """Answer of ``GET /models``."""

    items: list[ModelVersionOut]
    active: str | None = Field(description="the version scoring and flagging new sketches")
    shadow: str | None = Field(description="the version scoring new sketches alongside, if any")


class TrainingRunOut(BaseModel):
    """A training run from the reviews."""

    id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    eta_s: float | None = Field(None, description="estimated seconds left")
    candidate_version: str | None = Field(None, description="the version it registered, once succeeded")
    error: str | None = None


class ModelHistogramOut(BaseModel):
    """Equal-width bins over one model's scores on the compared sketches."""

    bins: int
    lo: float
    hi: float
    edges: list[float]
    counts: list[int]
    total: int
    scale: Literal["linear", "log"]


class ModelMetricsOut(BaseModel):
    """One model on the reviewed sketches both scored (null where undefined)."""

    auroc: float | None
    precision: float | None = Field(description="at its own threshold")
    recall: float | None = Field(description="at its own threshold")
    flagged: int
    true_positives: int


class ComparisonOut(BaseModel):
    """The two models on the sketches both scored."""

    active_version: str | None
    shadow_version: str
    scored_by_both: int
    histograms: dict[Literal["active", "shadow"], ModelHistogramOut]
    reviewed: int = Field(description="compared sketches with a staff verdict")
    anomalies: int = Field(description="of which confirmed anomalies")
    metrics: dict[Literal["active", "shadow"], ModelMetricsOut]
    disagreements: int
    flagged_by_active_only: int
    flagged_by_shadow_only: int


class CompareOut(BaseModel):
    """Answer of ``GET /models/compare`` (``comparison`` is null while no version is in shadow)."""

    active_version: str | None
    shadow_version: str | None
    comparison: ComparisonOut | None


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
_FORBIDDEN = {"description": "not an admin API key", "content": _ERROR}
_ADMIN = (
    " Admin keys only (`sketchwatch apikeys create --admin`): a client key gets a 403 and changes nothing."
)
_VERSION_PARAM = {
    "name": "version", "in": "path", "required": True, "description": "a registered model version",
    "schema": {"type": "string", "pattern": VERSION_PATTERN, "examples": ["cat-ae-20261202-1"]},
}  # fmt: skip
_ID_FROM_BODY = {"id": "$response.body#/id"}


def _ref(name: str) -> dict:
    return json_content({"$ref": f"#/components/schemas/{name}"})


document(
    "/models", "get",
    {
        "summary": "List the model versions",
        "description": "Every registered version with its parent, maker, metrics, threshold and status." + _ADMIN,
        "operationId": "listModels",
        "responses": {"200": {"description": "the versions", "content": _ref("ModelListOut")}, "403": _FORBIDDEN},
    },
    models=(ModelListOut,),
)  # fmt: skip
document(
    "/models/train", "post",
    {
        "summary": "Train a candidate from the reviews",
        "description": "Queues a training run on the `training` queue: the base data, reviewed cats as normals and "
        "confirmed anomalies as outliers, part of the reviews held back for evaluation. With too few reviews "
        "nothing is queued and the 409 says how many are needed." + _ADMIN,
        "operationId": "trainModel",
        "responses": {
            "202": {
                "description": "the queued run; poll its Location",
                "headers": {"Location": {"schema": {"type": "string"}, "description": "the run's URL"}},
                "content": _ref("TrainingRunOut"),
                "links": {"GetTrainingRun": {"operationId": "getTrainingRun", "parameters": _ID_FROM_BODY}},
            },
            "403": _FORBIDDEN,
            "409": {"description": "too few reviews to train from (field `reviews`); nothing queued", "content": _ERROR},
        },
    },
    models=(TrainingRunOut,),
)  # fmt: skip
document(
    "/models/training/{id}", "get",
    {
        "summary": "A training run's progress",
        "description": "Status, epoch, loss and ETA; the candidate version once it succeeded." + _ADMIN,
        "operationId": "getTrainingRun",
        "parameters": [{"name": "id", "in": "path", "required": True, "description": "the run's id",
                        "schema": {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_RUN_ID}}],
        "responses": {"200": {"description": "the run", "content": _ref("TrainingRunOut")}, "403": _FORBIDDEN,
                      "404": {"description": "no such training run", "content": _ERROR}},
    },
    models=(TrainingRunOut,),
)  # fmt: skip
_RESCORE_PARAM = query_param("rescore", yes_no_schema(), "also re-score the stored sketches in the background (default no, as the CLI's --rescore)")
for _action, _op_id, _summary, _text, _out, _params in (
    ("shadow", "shadowModel", "Run a version in shadow",
     "The version scores every new sketch alongside the active model; its scores are stored apart and flags do "
     "not change. It replaces the current shadow version, if any.", "ModelVersionOut", []),
    ("promote", "promoteModel", "Promote a version to active",
     "Every worker switches to it within seconds and flags against its own threshold; the previous active version "
     "is retired. With `rescore=true` the stored sketches are re-scored in the background (old scores kept in "
     "the history).", "SwitchedOut", [_RESCORE_PARAM]),
):
    document(
        f"/models/{{version}}/{_action}", "post",
        {
            "summary": _summary,
            "description": _text + _ADMIN,
            "operationId": _op_id,
            "parameters": [_VERSION_PARAM, *_params],
            "responses": {
                "200": {"description": "the version after the change", "content": _ref(_out)},
                "403": _FORBIDDEN,
                "404": {"description": "no such model version", "content": _ERROR},
                "409": {"description": "the registry refuses this transition (the message says why); nothing changed",
                        "content": _ERROR},
            },
        },
        models=(ModelVersionOut, SwitchedOut),
    )  # fmt: skip
document(
    "/models/rollback", "post",
    {
        "summary": "Roll back to the previous active version",
        "description": "Restores the version active before the current one, with the threshold it had; workers "
        "switch within seconds; with `rescore=true` the stored sketches are re-scored in the background." + _ADMIN,
        "operationId": "rollbackModel",
        "parameters": [_RESCORE_PARAM],
        "responses": {
            "200": {"description": "the version now active", "content": _ref("SwitchedOut")},
            "403": _FORBIDDEN,
            "409": {"description": "nothing to roll back to; nothing changed", "content": _ERROR},
        },
    },
    models=(SwitchedOut,),
)  # fmt: skip
document(
    "/models/compare", "get",
    {
        "summary": "Compare the active and the shadow model",
        "description": "On the sketches both scored: each model's score histogram (computed in SQL, each over its "
        "own range), AUROC, precision and recall on the reviewed ones (staff verdicts), and how many flags "
        "differ." + _ADMIN,
        "operationId": "compareModels",
        "parameters": [query_param("bins", {"type": "integer", "minimum": 1, "maximum": MAX_BINS,
                                            "default": DEFAULT_BINS}, "number of bins of each histogram")],
        "responses": {"200": {"description": "the comparison (null without a shadow version)", "content": _ref("CompareOut")},
                      "403": _FORBIDDEN},
    },
    models=(CompareOut,),
)  # fmt: skip
