"""The scoring models of one worker process: the model registry's active and shadow versions (the configured
model while the registry is empty), re-read every ``model_poll_s`` and swapped without a restart (see below).

The model is loaded in each pool process after the fork (``worker_process_init``), never in the
Celery parent: neither LiteRT interpreters nor TF's thread pools survive ``fork``. A pool process
scores with LiteRT (:class:`models.lite.LiteScorer`) when the artifact has ``model.tflite`` and then
never imports TensorFlow or Keras; without that file it falls back to Keras, with a warning that says
how to export. The parent only runs :func:`check_artifact`, which validates the files without either
runtime so a missing or corrupt model stops the worker before it takes a task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.lite import LiteScorer
    from models.scoring import Scorer

log = logging.getLogger(__name__)

# sysexits.h EX_CONFIG: the worker cannot run with this configuration.
EX_CONFIG = 78

_lock = threading.RLock()
_scorer: LiteScorer | Scorer | None = None


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded; the message names the file and the problem."""


def model_path(model_dir: str | None) -> Path:
    """The configured artifact directory, or the shipped one."""
    from models.artifact import resolve_model_dir

    return resolve_model_dir(model_dir)


def check_artifact(model_dir: str | None) -> Path:
    """Validate model.json, model.keras and model.tflite (if any) without TensorFlow; raise ModelUnavailable."""
    from models.artifact import ArtifactError
    from models.artifact import check_artifact as check_files

    try:
        return check_files(model_dir)
    except ArtifactError as exc:
        raise ModelUnavailable(str(exc)) from None


def _open(path: Path, model_dir: str | None, threads: int) -> LiteScorer | Scorer:
    """LiteRT when the artifact has model.tflite, else Keras with a warning that says how to export."""
    from models.artifact import TFLITE_FILE, has_tflite

    if has_tflite(path):
        from models.lite import LiteScorer

        scorer = LiteScorer.load(path, threads=threads)
        scorer.warm_up()
        return scorer
    from models.scoring import Scorer

    command = f"sketchwatch export --model {path}" if model_dir else "sketchwatch export"
    log.warning(
        "%s has no %s: scoring with Keras, which loads TensorFlow into every pool process (about 800 MB "
        "each, and slower); add it with: %s", path, TFLITE_FILE, command,
        extra={"runtime": "keras", "model_dir": str(path)},
    )
    return Scorer.load(path, threads=threads)


def load(model_dir: str | None, tf_threads: int) -> LiteScorer | Scorer:
    """Load the model into this process, warm up its runtime and the rasterizer, and keep it; raise ModelUnavailable."""
    global _scorer
    from models.artifact import ArtifactError
    from models.raster import rasterize_batch

    path = model_path(model_dir)
    with _lock:
        try:
            scorer = _open(path, model_dir, tf_threads)
            # The first call sets up the graph (TF traces it, LiteRT allocates its tensors): pay that before any task.
            scorer.score_bitmaps(rasterize_batch([[[[0, 255], [0, 255]]]]))
        except ArtifactError as exc:
            raise ModelUnavailable(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - Keras, TF and LiteRT raise many types for bad artifacts
            raise ModelUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        _scorer = scorer
    log.info("model %s loaded from %s (%s)", scorer.version, path, scorer.runtime,
             extra={"model_version": scorer.version, "runtime": scorer.runtime})
    return scorer


def get_scorer(model_dir: str | None, tf_threads: int) -> LiteScorer | Scorer:
    """This process's Scorer, loaded on first use (solo and thread pools, in-process calls)."""
    scorer = _scorer
    if scorer is not None:
        return scorer
    with _lock:
        return _scorer if _scorer is not None else load(model_dir, tf_threads)


def loaded() -> bool:
    """True once this process holds a model."""
    return _scorer is not None


def reset() -> None:
    """Forget the loaded model (tests)."""
    global _scorer, _serving
    with _lock:
        _scorer = None
        _serving = None
        _by_version.clear()
        _shadow_failed.clear()


# --------------------------------------------------------------------------- the registry's active and shadow models
#
# With a model registry (service.core.registry), the active and shadow versions are read from the database at
# most every ``model_poll_s`` seconds; a new one is loaded in this pool process (after the fork, like the first)
# and swapped in as one immutable snapshot, so a batch scores with one consistent pair. The scoring task
# re-reads the active version inside its write transaction and rescores with a fresh snapshot when it changed
# (worker/scoring.py): the poll only decides how soon a worker notices, never which model a sketch gets.

# Loaded scorers kept per version: the active, the shadow and the one before (a rollback needs no reload).
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class Serving:
    """The models one batch is scored with: the active one, and the shadow one with its threshold (or None)."""

    active: LiteScorer | Scorer
    shadow: LiteScorer | Scorer | None = None
    shadow_threshold: float | None = None
    checked_at: float = 0.0


# A shadow version that failed to load is tried again after this long, not at every poll.
SHADOW_RETRY_S = 60.0

_serving: Serving | None = None
_by_version: OrderedDict[str, LiteScorer | Scorer] = OrderedDict()
_shadow_failed: dict[str, float] = {}


def serving(settings, force: bool = False) -> Serving:
    """The active (and shadow) scorer, re-read from the registry when older than ``model_poll_s`` or ``force``."""
    current = _serving
    if current is not None and not force and time.monotonic() - current.checked_at < settings.model_poll_s:
        return current
    with _lock:
        current = _serving
        if current is not None and not force and time.monotonic() - current.checked_at < settings.model_poll_s:
            return current
        return _refresh(settings)


def load_serving(settings) -> LiteScorer | Scorer:
    """At pool-process start: load the registry's active model (the configured one when the registry is empty)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return serving(settings, force=True).active
    except SQLAlchemyError as exc:
        # The database may be down at start: the first task re-reads the registry before it writes anything.
        log.warning("model registry not readable at start (%s); loading the configured model", type(exc).__name__)
        return load(settings.model_dir, settings.tf_threads)


def _refresh(settings) -> Serving:
    """Read the registry and build a new snapshot, loading versions this process does not hold yet."""
    global _serving, _scorer
    from service.core import registry
    from service.core.db import db

    with db.session_scope() as session:
        wanted = registry.serving(session)
    active, shadow = wanted["active"], wanted["shadow"]
    if active is None:
        # An empty registry: the configured model scores, as before the registry existed.
        scorer = get_scorer(settings.model_dir, settings.tf_threads)
    else:
        scorer = _version(settings, *active[:2])
    shadow_scorer, shadow_threshold = None, None
    if shadow is not None and time.monotonic() - _shadow_failed.get(shadow[0], -SHADOW_RETRY_S) >= SHADOW_RETRY_S:
        try:
            shadow_scorer, shadow_threshold = _version(settings, *shadow[:2]), shadow[2]
        except ModelUnavailable as exc:
            # The shadow is a comparison: its failure must not stop the active model from scoring.
            _shadow_failed[shadow[0]] = time.monotonic()
            log.error("shadow model %s not loaded: %s", shadow[0], exc, extra={"model_version": shadow[0]})
    previous = _serving
    _serving = Serving(scorer, shadow_scorer, shadow_threshold, time.monotonic())
    _scorer = scorer
    if previous is None or previous.active is not scorer:
        log.info("scoring with model %s", scorer.version,
                 extra={"model_version": scorer.version, "shadow": shadow[0] if shadow else None})
    return _serving


def _version(settings, version: str, uri: str) -> LiteScorer | Scorer:
    """This process's scorer of a registered version, loaded from its artifact on first use."""
    found = _by_version.get(version)
    if found is None and _scorer is not None and _scorer.version == version:
        # The configured model this process loaded at start, now registered (the registry's bootstrap).
        found = _by_version[version] = _scorer
    if found is not None:
        _by_version.move_to_end(version)
        return found
    from models.artifact import ArtifactError
    from models.raster import rasterize_batch
    from service.core.model_store import StoreError, local_path

    try:
        path = local_path(settings, uri)
        scorer = _open(path, str(path), settings.tf_threads)
        scorer.score_bitmaps(rasterize_batch([[[[0, 255], [0, 255]]]]))
    except (ArtifactError, StoreError) as exc:
        raise ModelUnavailable(f"model {version}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Keras, TF and LiteRT raise many types for bad artifacts
        raise ModelUnavailable(f"model {version} ({uri}): {type(exc).__name__}: {exc}") from exc
    if scorer.version != version:
        raise ModelUnavailable(f"{uri}: its model.json says version {scorer.version!r}, the registry {version!r}")
    _by_version[version] = scorer
    while len(_by_version) > KEEP_VERSIONS:
        _by_version.popitem(last=False)
    log.info("model %s loaded from %s (%s)", version, path, scorer.runtime,
             extra={"model_version": version, "runtime": scorer.runtime})
    return scorer
