"""Retraining from reviews: the parent model's base data plus staff-reviewed sketches -> a candidate artifact.

Pure ML, like :mod:`models.pipeline` which it reuses: the caller (the training worker) hands in the reviewed
sketches as arrays and a progress function; nothing here knows about the database or the queue.

The steps:

1. **Base data**: the files the parent was trained on, named in its model.json (``data``), read from a
   folder, split exactly as the parent split them (its seed, its held-out cat rows and outlier categories;
   the fingerprints must match), so the fixed evaluation split is the same for every version.
2. **Reviewed data**: reviewed cats are normals, confirmed anomalies are outliers (outlier exposure).
   Identical bitmaps are one drawing: duplicates among the reviews keep the first (conflicting verdicts on
   one bitmap drop it), and base rows equal to a reviewed bitmap leave the base (training and evaluation),
   so no drawing is both trained on and evaluated. A seeded, per-verdict share of the reviews is held back.
3. **Training**: :func:`models.train.train_model`, warm-started from the parent's weights (or from scratch),
   reviewed outliers weighted ``review_weight`` times a base outlier.
4. **Evaluation**: candidate and parent on the fixed split (held-out cats vs held-out categories and the
   evaluation files) and on the held-back reviews; the candidate's threshold is the parent's rule
   (a percentile of the held-out cats).
5. **Artifact**: model.keras and model.json (:func:`models.artifact.save_artifact`); the caller exports
   model.tflite with :func:`models.export.export_artifact` (parity-checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import LabeledBitmaps, fingerprint
from models.pipeline import TrainingData, TrainingSpec, describe, read_data
from models.raster import SIDE

# A warm start continues from trained weights: a smaller step keeps what the parent learnt.
WARM_START_LR_FACTOR = 0.25


class RetrainError(ValueError):
    """Retraining cannot run on this input; the message names the file, setting or data at fault."""


@dataclass(frozen=True)
class ReviewedSketches:
    """Staff-reviewed sketches: ids, (N, 28, 28) uint8 bitmaps, and True where the verdict is "anomaly"."""

    ids: np.ndarray
    bitmaps: np.ndarray
    anomalous: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.bitmaps.shape != (n, SIDE, SIDE) or self.bitmaps.dtype != np.uint8 or len(self.anomalous) != n:
            raise RetrainError(f"reviewed sketches: expected {n} uint8 bitmaps of {SIDE}x{SIDE} and {n} labels")

    @classmethod
    def from_rows(cls, rows: list[tuple[int, bytes, bool]]) -> ReviewedSketches:
        """From (sketch id, 784 raw bitmap bytes, is anomaly) rows."""
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        bitmaps = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.uint8).reshape(-1, SIDE, SIDE)
        return cls(ids, bitmaps.copy(), np.array([bool(r[2]) for r in rows], dtype=bool))


@dataclass(frozen=True)
class RetrainSpec:
    """One retraining: the parent artifact, the folder of its base files, and the knobs of the run."""

    parent_dir: Path
    data_dir: Path
    epochs: int = 12
    holdback: float = 0.2
    review_weight: float = 40.0
    warm_start: bool = True
    max_minutes: float = 4.0
    seed: int = 0
    threads: int | None = None
    deterministic: bool = True


@dataclass
class ReviewSplit:
    """The reviewed sketches after deduplication: what trains and what is held back, with the dropped ids."""

    train: ReviewedSketches
    held: ReviewedSketches
    duplicate_ids: list[int] = field(default_factory=list)
    conflicting_ids: list[int] = field(default_factory=list)
    base_rows_removed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts for the run's data summary and the registry's fingerprint."""
        return {
            "train_cats": int((~self.train.anomalous).sum()), "train_anomalies": int(self.train.anomalous.sum()),
            "heldback_cats": int((~self.held.anomalous).sum()), "heldback_anomalies": int(self.held.anomalous.sum()),
            "duplicates_dropped": len(self.duplicate_ids), "conflicting_dropped": len(self.conflicting_ids),
            "base_rows_removed": self.base_rows_removed,
        }  # fmt: skip


ProgressFn = Callable[[Any], None]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (the base files' part of the training-data fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bitmap_hashes(bitmaps: np.ndarray) -> list[bytes]:
    """One digest per bitmap (its 784 bytes): equal digests are the same drawing as rendered."""
    flat = np.ascontiguousarray(bitmaps).reshape(len(bitmaps), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def base_spec(parent_meta: dict[str, Any], data_dir: Path, threads: int | None = None) -> TrainingSpec:
    """The parent's training spec rebuilt from its model.json, reading its files from ``data_dir``."""
    data, training = parent_meta.get("data") or {}, parent_meta.get("training") or {}
    cats, outliers = data.get("cats") or {}, data.get("outliers") or {}
    if not cats.get("files") or "heldout_rows" not in cats:
        raise RetrainError("the parent model's model.json does not name its training files (data.cats)")
    folder = Path(data_dir)

    def paths(names) -> tuple[Path, ...]:
        found = tuple(folder / name for name in names or ())
        missing = [p for p in found if not p.is_file()]
        if missing:
            raise RetrainError(f"base training file {missing[0]} not found (set SKETCHWATCH_TRAINING_DATA_DIR to "
                               f"the folder with {', '.join(p.name for p in found)})")
        return found

    arch = parent_meta.get("architecture") or {}
    # Recipe options newer than the first shipped model: taken when the parent recorded them.
    recipe = {name: type(getattr(TrainingSpec, name, 0.0))(training[name])
              for name in ("cat_jitter", "cat_drop", "near_cat_weight", "jigsaw_negatives")
              if name in training and hasattr(TrainingSpec, name)}  # fmt: skip
    return TrainingSpec(
        **recipe,
        data_files=paths(cats["files"]), outlier_files=paths(outliers.get("files")),
        holdout_categories=list(outliers.get("heldout_categories") or []) if outliers else 0.3,
        cat_holdout=float(cats.get("holdout_fraction", 0.15)), holdout_first=int(cats.get("holdout_first", 0)),
        eval_anomalous=paths(data.get("eval_anomalous")), eval_normal=paths(data.get("eval_normal")),
        epochs=int(training.get("epochs", 40)), batch_size=int(training.get("batch_size", 128)),
        patience=int(training.get("patience", 5)), val_fraction=float(training.get("val_fraction", 0.1)),
        seed=int(training.get("seed", 0)), latent_dim=int(arch.get("latent_dim", 16)),
        input_size=int(arch.get("input_size", SIDE)), outlier_weight=float(training.get("outlier_weight", 2.0)),
        augment=bool(training.get("augment", True)), noise=float(training.get("noise", 0.0)),
        learning_rate=float(training.get("learning_rate", 2e-3)), threads=threads,
    )  # fmt: skip


def read_base(parent_meta: dict[str, Any], spec: TrainingSpec) -> TrainingData:
    """Read and split the base files; RetrainError unless they are the ones the parent recorded."""
    base = read_data(spec)
    cats, outliers = parent_meta["data"]["cats"], parent_meta["data"].get("outliers")
    checks = [(len(base.cats) == cats.get("n_total"), "number of cats"),
              (fingerprint(base.cats.bitmaps[base.cat_train]) == cats.get("sha256_train"), "training cats"),
              (fingerprint(base.cats.bitmaps[base.cat_held]) == cats.get("sha256_heldout"), "held-out cats")]
    if outliers and base.out_train is not None:
        checks.append((fingerprint(base.out_train.bitmaps) == outliers.get("sha256_train"), "training outliers"))
    for ok, what in checks:
        if not ok:
            raise RetrainError(f"the base files in {spec.data_files[0].parent} are not the parent model's "
                               f"({what} differ from the fingerprint in its model.json)")
    return base


def split_reviews(reviewed: ReviewedSketches, holdback: float, seed: int) -> ReviewSplit:
    """Deduplicate the reviews by bitmap and hold back a seeded share of each verdict."""
    first: dict[bytes, int] = {}
    labels: dict[bytes, set[bool]] = {}
    hashes = bitmap_hashes(reviewed.bitmaps)
    duplicates: list[int] = []
    for i, h in enumerate(hashes):
        labels.setdefault(h, set()).add(bool(reviewed.anomalous[i]))
        if h in first:
            duplicates.append(int(reviewed.ids[i]))
        else:
            first[h] = i
    conflicting = {h for h, seen in labels.items() if len(seen) > 1}
    keep = np.array(sorted(i for h, i in first.items() if h not in conflicting), dtype=np.int64)
    conflicting_ids = [int(reviewed.ids[i]) for i, h in enumerate(hashes) if h in conflicting]
    duplicates = [d for d in duplicates if d not in set(conflicting_ids)]
    rng = np.random.default_rng(seed)
    held = np.zeros(len(keep), dtype=bool)
    for label in (False, True):
        rows = np.flatnonzero(reviewed.anomalous[keep] == label)
        # A verdict with a single sketch trains; otherwise at least one is held back when any share is asked.
        n_hold = 0 if len(rows) < 2 or holdback <= 0 else max(1, round(len(rows) * holdback))
        held[rng.permutation(rows)[:n_hold]] = True

    def pick(rows: np.ndarray) -> ReviewedSketches:
        return ReviewedSketches(reviewed.ids[rows], reviewed.bitmaps[rows], reviewed.anomalous[rows])

    return ReviewSplit(pick(keep[~held]), pick(keep[held]), sorted(duplicates), sorted(conflicting_ids))


def without_reviewed(base: TrainingData, reviewed: ReviewedSketches) -> tuple[TrainingData, dict[str, int]]:
    """The base data minus every row whose bitmap equals a reviewed one; and how many left each part."""
    seen = set(bitmap_hashes(reviewed.bitmaps))

    def keep_mask(bitmaps: np.ndarray) -> np.ndarray:
        return np.array([h not in seen for h in bitmap_hashes(bitmaps)], dtype=bool)

    removed: dict[str, int] = {}

    def rows(index: np.ndarray, name: str) -> np.ndarray:
        mask = keep_mask(base.cats.bitmaps[index])
        removed[name] = int((~mask).sum())
        return index[mask]

    def labeled(data: LabeledBitmaps | None, name: str) -> LabeledBitmaps | None:
        if data is None:
            return None
        mask = keep_mask(data.bitmaps)
        removed[name] = int((~mask).sum())
        return data.subset(mask)

    out = replace(base, cat_train=rows(base.cat_train, "train_cats"), cat_held=rows(base.cat_held, "heldout_cats"),
                  out_train=labeled(base.out_train, "train_outliers"),
                  out_held=labeled(base.out_held, "heldout_outliers"))  # fmt: skip
    out.eval_sets = {k: labeled(v, k) for k, v in base.eval_sets.items()}
    out.normal_sets = {k: labeled(v, k) for k, v in base.normal_sets.items()}
    return out, {k: v for k, v in removed.items() if v}


def heldback_metrics(model, held: ReviewedSketches, threshold: float) -> dict[str, Any]:
    """AUROC (both verdicts present), precision and recall at ``threshold`` on the held-back reviews."""
    from models.metrics import auroc
    from models.scoring import score_batch

    cats, anomalies = held.bitmaps[~held.anomalous], held.bitmaps[held.anomalous]
    s_cat = score_batch(model, cats)[0] if len(cats) else np.zeros(0, np.float32)
    s_anom = score_batch(model, anomalies)[0] if len(anomalies) else np.zeros(0, np.float32)
    true_pos, false_pos = int((s_anom > threshold).sum()), int((s_cat > threshold).sum())
    return {
        "n_cats": int(len(cats)), "n_anomalies": int(len(anomalies)), "threshold": float(threshold),
        "auroc": auroc(s_cat, s_anom) if len(cats) and len(anomalies) else None,
        "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else None,
        "recall": true_pos / len(anomalies) if len(anomalies) else None,
        "flagged_cats": false_pos / len(cats) if len(cats) else None,
    }  # fmt: skip


def _base_multipliers(bspec: TrainingSpec, data: TrainingData) -> np.ndarray:
    """Per-outlier weights of the parent's recipe (near-cat categories weighted up when it did so)."""
    n = len(data.out_train) if data.out_train is not None else 0
    weight = float(getattr(bspec, "near_cat_weight", 1.0))
    if not n or weight == 1.0:
        return np.ones(n)
    from models.cv import NEAR_CAT
    from models.pipeline import category_labels

    return np.where(np.isin(category_labels(data.out_train), sorted(NEAR_CAT)), weight, 1.0)


def _recipe_options(bspec: TrainingSpec) -> dict[str, Any]:
    """train_model's options for the parent's cat augmentation and jigsaw negatives, when it used them."""
    options: dict[str, Any] = {}
    jitter, drop = float(getattr(bspec, "cat_jitter", 0.0)), float(getattr(bspec, "cat_drop", 0.0))
    if jitter > 0 or drop > 0:
        from models.train import CatAugmentConfig

        options["cat_augment"] = CatAugmentConfig(jitter_px=jitter, drop_probability=drop)
    if float(getattr(bspec, "jigsaw_negatives", 0.0)) > 0:
        options["jigsaw_negatives"] = float(bspec.jigsaw_negatives)
    return options


def _auroc_summary(ev) -> dict[str, Any]:
    """The threshold-free and threshold figures of an evaluation, without the per-category rows."""
    out = {name: {k: v for k, v in m.items() if k != "per_category"} for name, m in ev.metrics.items()}
    return {"threshold": ev.threshold, "sets": out}


def retrain(
    spec: RetrainSpec,
    reviewed: ReviewedSketches,
    out_dir: str | Path,
    on_epoch: ProgressFn | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Train a candidate from the parent's base data and the reviews; write it to ``out_dir``; return its model.json.

    The returned metadata carries ``retraining``: the parent version, the base files' hashes, the reviewed
    sketch ids used and held back, and the candidate's and the parent's metrics on the fixed split and on the
    held-back reviews.
    """
    from models.artifact import load_artifact, save_artifact
    from models.autoencoder import coerce_config
    from models.pipeline import score
    from models.scoring import configure_tensorflow
    from models.train import train_model

    configure_tensorflow(spec.threads)
    parent, parent_meta = load_artifact(spec.parent_dir)
    bspec = base_spec(parent_meta, spec.data_dir, spec.threads)
    base = read_base(parent_meta, bspec)
    split = split_reviews(reviewed, spec.holdback, spec.seed)
    everything = ReviewedSketches(np.concatenate([split.train.ids, split.held.ids]),
                                  np.concatenate([split.train.bitmaps, split.held.bitmaps]),
                                  np.concatenate([split.train.anomalous, split.held.anomalous]))  # fmt: skip
    data, split.base_rows_removed = without_reviewed(base, everything)
    report(f"{data.summary()}; reviews: {split.summary()}")
    t = split.train
    cats = np.concatenate([data.cats.bitmaps[data.cat_train], t.bitmaps[~t.anomalous]])
    base_out = data.out_train.bitmaps if data.out_train is not None else np.zeros((0, SIDE, SIDE), np.uint8)
    outliers = np.concatenate([base_out, t.bitmaps[t.anomalous]])
    multipliers = None
    if len(outliers):
        multipliers = np.concatenate([_base_multipliers(bspec, data),
                                      np.full(int(t.anomalous.sum()), spec.review_weight)])  # fmt: skip
    config = coerce_config(parent_meta["architecture"])
    lr = bspec.learning_rate * (WARM_START_LR_FACTOR if spec.warm_start else 1.0)
    model, history = train_model(
        cats, outliers if len(outliers) else None, epochs=spec.epochs, batch_size=bspec.batch_size, seed=spec.seed,
        val_fraction=bspec.val_fraction, patience=bspec.patience, progress=False, config=config,
        outlier_weight=bspec.outlier_weight, augment=bspec.augment, noise=bspec.noise, learning_rate=lr,
        max_seconds=spec.max_minutes * 60.0, threads=spec.threads, outlier_multipliers=multipliers,
        deterministic=spec.deterministic, initial_weights=parent.get_weights() if spec.warm_start else None,
        on_epoch=on_epoch, **_recipe_options(bspec),
    )  # fmt: skip
    report(f"training: {len(history.loss)} epochs, best {history.best_epoch + 1}, stopped by {history.stopped}, "
           f"{history.seconds:.0f}s")
    candidate_ev = score(bspec, model, data)
    parent_ev = score(bspec, parent, data)
    parent_threshold = float(parent_meta["suggested_threshold"])
    metrics = {
        **candidate_ev.metrics,
        "fixed_split": _auroc_summary(candidate_ev),
        "reviewed_heldback": heldback_metrics(model, split.held, candidate_ev.threshold),
        "parent": {"version": parent_meta.get("version"), "fixed_split": _auroc_summary(parent_ev),
                   "reviewed_heldback": heldback_metrics(parent, split.held, parent_threshold)},
    }  # fmt: skip
    # The recipe and the base split stay the parent's (a child of this candidate splits the same way); what
    # this run did differently is under training.retrain.
    meta = describe(bspec, base, config, history, candidate_ev)
    meta["metrics"] = metrics
    meta["training"]["command"] = "sketchwatch models train --from-reviews"
    meta["training"]["retrain"] = {"epochs": spec.epochs, "learning_rate": lr, "seed": spec.seed,
                                   "warm_start": spec.warm_start, "review_weight": spec.review_weight,
                                   "max_minutes": spec.max_minutes}  # fmt: skip
    meta["retraining"] = {
        "parent_version": parent_meta.get("version"),
        "base_files": {p.name: file_sha256(p) for p in (*bspec.data_files, *bspec.outlier_files,
                                                        *bspec.eval_anomalous, *bspec.eval_normal)},
        "reviewed": {"train_ids": split.train.ids.tolist(), "heldback_ids": split.held.ids.tolist(),
                     "train_anomalous": split.train.anomalous.tolist(),
                     "heldback_anomalous": split.held.anomalous.tolist(),
                     "duplicate_ids": split.duplicate_ids, "conflicting_ids": split.conflicting_ids,
                     "holdback": spec.holdback, "seed": spec.seed},
        "summary": split.summary(),
    }  # fmt: skip
    return save_artifact(model, meta, out_dir)
