"""The scoring model of one worker process.

TensorFlow is loaded in each pool process after the fork (``worker_process_init``), never in the
Celery parent: TF's thread pools and its runtime state do not survive ``fork``. The parent only runs
:func:`check_artifact`, which validates the files without TensorFlow so a missing or corrupt model
stops the worker before it takes a task.
"""

from __future__ import annotations

import logging
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.scoring import Scorer

log = logging.getLogger(__name__)

# sysexits.h EX_CONFIG: the worker cannot run with this configuration.
EX_CONFIG = 78

_lock = threading.RLock()
_scorer: Scorer | None = None


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded; the message names the file and the problem."""


def model_path(model_dir: str | None) -> Path:
    """The configured artifact directory, or the shipped one."""
    from models.artifact import shipped_model_dir

    return Path(model_dir) if model_dir else shipped_model_dir()


def check_artifact(model_dir: str | None) -> Path:
    """Validate model.json and the model.keras archive without TensorFlow; raise ModelUnavailable."""
    from models.artifact import MODEL_FILE, ArtifactError, read_meta

    path = model_path(model_dir)
    try:
        read_meta(path)
    except ArtifactError as exc:
        raise ModelUnavailable(str(exc)) from None
    keras_file = path / MODEL_FILE
    if not keras_file.is_file():
        raise ModelUnavailable(f"{keras_file}: file not found")
    try:
        # A .keras file is a zip archive: the CRC check catches truncated or overwritten files cheaply.
        with zipfile.ZipFile(keras_file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelUnavailable(f"{keras_file}: not a Keras archive ({exc})") from None
    if bad is not None:
        raise ModelUnavailable(f"{keras_file}: corrupt archive member {bad!r}")
    return path


def load(model_dir: str | None, tf_threads: int) -> Scorer:
    """Load the model into this process, warm up TF and the rasterizer, and keep it; raise ModelUnavailable."""
    global _scorer
    from models.artifact import ArtifactError
    from models.raster import rasterize_batch
    from models.scoring import Scorer

    path = model_path(model_dir)
    with _lock:
        try:
            scorer = Scorer.load(path, threads=tf_threads)
            # The first call traces the TF graph and JIT-compiles the rasterizer: pay that before any task.
            scorer.score_bitmaps(rasterize_batch([[[[0, 255], [0, 255]]]]))
        except ArtifactError as exc:
            raise ModelUnavailable(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - Keras and TF raise many types for bad artifacts
            raise ModelUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        _scorer = scorer
    log.info("model %s loaded from %s", scorer.version, path, extra={"model_version": scorer.version})
    return scorer


def get_scorer(model_dir: str | None, tf_threads: int) -> Scorer:
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
