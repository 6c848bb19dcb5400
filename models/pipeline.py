"""The training pipeline behind ``sketchwatch train``: read -> split -> build and train -> score -> describe -> save.

Each step is a small function of plain data (a :class:`TrainingSpec` in, dataclasses and arrays out);
:func:`run_training` chains them. Reading rasterizes stroke files (:func:`models.datasets.load_files`).
Nothing here knows about click: bad input raises :class:`models.formats.FormatError` or :class:`SpecError`
(which names the option it comes from), and progress goes to a ``report`` callback. TensorFlow is
imported only when a model is built.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import AutoencoderConfig
from models.datasets import LabeledBitmaps, fingerprint, load_files, split_categories, split_holdout
from models.raster import SIDE

# Percentiles of the held-out cats' scores recorded in model.json (key -> percentile).
PERCENTILES = {"90": 90.0, "95": 95.0, "99": 99.0, "99.5": 99.5}


class SpecError(ValueError):
    """A training setting that does not fit the data; ``option`` names the setting's command-line option."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class TrainingSpec:
    """Everything one training run reads and does (the options of ``sketchwatch train``)."""

    data_files: tuple[Path, ...]
    outlier_files: tuple[Path, ...] = ()
    holdout_categories: float | list[str] = 0.3
    cat_holdout: float = 0.15
    holdout_first: int = 0
    eval_anomalous: tuple[Path, ...] = ()
    eval_normal: tuple[Path, ...] = ()
    epochs: int = 40
    batch_size: int = 128
    patience: int = 5
    val_fraction: float = 0.1
    seed: int = 0
    latent_dim: int = 16
    input_size: int = 28
    outlier_weight: float = 2.0
    augment: bool = True
    cat_jitter: float = 0.0
    cat_drop: float = 0.0
    near_cat_weight: float = 1.0
    jigsaw_negatives: float = 0.0
    noise: float = 0.0
    learning_rate: float = 2e-3
    threshold_percentile: str = "95"
    max_minutes: float = 4.0
    threads: int | None = None
    command: str = ""  # recorded in model.json, so a model says how it was made


@dataclass
class TrainingData:
    """The loaded files and the seeded splits: what is trained on and what is held out."""

    cats: LabeledBitmaps
    cat_train: np.ndarray
    cat_held: np.ndarray
    outliers: LabeledBitmaps | None = None
    out_train: LabeledBitmaps | None = None
    out_held: LabeledBitmaps | None = None
    train_categories: list[str] = field(default_factory=list)
    held_categories: list[str] = field(default_factory=list)
    eval_categories: set[str] = field(default_factory=set)
    eval_sets: dict[str, LabeledBitmaps] = field(default_factory=dict)
    normal_sets: dict[str, LabeledBitmaps] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: how many cats and outliers train and how many are held out."""
        outliers = "none"
        if self.outliers is not None:
            outliers = (f"{len(self.out_train)} train ({len(self.train_categories)} categories), "
                        f"{len(self.out_held)} held out ({len(self.held_categories)} categories)")
        return f"cats: {len(self.cat_train)} train, {len(self.cat_held)} held out; outliers: {outliers}"


@dataclass
class Evaluation:
    """Scores of the held-out cats, the threshold they give, and the metrics against every evaluation set."""

    held_scores: np.ndarray
    percentiles: dict[str, float]
    threshold: float
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    normal_checks: dict[str, Any]


def category_labels(data: LabeledBitmaps) -> np.ndarray:
    """Per-row category: the word when present, else the source file name."""
    return np.array([w if w is not None else s for w, s in zip(data.words, data.sources)], dtype=object)


def read_data(spec: TrainingSpec) -> TrainingData:
    """Load every file of ``spec`` and split cats (rows) and outliers (categories) into train and held out."""
    cats = load_files(spec.data_files)
    if spec.holdout_first > len(cats):
        raise SpecError(f"only {len(cats)} cats", "--holdout-first")
    cat_train, cat_held = split_holdout(len(cats), spec.cat_holdout, spec.seed, spec.holdout_first)
    data = TrainingData(cats, cat_train, cat_held)
    outliers = load_files(spec.outlier_files) if spec.outlier_files else None
    data.eval_sets = {path.name: load_files((path,)) for path in spec.eval_anomalous}
    # Categories of evaluation-only files stay out of training, so those files test unseen categories.
    data.eval_categories = {w for extra in data.eval_sets.values() for w in extra.words if w is not None}
    if outliers is not None:
        _split_outliers(spec, data, outliers)
    data.normal_sets = {path.name: load_files((path,)) for path in spec.eval_normal}
    return data


def _split_outliers(spec: TrainingSpec, data: TrainingData, outliers: LabeledBitmaps) -> None:
    """Hold out whole outlier categories (a fraction or named ones, plus the evaluation files' categories)."""
    labels = category_labels(outliers)
    try:
        data.train_categories, data.held_categories = split_categories(
            labels, spec.holdout_categories, spec.seed, always_holdout=data.eval_categories)
    except ValueError as exc:
        raise SpecError(str(exc), "--holdout-categories") from None
    held_mask = np.isin(labels, data.held_categories)
    data.outliers, data.out_train, data.out_held = outliers, outliers.subset(~held_mask), outliers.subset(held_mask)
    if len(data.out_train) == 0:
        raise SpecError("no outlier categories left for training", "--holdout-categories")


def fit(spec: TrainingSpec, data: TrainingData):
    """Build the autoencoder and train it on the training cats and outliers; return (model, history, config)."""
    from models.cv import NEAR_CAT
    from models.scoring import configure_tensorflow
    from models.train import CatAugmentConfig, train_model

    configure_tensorflow(spec.threads)
    config = AutoencoderConfig(input_size=spec.input_size, latent_dim=spec.latent_dim)
    train_outliers = data.out_train.bitmaps if data.out_train is not None and spec.outlier_weight > 0 else None
    multipliers = None
    if train_outliers is not None and spec.near_cat_weight != 1.0:
        words = category_labels(data.out_train)
        multipliers = np.where(np.isin(words, sorted(NEAR_CAT)), spec.near_cat_weight, 1.0)
    cat_augment = None
    if spec.cat_jitter > 0 or spec.cat_drop > 0:
        cat_augment = CatAugmentConfig(jitter_px=spec.cat_jitter, drop_probability=spec.cat_drop)
    model, history = train_model(
        data.cats.bitmaps[data.cat_train], train_outliers, epochs=spec.epochs, batch_size=spec.batch_size,
        seed=spec.seed, val_fraction=spec.val_fraction, patience=spec.patience, progress=True, config=config,
        outlier_weight=spec.outlier_weight, augment=spec.augment, noise=spec.noise,
        learning_rate=spec.learning_rate, max_seconds=spec.max_minutes * 60.0, threads=spec.threads,
        outlier_multipliers=multipliers, cat_augment=cat_augment, jigsaw_negatives=spec.jigsaw_negatives,
    )  # fmt: skip
    return model, history, config


def score(spec: TrainingSpec, model, data: TrainingData) -> Evaluation:
    """Score the held-out cats (percentiles, threshold) and every held-out or evaluation-only set against them."""
    from models.metrics import conformal_fpr_interval, conformal_threshold, evaluate_scores
    from models.scoring import score_batch

    held_scores, _ = score_batch(model, data.cats.bitmaps[data.cat_held])
    percentiles = {k: float(np.percentile(held_scores, p)) for k, p in PERCENTILES.items()}
    # Split-conformal rather than an interpolated percentile: new cats are flagged at most at the nominal rate.
    nominal = 1.0 - float(spec.threshold_percentile) / 100.0
    threshold = conformal_threshold(held_scores, nominal)
    calibration = {"method": "split-conformal: the ceil((n+1)(1-fpr))-th smallest held-out cat score",
                   "nominal_fpr": nominal, "threshold": threshold,
                   "fpr_on_new_cats": conformal_fpr_interval(len(held_scores), nominal)}
    metrics: dict[str, Any] = {}
    if data.out_held is not None and len(data.out_held):
        s, _ = score_batch(model, data.out_held.bitmaps)
        metrics["heldout_categories"] = evaluate_scores(held_scores, s, threshold, category_labels(data.out_held))
    for name, extra in data.eval_sets.items():
        s, _ = score_batch(model, extra.bitmaps)
        metrics[name] = evaluate_scores(held_scores, s, threshold, category_labels(extra))
    normal_checks = {}
    for name, extra in data.normal_sets.items():
        s, _ = score_batch(model, extra.bitmaps)
        # Same distribution as held-out cats means AUROC ~0.5 and ~(100 - percentile)% flagged.
        check = evaluate_scores(held_scores, s, threshold)
        normal_checks[name] = {"n": len(s), "mean_score": float(s.mean()),
                               "mean_score_heldout_cats": float(held_scores.mean()),
                               "auroc_vs_heldout_cats": check["auroc"],
                               "flagged_fraction": check["recall_at_threshold"]}  # fmt: skip
    return Evaluation(held_scores, percentiles, threshold, calibration, metrics, normal_checks)


def describe(spec: TrainingSpec, data: TrainingData, config: AutoencoderConfig, history, ev: Evaluation) -> dict:
    """The model.json content of a run: architecture, input and score rules, threshold, data, metrics."""
    from models.formulas import DEFAULT_FORMULA, SCORE_DEFINITION

    cats, held = data.cats, ev.held_scores
    return {
        "architecture": config.to_dict(),
        "input": {
            "side": SIDE, "model_input_size": config.input_size, "padding": config.padding,
            "scaling": "uint8 / 255 -> float32 in [0, 1], ink high (white on black), zero-padded",
            "renderer": "models.raster.rasterize_batch (official numpy_bitmap rendering) for strokes",
        },
        "score": {"formula": DEFAULT_FORMULA, "definition": SCORE_DEFINITION, "higher_is_more_anomalous": True,
                  "flag_rule": "score > suggested_threshold"},
        "percentiles": ev.percentiles,
        "suggested_threshold": ev.threshold,
        "threshold_rule": (f"split-conformal {spec.threshold_percentile}th percentile of the held-out cats' scores: "
                           f"about {100 - float(spec.threshold_percentile):g}% of new cats get flagged"),
        "threshold_calibration": ev.calibration,
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "training": {
            "command": spec.command,
            "seed": spec.seed, "epochs": spec.epochs, "batch_size": spec.batch_size, "patience": spec.patience,
            "val_fraction": spec.val_fraction, "outlier_weight": spec.outlier_weight, "augment": spec.augment,
            "cat_jitter": spec.cat_jitter, "cat_drop": spec.cat_drop, "near_cat_weight": spec.near_cat_weight,
            "jigsaw_negatives": spec.jigsaw_negatives,
            "noise": spec.noise, "learning_rate": spec.learning_rate, "history": history.to_dict(),
        },
        "data": {
            "cats": {"files": [p.name for p in spec.data_files], "n_total": len(cats), "n_train": len(data.cat_train),
                     "sha256_train": fingerprint(cats.bitmaps[data.cat_train]), "n_heldout": len(data.cat_held),
                     "sha256_heldout": fingerprint(cats.bitmaps[data.cat_held]),
                     "heldout_rows": data.cat_held.tolist(),
                     "holdout_fraction": spec.cat_holdout, "holdout_first": spec.holdout_first},
            "outliers": None if data.outliers is None else {
                "files": [p.name for p in spec.outlier_files], "n_train": len(data.out_train),
                "sha256_train": fingerprint(data.out_train.bitmaps), "n_heldout": len(data.out_held),
                "train_categories": data.train_categories, "heldout_categories": data.held_categories,
                "forced_heldout_categories": sorted(data.eval_categories & set(data.held_categories)),
            },
            "eval_anomalous": [p.name for p in spec.eval_anomalous],
            "eval_normal": [p.name for p in spec.eval_normal],
        },
        "heldout_cat_score": {"n": int(held.size), "mean": float(held.mean()),
                              "min": float(held.min()), "max": float(held.max())},
        "metrics": ev.metrics,
        "normal_checks": ev.normal_checks,
    }  # fmt: skip


def run_training(spec: TrainingSpec, out_dir: str | Path, report: Callable[[str], None] = lambda _line: None) -> dict:
    """The whole pipeline: read, train, score, write the artifact to ``out_dir``; return its model.json."""
    from models.artifact import save_artifact

    data = read_data(spec)
    report(data.summary())
    model, history, config = fit(spec, data)
    report(f"training: {len(history.loss)} epochs, best {history.best_epoch + 1}, "
           f"stopped by {history.stopped}, {history.seconds:.0f}s")
    evaluation = score(spec, model, data)
    return save_artifact(model, describe(spec, data, config, history, evaluation), out_dir)
