"""Category-wise cross-validation: every figure on non-cat categories the fold's model never saw.

The stroke categories of the outlier files are dealt into K folds (the categories of the
evaluation-only bitmap files are left out of every fold: they are never trained on), and so are the
cat rows. Fold k trains on the cats and the outlier categories of the other folds (outlier exposure
over all of them), then scores its own cats against its own categories and against the bitmap files.

Besides the product's score (``pixel``: the ink-normalised squared error), each fold scores several
variants from the same model, so they are compared on identical splits: ink-ratio error, an SSIM
error, the error of blurred images, test-time augmentation (flip), a latent Mahalanobis term alone
and combined with the pixel term. Calibration uses split-conformal thresholds: the fold's held-out
cats are halved; the threshold from one half (the ceil((n+1)*0.95)-th smallest score) is applied to
the other half, both ways round, and the share flagged gets a Clopper-Pearson interval.

Pure ML (numpy, scikit-learn, scipy; TensorFlow inside the functions that train or score).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import LabeledBitmaps, load_files
from models.metrics import clopper_pearson, conformal_threshold

# Animals and faces whose drawings share a cat's round head, ears, eyes or four legs.
NEAR_CAT = frozenset({
    "bat", "camel", "cow", "crocodile", "dog", "dragon", "duck", "elephant", "face", "flamingo", "frog",
    "giraffe", "hedgehog", "horse", "lion", "monkey", "mouse", "owl", "panda", "parrot", "pig", "rabbit",
    "raccoon", "rhinoceros", "sea turtle", "smiley face", "squirrel", "swan", "teddy-bear", "tiger", "zebra",
    "ear", "nose", "mouth", "crab", "spider", "octopus", "snail", "bee", "lobster", "scorpion", "ant",
})  # fmt: skip

NOMINAL_FPR = 0.05


@dataclass(frozen=True)
class Recipe:
    """One training recipe evaluated by cross-validation (the options of ``cv``)."""

    outlier_weight: float = 2.0
    augment: bool = True
    cat_jitter_px: float = 0.0
    cat_drop_probability: float = 0.0
    near_cat_weight: float = 1.0
    jigsaw_negatives: float = 0.0
    latent_dim: int = 16
    epochs: int = 15
    patience: int = 3
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0

    def cat_augment(self):
        """The extra cat augmentation of this recipe, or None."""
        from models.train import CatAugmentConfig

        if self.cat_jitter_px <= 0 and self.cat_drop_probability <= 0:
            return None
        return CatAugmentConfig(jitter_px=self.cat_jitter_px, drop_probability=self.cat_drop_probability)


@dataclass
class FoldData:
    """Row indices of one fold: what trains and what is held out."""

    k: int
    cat_train: np.ndarray
    cat_held: np.ndarray
    out_train: np.ndarray
    out_held: np.ndarray
    held_categories: list[str] = field(default_factory=list)


class FoldError(ValueError):
    """The number of folds does not fit the categories at hand."""


def category_folds(words: np.ndarray, k: int, seed: int, exclude: set[str]) -> list[list[str]]:
    """Deal the distinct categories (minus ``exclude``) into ``k`` seeded folds of near-equal size."""
    cats = sorted({str(w) for w in words} - set(exclude))
    if k < 2 or k > len(cats):
        raise FoldError(f"k must be in [2, {len(cats)}] (the number of trainable outlier categories), got {k}")
    order = np.random.default_rng(seed).permutation(len(cats))
    return [sorted(cats[i] for i in order[j::k]) for j in range(k)]


def make_folds(cats: LabeledBitmaps, outliers: LabeledBitmaps, k: int, seed: int, exclude: set[str]) -> list[FoldData]:
    """The K folds: categories of ``outliers`` (minus ``exclude``, never trained on) and cat rows, seeded."""
    words = np.array([str(w) for w in outliers.words], dtype=object)
    groups = category_folds(words, k, seed, exclude)
    usable = ~np.isin(words, sorted(exclude))
    cat_order = np.random.default_rng(seed + 1).permutation(len(cats))
    folds = []
    for j, held_cats in enumerate(groups):
        held_mask = np.isin(words, held_cats)
        cat_held = np.sort(cat_order[j::k])
        folds.append(FoldData(
            k=j, cat_train=np.setdiff1d(np.arange(len(cats)), cat_held), cat_held=cat_held,
            out_train=np.flatnonzero(usable & ~held_mask), out_held=np.flatnonzero(held_mask),
            held_categories=held_cats,
        ))  # fmt: skip
    return folds


def calibration_counts(cat_scores: np.ndarray, seed: int, fpr: float = NOMINAL_FPR) -> tuple[int, int]:
    """Halve the held-out cats; flag each half at the other half's conformal threshold: (flagged, n)."""
    order = np.random.default_rng(seed).permutation(len(cat_scores))
    a, b = cat_scores[order[: len(order) // 2]], cat_scores[order[len(order) // 2 :]]
    flagged = int((b > conformal_threshold(a, fpr)).sum()) + int((a > conformal_threshold(b, fpr)).sum())
    return flagged, len(cat_scores)


# --------------------------------------------------------------------------- score variants


def _box(img: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window per pixel (zero padding), of (N, S, S) arrays."""
    p = np.pad(img, ((0, 0), (r + 1, r), (r + 1, r)))
    c = p.cumsum(1).cumsum(2)
    w = 2 * r + 1
    return (c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]) / (w * w)


def ssim_error(x: np.ndarray, r: np.ndarray, radius: int = 3) -> np.ndarray:
    """1 - mean SSIM over the pixels where input or reconstruction has ink nearby (blank = 1)."""
    c1, c2 = 0.01**2, 0.03**2
    mx, mr = _box(x, radius), _box(r, radius)
    vx = _box(x * x, radius) - mx * mx
    vr = _box(r * r, radius) - mr * mr
    cov = _box(x * r, radius) - mx * mr
    ssim = ((2 * mx * mr + c1) * (2 * cov + c2)) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))
    region = (mx + mr) > 1e-3
    num = ((1 - ssim) * region).sum(axis=(1, 2))
    return ((num + 1e-3) / (region.sum(axis=(1, 2)) + 1e-3)).astype(np.float32)


def blurred_error(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The ink-normalised error of 3x3-box-blurred input and reconstruction (tolerates 1-px offsets)."""
    from models.formulas import ink_normalized_error

    return ink_normalized_error(_box(x, 1), _box(r, 1))


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of scores clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


class VariantScorer:
    """Scores of every variant from one Keras model (reconstruction and bottleneck), with latent stats of its cats."""

    def __init__(self, model, train_cats_uint8: np.ndarray) -> None:
        import keras

        self.model = model
        self.encoder = keras.Model(model.input, model.get_layer("latent").output)
        z = self._latent(train_cats_uint8)
        self.mu = z.mean(axis=0)
        cov = np.cov(z, rowvar=False) + 1e-3 * np.eye(z.shape[1])
        self.prec = np.linalg.inv(cov)
        raw = self._raw(train_cats_uint8)
        # Standardise both terms on the training cats, so the combination weight is unit-free.
        self.stats = {k: (float(v.mean()), float(v.std() + 1e-9)) for k, v in
                      (("lp", _logit(raw["pixel"])), ("lm", np.log(raw["maha"] + 1e-6)))}

    def _latent(self, bitmaps: np.ndarray) -> np.ndarray:
        """Bottleneck activations (N, latent_dim)."""
        from models.autoencoder import to_model_input

        out = [self.encoder(to_model_input(bitmaps[i : i + 1024], 28), training=False).numpy()
               for i in range(0, len(bitmaps), 1024)]
        return np.concatenate(out).astype(np.float64)

    def _raw(self, bitmaps: np.ndarray) -> dict[str, np.ndarray]:
        """Pixel score and Mahalanobis distance (the inputs of the combined terms)."""
        from models.formulas import ink_normalized_error
        from models.scoring import reconstruct

        x, r = reconstruct(self.model, bitmaps)
        z = self._latent(bitmaps) - self.mu
        maha = np.einsum("ni,ij,nj->n", z, self.prec, z)
        return {"pixel": ink_normalized_error(x, r), "maha": maha, "x": x, "r": r}

    def score(self, bitmaps: np.ndarray) -> dict[str, np.ndarray]:
        """Every variant's scores (higher = more anomalous) for (N, 28, 28) uint8 bitmaps."""
        from models.formulas import ink_normalized_error, ink_ratio_error
        from models.scoring import reconstruct

        raw = self._raw(bitmaps)
        x, r = raw["x"], raw["r"]
        _, rf = reconstruct(self.model, bitmaps[:, :, ::-1].copy())
        lp = (_logit(raw["pixel"]) - self.stats["lp"][0]) / self.stats["lp"][1]
        lm = (np.log(raw["maha"] + 1e-6) - self.stats["lm"][0]) / self.stats["lm"][1]
        out = {
            "pixel": raw["pixel"],
            "ink_ratio": ink_ratio_error(x, r),
            "ssim": ssim_error(x, r),
            "blur": blurred_error(x, r),
            "pixel+ssim": (_logit(raw["pixel"]) + _logit(ssim_error(x, r))) / 2,
            "tta_flip": (raw["pixel"] + ink_normalized_error(x[:, :, ::-1], rf)) / 2,
            "maha": raw["maha"],
            "pixel+0.25maha": lp + 0.25 * lm,
            "pixel+0.5maha": lp + 0.5 * lm,
            "pixel+1maha": lp + lm,
        }
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


# --------------------------------------------------------------------------- the run


def _fold_metrics(cat_s: np.ndarray, out_s: np.ndarray, out_words, bmp_s, bmp_words, seed: int) -> dict[str, Any]:
    """One variant's metrics on one fold: strokes, bitmaps, per-category rows and calibration counts."""
    from models.metrics import evaluate_scores

    strokes = evaluate_scores(cat_s, out_s, None, out_words)
    result = {"strokes": {k: strokes[k] for k in ("auroc", "tpr_at_fpr_5", "tpr_at_fpr_1")},
              "per_category": strokes["per_category"]}
    if bmp_s is not None:
        bm = evaluate_scores(cat_s, bmp_s, None, bmp_words)
        result["bitmaps"] = {k: bm[k] for k in ("auroc", "tpr_at_fpr_5", "tpr_at_fpr_1")}
        result["bitmap_categories"] = bm["per_category"]
    flagged, n = calibration_counts(cat_s, seed)
    result["calibration"] = {"flagged": flagged, "n": n}
    return result


def _summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and spread) over folds, the per-category table of the whole set, pooled calibration."""
    out: dict[str, Any] = {}
    for part in ("strokes", "bitmaps"):
        if part not in folds[0]:
            continue
        out[part] = {}
        for key in ("auroc", "tpr_at_fpr_5", "tpr_at_fpr_1"):
            vals = np.array([f[part][key] for f in folds])
            out[part][key] = float(vals.mean())
            out[part][key + "_min"] = float(vals.min())
            out[part][key + "_max"] = float(vals.max())
    rows = sorted((r for f in folds for r in f["per_category"]), key=lambda r: (r["auroc"], r["category"]))
    out["per_category"] = [{k: r[k] for k in ("category", "n", "auroc", "mean_score")} for r in rows]
    out["categories_below_0.92"] = sum(r["auroc"] < 0.92 for r in rows)
    if "bitmap_categories" in folds[0]:
        names = sorted({r["category"] for f in folds for r in f["bitmap_categories"]})
        out["bitmap_categories"] = sorted(
            ({"category": c, "auroc": float(np.mean([r["auroc"] for f in folds for r in f["bitmap_categories"]
                                                      if r["category"] == c]))} for c in names),
            key=lambda r: r["auroc"])  # fmt: skip
    flagged = sum(f["calibration"]["flagged"] for f in folds)
    n = sum(f["calibration"]["n"] for f in folds)
    low, high = clopper_pearson(flagged, n)
    out["calibration"] = {"nominal": NOMINAL_FPR, "flagged": flagged, "n": n, "flagged_fraction": flagged / n,
                          "ci95": [low, high]}
    return out


def run_cv(
    cat_files: tuple[Path, ...],
    outlier_files: tuple[Path, ...],
    bitmap_files: tuple[Path, ...] = (),
    *,
    k: int = 4,
    recipe: Recipe = Recipe(),
    fold_seed: int = 0,
    folds_to_run: int | None = None,
    threads: int | None = None,
    scores_out: Path | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Cross-validate ``recipe`` over K category folds; return the JSON-ready result (per variant and fold)."""
    from models.scoring import configure_tensorflow

    configure_tensorflow(threads)
    from models.train import train_model

    started = time.monotonic()
    cats = load_files(cat_files)
    outliers = load_files(outlier_files)
    if not outliers.has_words:
        raise ValueError("every outlier row needs a category word (ndjson 'word' or a _words.txt file)")
    bitmaps = load_files(bitmap_files) if bitmap_files else None
    exclude = {str(w) for w in bitmaps.words if w is not None} if bitmaps is not None else set()
    words = np.array([str(w) for w in outliers.words], dtype=object)
    folds = make_folds(cats, outliers, k, fold_seed, exclude)
    if folds_to_run is not None:
        folds = folds[:folds_to_run]
    multipliers = np.where(np.isin(words, sorted(NEAR_CAT)), recipe.near_cat_weight, 1.0)
    per_variant: dict[str, list[dict[str, Any]]] = {}
    fold_info, saved = [], {}
    for fold in folds:
        t0 = time.monotonic()
        model, history = train_model(
            cats.bitmaps[fold.cat_train], outliers.bitmaps[fold.out_train], epochs=recipe.epochs,
            batch_size=recipe.batch_size, seed=recipe.seed, patience=recipe.patience, progress=False,
            config={"latent_dim": recipe.latent_dim}, outlier_weight=recipe.outlier_weight, augment=recipe.augment,
            learning_rate=recipe.learning_rate, threads=threads, outlier_multipliers=multipliers[fold.out_train],
            cat_augment=recipe.cat_augment(), deterministic=False, jigsaw_negatives=recipe.jigsaw_negatives,
        )  # fmt: skip
        t_train = time.monotonic() - t0
        scorer = VariantScorer(model, cats.bitmaps[fold.cat_train])
        cat_v = scorer.score(cats.bitmaps[fold.cat_held])
        out_v = scorer.score(outliers.bitmaps[fold.out_held])
        bmp_v = scorer.score(bitmaps.bitmaps) if bitmaps is not None else None
        for name in cat_v:
            per_variant.setdefault(name, []).append(_fold_metrics(
                cat_v[name], out_v[name], words[fold.out_held], None if bmp_v is None else bmp_v[name],
                None if bitmaps is None else np.array([str(w) for w in bitmaps.words], dtype=object),
                fold_seed + fold.k))  # fmt: skip
            saved[f"fold{fold.k}_{name}_cats"] = cat_v[name]
            saved[f"fold{fold.k}_{name}_outliers"] = out_v[name]
            if bmp_v is not None:
                saved[f"fold{fold.k}_{name}_bitmaps"] = bmp_v[name]
        saved[f"fold{fold.k}_cat_rows"] = fold.cat_held
        saved[f"fold{fold.k}_outlier_rows"] = fold.out_held
        fold_info.append({"fold": fold.k, "n_cat_train": len(fold.cat_train), "n_cat_held": len(fold.cat_held),
                          "n_outlier_train": len(fold.out_train), "n_outlier_held": len(fold.out_held),
                          "held_categories": fold.held_categories, "epochs_run": len(history.loss),
                          "best_epoch": history.best_epoch + 1, "train_seconds": round(t_train, 1)})
        pix = per_variant["pixel"][-1]
        report(f"fold {fold.k + 1}/{k}: {len(history.loss)} epochs in {t_train:.0f}s; pixel AUROC strokes "
               f"{pix['strokes']['auroc']:.3f}" + (f", bitmaps {pix['bitmaps']['auroc']:.3f}" if bmp_v else ""))
    if scores_out is not None:
        scores_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(scores_out, **saved)
    return {
        "k": k, "fold_seed": fold_seed, "folds_run": len(folds), "recipe": asdict(recipe),
        "files": {"cats": [p.name for p in cat_files], "outliers": [p.name for p in outlier_files],
                  "bitmaps": [p.name for p in bitmap_files]},
        "excluded_categories": sorted(exclude), "near_cat": sorted(NEAR_CAT),
        "folds": fold_info, "seconds": round(time.monotonic() - started, 1),
        "variants": {name: {"summary": _summarise(fs), "folds": [
            {k2: v for k2, v in f.items() if k2 not in ("per_category", "bitmap_categories")} for f in fs]}
            for name, fs in per_variant.items()},
    }  # fmt: skip


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per variant (for tables): AUROC, TPR@5%, worst categories, calibration."""
    rows = []
    for name, v in result["variants"].items():
        s = v["summary"]
        worst = ", ".join(f"{r['category']} {r['auroc']:.2f}" for r in s["per_category"][:3])
        rows.append({
            "variant": name, "auroc_strokes": s["strokes"]["auroc"], "tpr5_strokes": s["strokes"]["tpr_at_fpr_5"],
            "auroc_bitmaps": s.get("bitmaps", {}).get("auroc"),
            "tpr5_bitmaps": s.get("bitmaps", {}).get("tpr_at_fpr_5"),
            "below_0.92": s["categories_below_0.92"], "worst": worst,
            "flagged": s["calibration"]["flagged_fraction"], "ci95": s["calibration"]["ci95"],
        })  # fmt: skip
    return rows


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
