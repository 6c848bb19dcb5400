"""Model artifacts: a directory with ``model.keras`` (weights + graph) and ``model.json`` (metadata).

This module is the one place that knows where the model lives and how model.json is read:
``resolve_model_dir`` turns a configured directory (or none) into the artifact directory, and
``read_meta`` validates model.json without TensorFlow (the web process uses it); ``load_artifact``
also loads the Keras model and checks that its weights are the ones model.json describes. An artifact
may also carry ``model.tflite`` (the same model for LiteRT, written by :mod:`models.export`), which
model.json records under ``litert`` with its SHA-256 and the weights it was exported from.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import coerce_config, custom_objects
from models.formulas import SCORE_FORMULAS
from models.tf_runtime import configure_tensorflow

MODEL_FILE = "model.keras"
META_FILE = "model.json"
# The same model converted for LiteRT by models.export; model.json records it under "litert".
TFLITE_FILE = "model.tflite"
SCHEMA_VERSION = 1
PERCENTILE_KEYS = ("90", "95", "99", "99.5")


class ArtifactError(ValueError):
    """A model directory that is missing, incomplete or inconsistent."""


def shipped_model_dir() -> Path:
    """Directory of the trained default model shipped inside the package."""
    return Path(__file__).resolve().parent / "shipped"


def resolve_model_dir(configured: str | Path | None = None) -> Path:
    """The configured artifact directory, or the shipped one when none is configured (None or "")."""
    return Path(configured) if configured else shipped_model_dir()


def weights_sha256(model) -> str:
    """SHA-256 over the model's weight arrays (float32, C order, in layer order)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


def framework_versions() -> dict[str, str]:
    """Versions of the libraries that produced (and can read) the artifact."""
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _check(cond: bool, path: Path, message: str) -> None:
    """Raise an ArtifactError naming the file when ``cond`` is false."""
    if not cond:
        raise ArtifactError(f"{path}: {message}")


def _is_number(value: Any) -> bool:
    """A finite JSON number (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_meta(meta: Any, path: Path) -> dict[str, Any]:
    """Check the fields scoring relies on; raise ArtifactError naming ``path`` and the field."""
    _check(isinstance(meta, dict), path, "top level must be a JSON object")
    for key, kind in (("version", str), ("architecture", dict), ("input", dict), ("score", dict),
                      ("percentiles", dict), ("weights_sha256", str)):
        _check(key in meta, path, f"missing field {key!r}")
        _check(isinstance(meta[key], kind), path, f"field {key!r} must be a {kind.__name__}")
    try:
        coerce_config(meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid 'architecture': {exc}") from None
    formula = meta["score"].get("formula")
    _check(formula in SCORE_FORMULAS, path, f"unknown score formula {formula!r}")
    for key in PERCENTILE_KEYS:
        _check(_is_number(meta["percentiles"].get(key)), path, f"percentiles[{key!r}] must be a number")
    _check(_is_number(meta.get("suggested_threshold")), path, "field 'suggested_threshold' must be a number")
    if "litert" in meta:
        _validate_litert(meta, path)
    return meta


def _validate_litert(meta: dict[str, Any], path: Path) -> None:
    """The ``litert`` record: which model.tflite belongs to these weights, and its measured parity."""
    record = meta["litert"]
    _check(isinstance(record, dict), path, "field 'litert' must be a dict")
    _check(record.get("file") == TFLITE_FILE, path, f"litert.file must be {TFLITE_FILE!r}")
    _check(isinstance(record.get("sha256"), str) and len(record["sha256"]) == 64, path,
           "litert.sha256 must be a SHA-256 hex digest")
    _check(record.get("weights_sha256") == meta["weights_sha256"], path,
           "litert.weights_sha256 differs from weights_sha256: model.tflite was exported from other weights "
           "(re-run sketchwatch export)")
    _check(isinstance(record.get("parity"), dict), path, "field 'litert.parity' must be a dict")


def has_tflite(model_dir: str | Path | None = None) -> bool:
    """True when the artifact directory holds a model.tflite (checked by :func:`check_artifact`)."""
    return (resolve_model_dir(model_dir) / TFLITE_FILE).is_file()


def _check_tflite(path: Path, meta: dict[str, Any]) -> None:
    """model.tflite must be a TFLite flatbuffer whose SHA-256 model.json records."""
    tflite = path / TFLITE_FILE
    _check("litert" in meta, tflite, "model.json has no 'litert' record for this file (re-run sketchwatch export)")
    try:
        data = tflite.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{tflite}: cannot read ({exc})") from None
    # A flatbuffer's file identifier sits at bytes 4..8; TFLite's is "TFL3".
    _check(data[4:8] == b"TFL3", tflite, "not a TFLite model (no TFL3 identifier)")
    _check(hashlib.sha256(data).hexdigest() == meta["litert"]["sha256"], tflite,
           "does not match litert.sha256 in model.json (files from different exports?)")


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """Parse and validate ``model.json`` of an artifact directory (no TensorFlow)."""
    path = Path(model_dir) / META_FILE
    if not Path(model_dir).is_dir():
        raise ArtifactError(f"{model_dir}: model directory not found")
    _check(path.is_file(), path, "file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read ({exc})") from None
    return validate_meta(meta, path)


def check_artifact(model_dir: str | Path | None = None) -> Path:
    """Validate model.json and the model.keras archive of the configured (or shipped) model without TensorFlow.

    Returns the artifact directory; raises ArtifactError naming the file and the problem.
    """
    path = resolve_model_dir(model_dir)
    meta = read_meta(path)
    if (path / TFLITE_FILE).is_file():
        _check_tflite(path, meta)
    keras_file = path / MODEL_FILE
    _check(keras_file.is_file(), keras_file, "file not found")
    try:
        # A .keras file is a zip archive: the CRC check catches truncated or overwritten files cheaply.
        with zipfile.ZipFile(keras_file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{keras_file}: not a Keras archive ({exc})") from None
    _check(bad is None, keras_file, f"corrupt archive member {bad!r}")
    return path


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same directory, then rename (no half-written artifact)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600; artifacts are meant to be readable like any other package file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_artifact(model, meta: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write model.keras (without optimizer state) and model.json; return the completed metadata.

    Fills in ``weights_sha256``, ``frameworks``, ``created_at`` and, if absent, ``version``
    (UTC date + first 8 hex digits of the weights hash).
    """
    import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = weights_sha256(model)
    now = _dt.datetime.now(_dt.UTC)
    full = dict(meta)
    full.setdefault("schema", SCHEMA_VERSION)
    full.setdefault("version", f"{now:%Y%m%d}-{digest[:8]}")
    full["weights_sha256"] = digest
    full.setdefault("created_at", now.isoformat(timespec="seconds"))
    full["frameworks"] = framework_versions()
    validate_meta(full, out / META_FILE)
    # An uncompiled clone drops the optimizer state and the custom training loss from the file.
    clone = keras.Model.from_config(model.get_config(), custom_objects=custom_objects())
    clone.set_weights(model.get_weights())
    _atomic_write(out / MODEL_FILE, lambda p: clone.save(p))
    text = json.dumps(full, indent=2, allow_nan=False) + "\n"
    _atomic_write(out / META_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    return full


def save_tflite(content: bytes, meta: dict[str, Any], model_dir: str | Path) -> None:
    """Add model.tflite to an artifact and write the model.json that records it (``meta`` with its ``litert``)."""
    out = Path(model_dir)
    validate_meta(meta, out / META_FILE)
    _check(meta["litert"]["sha256"] == hashlib.sha256(content).hexdigest(), out / TFLITE_FILE,
           "content does not match litert.sha256")
    _atomic_write(out / TFLITE_FILE, lambda p: p.write_bytes(content))
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    _atomic_write(out / META_FILE, lambda p: p.write_text(text, encoding="utf-8"))


def load_artifact(model_dir: str | Path):
    """Load (model, meta) from an artifact directory; ArtifactError if anything is missing or inconsistent."""
    meta = read_meta(model_dir)
    path = Path(model_dir) / MODEL_FILE
    _check(path.is_file(), path, "file not found")
    configure_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # noqa: BLE001 - Keras raises many types (ValueError, OSError, zip errors) for bad files.
        raise ArtifactError(f"{path}: cannot load the Keras model ({type(exc).__name__}: {exc})") from None
    size = coerce_config(meta["architecture"]).input_size
    _check(tuple(model.input_shape[1:]) == (size, size, 1), path,
           f"model input {model.input_shape} does not match the architecture's {size}x{size}")
    _check(weights_sha256(model) == meta["weights_sha256"], path,
           "weights do not match weights_sha256 in model.json (files from different trainings?)")
    return model, meta
