"""The scoring model of one worker process.

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
            # The first call sets up the graph (TF traces it) and JIT-compiles the rasterizer: pay that before any task.
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
    global _scorer
    with _lock:
        _scorer = None
