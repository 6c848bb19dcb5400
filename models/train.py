"""Training: cats are reconstructed, non-cats (outlier exposure) are mapped to a blank image.

Pure functions; nothing runs at import and TensorFlow is imported inside :func:`train_model`.
Reproducible for a given seed on a given machine: numpy draws (split, shuffling, augmentation) come
from one seeded generator, Keras weights from ``keras.utils.set_random_seed``, and TF op
determinism is enabled. The only exception is ``max_seconds``: a run cut short by the clock depends
on the machine's speed (the history says when that happened).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.autoencoder import (
    AutoencoderConfig,
    build_autoencoder,
    coerce_config,
    to_model_input,
)


@dataclass(frozen=True)
class AugmentConfig:
    """Random perturbations applied to every training image, freshly drawn each epoch."""

    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift_px: float = 2.0
    # Line-width jitter: up to this blend towards a 3x3 dilation (thicker) or gamma (thinner).
    max_thicken: float = 0.5
    max_thin_gamma: float = 2.0


@dataclass(frozen=True)
class CatAugmentConfig:
    """Extra perturbations of every training image (bitmap stand-ins for stroke-level changes).

    The cats exist only as 28x28 bitmaps, so "stroke jitter" is a smooth random displacement field
    (a coarse grid of offsets, upsampled) and "a dropped stroke" erases the ink within a small disc
    around a random ink pixel.
    """

    jitter_px: float = 1.0  # std of the coarse displacement grid (0 = off)
    jitter_grid: int = 4
    drop_probability: float = 0.3  # share of cats that lose a piece (0 = off)
    drop_radius: tuple[float, float] = (2.5, 4.5)


@dataclass
class TrainingHistory:
    """Per-epoch losses and how the run ended."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped: str = "max_epochs"
    seconds: float = 0.0
    n_train_cats: int = 0
    n_train_outliers: int = 0
    n_val_cats: int = 0
    n_val_outliers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        return {
            "loss": [round(v, 6) for v in self.loss],
            "val_loss": [round(v, 6) for v in self.val_loss],
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.loss),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 1),
            "n_train_cats": self.n_train_cats,
            "n_train_outliers": self.n_train_outliers,
            "n_val_cats": self.n_val_cats,
            "n_val_outliers": self.n_val_outliers,
        }


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Random rotation/scale/shift (bilinear) and line-width jitter of (N, S, S) float images in [0, 1].

    Parameters come from ``rng`` (reproducible); the warp runs as one TF image-transform op because
    per-pixel numpy indexing cost more than a training epoch.
    """
    import tensorflow as tf

    n, size, _ = images.shape
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, n))
    scale = rng.uniform(*cfg.scale_range, n)
    tx, ty = rng.uniform(-cfg.max_shift_px, cfg.max_shift_px, (2, n))
    width = rng.uniform(-1.0, 1.0, n)
    c = (size - 1) / 2.0
    cos = np.cos(angle) / scale
    sin = np.sin(angle) / scale
    # Inverse map (output pixel -> source pixel): rotate/scale about the centre, after the shift.
    transforms = np.stack(
        [cos, sin, c - cos * (c + tx) - sin * (c + ty),
         -sin, cos, c + sin * (c + tx) - cos * (c + ty),
         np.zeros(n), np.zeros(n)],
        axis=1,
    ).astype(np.float32)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(images[..., None], tf.float32),
        transforms=transforms,
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    dilated = tf.nn.max_pool2d(warped, ksize=3, strides=1, padding="SAME")
    # Positive width thickens (blend towards the 3x3 dilation), negative thins (gamma > 1).
    thicken = (np.clip(width, 0.0, None) * cfg.max_thicken).astype(np.float32)[:, None, None, None]
    gamma = (1.0 + np.clip(-width, 0.0, None) * (cfg.max_thin_gamma - 1.0)).astype(np.float32)[:, None, None, None]
    out = tf.pow(tf.clip_by_value((1.0 - thicken) * warped + thicken * dilated, 0.0, 1.0), gamma)
    return out.numpy()[..., 0]


def jitter_and_drop(images: np.ndarray, rng: np.random.Generator, cfg: CatAugmentConfig) -> np.ndarray:
    """Smooth random displacement of (N, S, S) float images plus, for some, an erased disc around an ink pixel."""
    n, size, _ = images.shape
    out = images
    if cfg.jitter_px > 0 and n:
        g = cfg.jitter_grid
        coarse = rng.normal(0.0, cfg.jitter_px, (n, 2, g, g)).astype(np.float32)
        # Bilinear upsampling of the coarse grid to one offset per pixel (separable interpolation matrix).
        pos = np.linspace(0, g - 1, size)
        lo = np.minimum(np.floor(pos).astype(int), g - 2)
        frac = (pos - lo).astype(np.float32)
        interp = np.zeros((size, g), np.float32)
        interp[np.arange(size), lo] = 1 - frac
        interp[np.arange(size), lo + 1] += frac
        field = np.einsum("ia,nkab,jb->nkij", interp, coarse, interp)
        yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
        sy = np.clip(yy + field[:, 0], 0, size - 1)
        sx = np.clip(xx + field[:, 1], 0, size - 1)
        y0 = np.minimum(np.floor(sy).astype(np.int32), size - 2)
        x0 = np.minimum(np.floor(sx).astype(np.int32), size - 2)
        fy, fx = sy - y0, sx - x0
        idx = np.arange(n)[:, None, None]
        out = ((1 - fy) * (1 - fx) * images[idx, y0, x0] + (1 - fy) * fx * images[idx, y0, x0 + 1]
               + fy * (1 - fx) * images[idx, y0 + 1, x0] + fy * fx * images[idx, y0 + 1, x0 + 1]).astype(np.float32)
    if cfg.drop_probability > 0 and n:
        out = out.copy() if out is images else out
        chosen = np.flatnonzero(rng.random(n) < cfg.drop_probability)
        radius = rng.uniform(*cfg.drop_radius, len(chosen))
        pick = rng.random(len(chosen))
        yy, xx = np.mgrid[0:size, 0:size]
        for i, r, u in zip(chosen, radius, pick):
            ink = np.flatnonzero(out[i] > 0.5)
            if len(ink) == 0:
                continue
            cy, cx = divmod(int(ink[int(u * len(ink))]), size)
            out[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.0
    return out


@dataclass(frozen=True)
class EpochProgress:
    """What a training run reports after each epoch (``train_model``'s ``on_epoch`` hook)."""

    epoch: int  # epochs done, from 1
    epochs: int
    loss: float
    val_loss: float | None
    elapsed_s: float
    eta_s: float  # at most the time budget left; early stopping may end sooner


def epoch_progress(done: int, epochs: int, history: TrainingHistory, elapsed_s: float,
                   max_seconds: float | None = None) -> EpochProgress:
    """The progress record after ``done`` epochs: the mean epoch time so far times the epochs left."""
    eta = elapsed_s / done * (epochs - done)
    if max_seconds is not None:
        eta = min(eta, max(0.0, max_seconds - elapsed_s))
    val = history.val_loss[-1] if history.val_loss else None
    return EpochProgress(done, epochs, history.loss[-1], val, elapsed_s, eta)


def jigsaw(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, S, S) images with their four quadrants in a random non-identity order (S even)."""
    n, size, _ = images.shape
    h = size // 2
    quads = np.stack([images[:, :h, :h], images[:, :h, h:], images[:, h:, :h], images[:, h:, h:]], axis=1)
    perms = np.array([p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)])
    order = perms[rng.integers(len(perms), size=n)]
    q = quads[np.arange(n)[:, None], order]
    top = np.concatenate([q[:, 0], q[:, 1]], axis=2)
    bottom = np.concatenate([q[:, 2], q[:, 3]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def _per_image_bce(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each image (shape (N,), so sample weights apply)."""
    import keras

    return keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))


def _validation_loss(model, x: np.ndarray, y: np.ndarray, w: np.ndarray, batch_size: int = 512) -> float:
    """Sample-weighted validation loss, batch by batch (test_on_batch: no tf.data pipeline per epoch)."""
    total = 0.0
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        n = len(x[sl])
        total += float(model.test_on_batch(x[sl, ..., None], y[sl, ..., None], sample_weight=w[sl])) * n
    return total / len(x)


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) index split with round(n * fraction) validation items."""
    order = rng.permutation(n)
    n_val = round(n * fraction)
    return order[n_val:], order[:n_val]


def _as_bitmaps(arr: np.ndarray | None, name: str) -> np.ndarray:
    """Validate an (N, 28, 28) / (N, 784) uint8 array."""
    if arr is None:
        return np.zeros((0, 28, 28), dtype=np.uint8)
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 bitmaps, got {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 784:
        arr = arr.reshape(-1, 28, 28)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise ValueError(f"{name} must have shape (N, 28, 28), got {arr.shape}")
    return arr


def train_model(
    cats_uint8: np.ndarray,
    outliers_uint8: np.ndarray | None = None,
    *,
    epochs: int = 40,
    batch_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    patience: int = 5,
    progress: bool = True,
    config: AutoencoderConfig | dict | None = None,
    outlier_weight: float = 2.0,
    augment: bool | AugmentConfig = True,
    noise: float = 0.0,
    learning_rate: float = 2e-3,
    max_seconds: float | None = None,
    threads: int | None = None,
    outlier_multipliers: np.ndarray | None = None,
    cat_augment: CatAugmentConfig | None = None,
    deterministic: bool = True,
    jigsaw_negatives: float = 0.0,
    initial_weights: list | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
):
    """Train the autoencoder on cats (+ outliers mapped to blank); return (best model, TrainingHistory).

    ``outlier_weight`` scales the outliers' total loss weight relative to the cats'. ``noise`` is the
    probability of zeroing each input pixel (denoising; the target stays clean). Early stopping on
    the validation loss restores the best epoch's weights. ``outlier_multipliers`` (one per outlier,
    rescaled to mean 1) weights some outliers above others, e.g. near-cat animals; ``cat_augment``
    adds jitter and dropped pieces to the training images (cats and outliers alike);
    ``deterministic=False`` skips TF's op determinism (faster; for cross-validation, where
    bit-identical weights are not needed).
    ``initial_weights`` starts from a trained model's weights (fine-tuning); ``on_epoch`` is called with
    an :class:`EpochProgress` after every epoch (the caller decides where progress goes).
    """
    from models.scoring import configure_tensorflow

    configure_tensorflow(threads)
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    cats = _as_bitmaps(cats_uint8, "cats")
    outliers = _as_bitmaps(outliers_uint8, "outliers")
    if len(cats) == 0:
        raise ValueError("no cat bitmaps to train on")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    cfg = coerce_config(config)
    aug_cfg = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else None)

    keras.utils.set_random_seed(seed)
    if deterministic:
        # Process-wide; costs ~1.5x per training step here (measured) but makes a seed reproduce the weights.
        tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)

    cat_tr, cat_val = _split(len(cats), val_fraction, rng)
    out_tr, out_val = _split(len(outliers), val_fraction, rng)
    size = cfg.input_size
    x_cat = to_model_input(cats[cat_tr], size)[..., 0]
    x_out = to_model_input(outliers[out_tr], size)[..., 0]
    n_jig = round(jigsaw_negatives * len(x_cat))
    if n_jig:
        x_out = np.concatenate([x_out, jigsaw(x_cat[rng.choice(len(x_cat), n_jig, replace=False)], rng)])
    # Outliers as a group weigh outlier_weight times the cats, whatever their count.
    w_out = outlier_weight * len(x_cat) / len(x_out) if len(x_out) else 0.0
    mult = np.ones(len(outliers), np.float32)
    if outlier_multipliers is not None:
        mult = np.asarray(outlier_multipliers, np.float32)
        if mult.shape != (len(outliers),) or (mult < 0).any() or not mult.sum() > 0:
            raise ValueError("outlier_multipliers must be one non-negative weight per outlier, not all zero")
        mult = mult / mult.mean()
    out_tr = np.concatenate([out_tr, np.arange(len(outliers), len(outliers) + n_jig)]).astype(int)
    mult = np.concatenate([mult, np.ones(n_jig, np.float32)])

    def assemble(xc: np.ndarray, xo: np.ndarray, mo: np.ndarray, aug: bool):
        x = np.concatenate([xc, xo])
        if aug and cat_augment is not None:
            # Cats and outliers alike: perturbing cats only taught the model "resampled = cat" (measured).
            x = jitter_and_drop(x, rng, cat_augment)
        if aug and aug_cfg is not None:
            x = augment_batch(x, rng, aug_cfg)
        y = x.copy()
        y[len(xc) :] = 0.0
        w = np.concatenate([np.ones(len(xc), np.float32), (w_out * mo).astype(np.float32)])
        return x, y, w

    x_val, y_val, w_val = assemble(
        to_model_input(cats[cat_val], size)[..., 0], to_model_input(outliers[out_val], size)[..., 0], mult[out_val],
        aug=False,
    )

    model = build_autoencoder(cfg)
    if initial_weights is not None:
        # Warm start (retraining from reviews): the parent's weights, same architecture.
        model.set_weights(initial_weights)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_per_image_bce)
    history = TrainingHistory(
        n_train_cats=len(x_cat), n_train_outliers=len(x_out), n_val_cats=len(cat_val), n_val_outliers=len(out_val)
    )
    n_train = len(x_cat) + len(x_out)
    steps = -(-n_train // batch_size)
    best_val = np.inf
    best_weights = None
    waited = 0
    start = time.monotonic()
    bar = tqdm(total=epochs * steps, disable=not progress, unit="batch", desc="training")
    try:
        for epoch in range(epochs):
            x, y, w = assemble(x_cat, x_out, mult[out_tr], aug=True)
            if noise > 0:
                x = np.where(rng.random(x.shape) < noise, np.float32(0.0), x)
            order = rng.permutation(n_train)
            total = 0.0
            for b in range(steps):
                idx = order[b * batch_size : (b + 1) * batch_size]
                loss = model.train_on_batch(x[idx, ..., None], y[idx, ..., None], sample_weight=w[idx])
                total += float(loss) * len(idx)
                bar.update(1)
            history.loss.append(total / n_train)
            if len(x_val):
                val = _validation_loss(model, x_val, y_val, w_val)
                history.val_loss.append(val)
            else:
                val = history.loss[-1]
            bar.set_postfix(epoch=epoch + 1, loss=f"{history.loss[-1]:.4f}", val=f"{val:.4f}")
            if on_epoch is not None:
                on_epoch(epoch_progress(epoch + 1, epochs, history, time.monotonic() - start, max_seconds))
            if val < best_val - 1e-5:
                best_val, best_weights, history.best_epoch, waited = val, model.get_weights(), epoch, 0
            else:
                waited += 1
            if len(x_val) and waited >= patience:
                history.stopped = "early_stopping"
                break
            if max_seconds is not None and time.monotonic() - start > max_seconds and epoch + 1 < epochs:
                history.stopped = "time_budget"
                break
    finally:
        bar.close()
    if best_weights is not None:
        model.set_weights(best_weights)
    history.seconds = time.monotonic() - start
    return model, history
