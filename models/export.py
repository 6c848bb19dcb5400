"""Export an artifact's model to LiteRT (``model.tflite``), verified against Keras before anything is written.

The Keras graph is not converted as it is: each DualConv pads its 2x2 kernel inside the graph, and the
straightforward conversion of that graph gave all-NaN outputs. The export rebuilds the same function
from plain TensorFlow ops instead, with the weights as constants:

* each DualConv becomes one 3x3 convolution whose kernel is the 3x3 kernel next to the 2x2 kernel
  padded with a zero first row and column (the fold is exact: it is what DualConv computes);
* 2x nearest upsampling becomes concatenate + reshape (exact copies; LiteRT's CPU delegate then runs
  the whole graph as one partition);
* the batch dimension stays dynamic, so :class:`models.lite.LiteScorer` can size its interpreters.

**Parity.** Before writing, the converted graph runs through :class:`models.lite.LiteScorer` (the
worker's code path) next to Keras on the artifact's held-out cats and 1,000 non-cats, read from the
data files named in model.json (default folder: :func:`default_data_dir`). Reconstructions must agree
within :data:`RECON_TOLERANCE` and scores within :data:`SCORE_TOLERANCE`. When the files are not
there (or the cat file's fingerprint is not the training one), seeded synthetic scribbles rendered
by the stroke rasterizer take their place and model.json says so: the artifact carries no drawings,
and any input checks that two graphs compute the same function, although the held-out data is what
the worker will see. An export that fails parity raises :class:`ExportError` and writes nothing.

TensorFlow is imported inside the functions that convert or run Keras, never at import.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from models.artifact import TFLITE_FILE, ArtifactError, load_artifact, read_meta, resolve_model_dir, save_tflite
from models.formulas import SCORE_FORMULAS

log = logging.getLogger(__name__)

RECON_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-5
NONCAT_SAMPLE = 1000
SAMPLE_SEED = 0
_ACTIVATIONS = ("relu", "sigmoid", "linear")


class ExportError(RuntimeError):
    """The model cannot be exported, or the export does not match Keras; nothing was written."""


def default_data_dir() -> Path:
    """The shared Quick Draw folder beside the repository (``../shared/data/quickdraw``)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


# --------------------------------------------------------------------------- the plain graph


def fold_dual_conv(kernel3: np.ndarray, bias3: np.ndarray, kernel2: np.ndarray, bias2: np.ndarray):
    """One (3, 3, cin, 2c) kernel and (2c,) bias computing DualConv's [conv3x3 | conv2x2] ('same') exactly."""
    padded = np.zeros_like(kernel3)
    # A 'same' 2x2 kernel reads rows/columns i..i+1: the bottom-right 2x2 of a 3x3 kernel centred on i.
    padded[1:, 1:] = kernel2
    return np.concatenate([kernel3, padded], axis=-1), np.concatenate([bias3, bias2])


def _conv_config(layer, config: dict[str, Any]) -> None:
    """Refuse Conv2D settings the plain graph does not reproduce."""
    wanted = {"strides": (1, 1), "dilation_rate": (1, 1), "padding": "same", "groups": 1,
              "data_format": "channels_last", "use_bias": True}  # fmt: skip
    for key, value in wanted.items():
        got = config.get(key, value)
        if (tuple(got) if isinstance(got, list) else got) != value:
            raise ExportError(f"layer {layer.name!r}: {key}={got!r} is not supported by the export")


def plain_ops(model) -> list[tuple]:
    """The model as a chain of plain operations with numpy weights; ExportError on a layer it cannot map."""
    from models.autoencoder import custom_objects

    dual_conv = custom_objects()["DualConv"]
    ops: list[tuple] = []
    previous = model.layers[0].output
    for layer in model.layers[1:]:
        if layer.input is not previous:
            raise ExportError(f"layer {layer.name!r} does not follow the previous layer: only chains are exported")
        previous = layer.output
        kind = type(layer).__name__
        config = layer.get_config()
        weights = [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]
        activation = config.get("activation", "linear")
        if activation not in _ACTIVATIONS:
            raise ExportError(f"layer {layer.name!r}: activation {activation!r} is not supported by the export")
        if isinstance(layer, dual_conv):
            ops.append(("conv", *fold_dual_conv(*weights), "relu"))
        elif kind == "Conv2D":
            _conv_config(layer, config)
            ops.append(("conv", weights[0], weights[1], activation))
        elif kind == "MaxPooling2D":
            pool, strides = tuple(config["pool_size"]), tuple(config["strides"] or config["pool_size"])
            ops.append(("maxpool", pool, strides, config["padding"].upper()))
        elif kind == "Flatten":
            ops.append(("flatten",))
        elif kind == "Dense":
            ops.append(("dense", weights[0], weights[1], activation))
        elif kind == "Reshape":
            ops.append(("reshape", tuple(int(d) for d in config["target_shape"])))
        elif kind == "UpSampling2D":
            if config.get("interpolation", "nearest") != "nearest":
                raise ExportError(f"layer {layer.name!r}: only nearest upsampling is supported by the export")
            ops.append(("upsample", tuple(config["size"])))
        elif kind == "Cropping2D":
            (top, bottom), (left, right) = config["cropping"]
            ops.append(("crop", int(top), int(bottom), int(left), int(right)))
        else:
            raise ExportError(f"layer {layer.name!r}: cannot export a {kind} layer")
    return ops


def _apply(ops: list[tuple], x):
    """Run the plain operations on a (None, S, S, 1) tensor with TensorFlow ops."""
    import tensorflow as tf

    act = {"relu": tf.nn.relu, "sigmoid": tf.math.sigmoid, "linear": lambda v: v}
    for op in ops:
        kind = op[0]
        if kind == "conv":
            x = act[op[3]](tf.nn.conv2d(x, tf.constant(op[1]), 1, "SAME") + tf.constant(op[2]))
        elif kind == "maxpool":
            x = tf.nn.max_pool2d(x, op[1], op[2], op[3])
        elif kind == "flatten":
            x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
        elif kind == "dense":
            x = act[op[3]](tf.matmul(x, tf.constant(op[1])) + tf.constant(op[2]))
        elif kind == "reshape":
            x = tf.reshape(x, [-1, *op[1]])
        elif kind == "upsample":
            (sh, sw), (h, w, c) = op[1], x.shape[1:]
            # Copies side by side, then regrouped: each pixel repeated sw times along a row, each row sh times.
            x = tf.reshape(tf.concat([x] * sw, axis=3), [-1, h, w * sw, c])
            x = tf.reshape(tf.concat([x] * sh, axis=2), [-1, h * sh, w * sw, c])
        elif kind == "crop":
            _, top, bottom, left, right = op
            h, w = x.shape[1], x.shape[2]
            x = x[:, top : h - bottom, left : w - right, :]
    return x


def convert(model) -> bytes:
    """The model as a TFLite flatbuffer of builtin ops with a dynamic batch dimension."""
    import tensorflow as tf

    ops = plain_ops(model)
    side = int(model.input_shape[1])
    module = tf.Module()
    module.infer = tf.function(lambda x: _apply(ops, x), autograph=False,
                               input_signature=[tf.TensorSpec([None, side, side, 1], tf.float32, name="bitmap")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.infer.get_concrete_function()], module)
    return bytes(converter.convert())


def graph_ops(content: bytes) -> dict[str, int]:
    """Operator counts of a TFLite model (before any delegate), e.g. {"CONV_2D": 9, ...}."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    counts: dict[str, int] = {}
    for op in interp._get_ops_details():  # noqa: SLF001 - the only operator listing LiteRT offers
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- parity data


def synthetic_bitmaps(n: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """``n`` seeded scribbles (1-6 strokes of 2-16 points) rendered by the stroke rasterizer; row 0 is blank."""
    from models.raster import rasterize_batch

    rng = np.random.default_rng(seed)
    drawings: list[list[np.ndarray]] = [[]]
    for _ in range(n - 1):
        strokes = []
        for _ in range(int(rng.integers(1, 7))):
            points = int(rng.integers(2, 17))
            start = rng.uniform(0, 255, size=(2, 1))
            walk = np.cumsum(rng.normal(0, 25, size=(2, points)), axis=1)
            strokes.append(np.clip(start + walk, 0, 255))
        drawings.append(strokes)
    return rasterize_batch(drawings)


def _heldout_cats(meta: dict[str, Any], data_dir: Path) -> tuple[np.ndarray, str] | None:
    """The artifact's held-out cats from its training files, if present with the recorded fingerprint."""
    from models.datasets import fingerprint, load_files

    info = (meta.get("data") or {}).get("cats") or {}
    files, rows = info.get("files") or [], info.get("heldout_rows")
    paths = [data_dir / name for name in files]
    if not paths or rows is None or not all(p.is_file() for p in paths):
        return None
    cats = load_files(paths).bitmaps
    if len(cats) != info.get("n_total") or fingerprint(cats[rows]) != info.get("sha256_heldout"):
        log.warning("%s: not the files the model was trained on (fingerprint differs)", ", ".join(files))
        return None
    return cats[rows], f"{', '.join(files)}: the {len(rows)} held-out rows of model.json data.cats"


def _noncats(meta: dict[str, Any], data_dir: Path, n: int) -> tuple[np.ndarray, str] | None:
    """``n`` seeded non-cats outside the training categories, from the evaluation or outlier files."""
    from models.datasets import load_file

    data = meta.get("data") or {}
    outliers = data.get("outliers") or {}
    trained = set(outliers.get("train_categories") or [])
    for name in [*(data.get("eval_anomalous") or []), *(outliers.get("files") or [])]:
        path = data_dir / name
        if not path.is_file():
            continue
        loaded = load_file(path)
        keep = np.flatnonzero([w is None or w not in trained for w in loaded.words])
        if len(keep) == 0:
            continue
        rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(keep, size=min(n, len(keep)), replace=False))
        source = f"{name}: {len(rows)} rows drawn with seed {SAMPLE_SEED} outside training categories"
        return loaded.bitmaps[rows], source
    return None


def parity_sets(meta: dict[str, Any], data_dir: Path | None = None) -> dict[str, tuple[np.ndarray, str]]:
    """The inputs of the parity check: {name: (bitmaps, where they come from)}; synthetic where data is absent."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    n_cats = int(((meta.get("data") or {}).get("cats") or {}).get("n_heldout") or 525)
    sets: dict[str, tuple[np.ndarray, str]] = {}
    cats = _heldout_cats(meta, folder) if folder.is_dir() else None
    noncats = _noncats(meta, folder, NONCAT_SAMPLE) if folder.is_dir() else None
    if cats is not None:
        sets["heldout_cats"] = cats
    if noncats is not None:
        sets["noncats"] = noncats
    missing = (0 if cats else n_cats) + (0 if noncats else NONCAT_SAMPLE)
    if missing:
        sets["synthetic"] = (synthetic_bitmaps(missing),
                             f"{missing} seeded scribbles (seed {SAMPLE_SEED}) rendered by models.raster: "
                             f"data files not found under {folder}")
    return sets


# --------------------------------------------------------------------------- parity and export


def measure_parity(model, content: bytes, meta: dict[str, Any], sets: dict[str, tuple[np.ndarray, str]],
                   recon_tol: float = RECON_TOLERANCE, score_tol: float = SCORE_TOLERANCE) -> dict[str, Any]:
    """Keras (models.scoring) against LiteRT (models.lite) on each set: max abs differences and a verdict."""
    from models.lite import LiteScorer
    from models.scoring import reconstruct

    formula = SCORE_FORMULAS[meta["score"]["formula"]]
    lite = LiteScorer(content, meta)
    figures: dict[str, Any] = {}
    worst_recon = worst_score = 0.0
    finite = True
    for name, (bitmaps, source) in sets.items():
        x_k, r_k = reconstruct(model, bitmaps)
        x_l, r_l = lite.reconstruct(bitmaps)
        s_k, s_l = formula(x_k, r_k), formula(x_l, r_l)
        finite = finite and bool(np.isfinite(r_l).all() and np.isfinite(s_l).all())
        recon_diff = float(np.max(np.abs(r_k - r_l))) if np.isfinite(r_l).all() else float("inf")
        score_diff = float(np.max(np.abs(s_k - s_l))) if np.isfinite(s_l).all() else float("inf")
        u8 = lambda r: np.clip(np.rint(r * 255.0), 0, 255).astype(np.int16)  # noqa: E731 - as the scorers round
        figures[name] = {"n": int(len(bitmaps)), "source": source, "max_abs_reconstruction_diff": recon_diff,
                         "max_abs_score_diff": score_diff,
                         "max_reconstruction_u8_diff": int(np.max(np.abs(u8(r_k) - u8(r_l)))) if finite else None}
        worst_recon, worst_score = max(worst_recon, recon_diff), max(worst_score, score_diff)
    passed = finite and worst_recon <= recon_tol and worst_score <= score_tol
    return {"passed": passed, "tolerance": {"reconstruction": recon_tol, "score": score_tol},
            "max_abs_reconstruction_diff": worst_recon, "max_abs_score_diff": worst_score, "sets": figures}


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"


def export_artifact(model_dir: str | Path | None = None, data_dir: str | Path | None = None,
                    recon_tol: float = RECON_TOLERANCE, score_tol: float = SCORE_TOLERANCE,
                    verbose: bool = False) -> dict[str, Any]:
    """Convert the artifact's model.keras to model.tflite, check parity, then write both files; returns the record.

    Writes model.tflite and the model.json that records it (``litert``: SHA-256, source weights, the
    converter versions, the graph's operators and the parity figures). Raises :class:`ExportError`
    (nothing written) when the model cannot be converted or the parity check fails, and
    :class:`models.artifact.ArtifactError` when the artifact itself is invalid.
    """
    from models.quiet import filtered_stderr, quiet_tensorflow

    path = resolve_model_dir(model_dir)
    read_meta(path)  # a readable error before TensorFlow loads
    quiet_tensorflow(verbose)
    model, meta = load_artifact(path)
    if verbose:
        content = convert(model)
    else:
        with filtered_stderr():
            content = convert(model)
    parity = measure_parity(model, content, meta, parity_sets(meta, data_dir), recon_tol, score_tol)
    if not parity["passed"]:
        lines = [f"  {name}: n={f['n']}, max reconstruction diff {f['max_abs_reconstruction_diff']:.3g}, "
                 f"max score diff {f['max_abs_score_diff']:.3g}" for name, f in parity["sets"].items()]
        raise ExportError(
            f"{path}: the LiteRT graph does not match Keras (tolerances: reconstruction {recon_tol:g}, "
            f"score {score_tol:g}); {TFLITE_FILE} was not written:\n" + "\n".join(lines))
    import tensorflow as tf

    from models.lite import tflite_sha256

    record = {
        "file": TFLITE_FILE,
        "sha256": tflite_sha256(content),
        "bytes": len(content),
        "weights_sha256": meta["weights_sha256"],
        "exported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "converter": {"tensorflow": tf.__version__, "ai_edge_litert": _litert_version()},
        "graph": {"input": [-1, *(int(d) for d in model.input_shape[1:])], "ops": graph_ops(content),
                  "note": "DualConv folded into one 3x3 convolution; upsampling as concatenate + reshape"},
        "parity": parity,
    }
    save_tflite(content, {**meta, "litert": record}, path)
    return record


@click.command("export")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Artifact directory (default: the shipped model).")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the data files named in model.json, for the parity check "
                   "[default: ../shared/data/quickdraw beside the repository; synthetic scribbles if absent].")
@click.option("--json", "as_json", is_flag=True, help="Print the litert record written to model.json as JSON.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's and the converter's own log lines.")
def export_command(model_dir: Path | None, data_dir: Path | None, as_json: bool, verbose: bool) -> None:
    """Add model.tflite (LiteRT) to a model artifact, after checking that it scores like Keras."""
    started = time.monotonic()
    try:
        record = export_artifact(model_dir, data_dir, verbose=verbose)
    except (ArtifactError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(record))
        return
    parity = record["parity"]
    out = sys.stdout
    out.write(f"wrote {resolve_model_dir(model_dir) / TFLITE_FILE} ({record['bytes']:,} bytes, "
              f"{sum(record['graph']['ops'].values())} ops) in {time.monotonic() - started:.1f} s\n")
    for name, f in parity["sets"].items():
        out.write(f"parity {name} (n={f['n']}): max reconstruction diff {f['max_abs_reconstruction_diff']:.2e}, "
                  f"max score diff {f['max_abs_score_diff']:.2e}\n    {f['source']}\n")
    tol = parity["tolerance"]
    out.write(f"within tolerance (reconstruction {tol['reconstruction']:g}, score {tol['score']:g}); "
              "recorded in model.json under 'litert'\n")


if __name__ == "__main__":
    export_command(prog_name="python -m models.export")
