"""Category-wise cross-validation (`python -m models.cli cv`): folds, conformal calibration, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from models.cli import cv_command
from models.cv import calibration_counts, category_folds, make_folds, ssim_error
from models.datasets import load_files
from models.metrics import clopper_pearson, conformal_fpr_interval, conformal_threshold
from models.train import CatAugmentConfig, jigsaw, jitter_and_drop

WORDS = ("line", "circle", "square", "triangle", "star", "moon", "cloud", "sun")


@pytest.fixture(scope="module", autouse=True)
def _tf_threads():
    from models.scoring import configure_tensorflow

    configure_tensorflow(2)


def _write_files(tmp_path: Path, shared_data: Path) -> tuple[Path, Path, Path]:
    """120 cats, 8 stroke categories of 5 drawings (plus 'eye', also a bitmap word), 12 bitmaps of 'eye'/'fish'."""
    cats = tmp_path / "cats.npy"
    np.save(cats, np.load(shared_data / "cat_bitmaps_28.npy")[:120])
    kept: dict[str, int] = {}
    lines = []
    with open(shared_data / "others.ndjson", "rb") as fh:
        for raw in fh:
            word = orjson.loads(raw)["word"]
            if (word in WORDS or word == "eye") and kept.get(word, 0) < 5:
                kept[word] = kept.get(word, 0) + 1
                lines.append(raw.decode().strip())
    strokes = tmp_path / "strokes.ndjson"
    strokes.write_text("\n".join(lines) + "\n")
    bitmaps = tmp_path / "bmp.npy"
    all_bmp = np.load(shared_data / "others_bitmaps_28.npy")
    words = (shared_data / "others_bitmaps_28_words.txt").read_text().split("\n")
    rows = [i for i, w in enumerate(words) if w == "eye"][:6] + [i for i, w in enumerate(words) if w == "fish"][:6]
    np.save(bitmaps, all_bmp[rows])
    (tmp_path / "bmp_words.txt").write_text("eye\n" * 6 + "fish\n" * 6)
    return cats, strokes, bitmaps


def test_category_folds_partition_the_categories():
    words = np.array([f"w{i % 10}" for i in range(100)] + ["eye"] * 3, dtype=object)
    folds = category_folds(words, 3, seed=4, exclude={"eye"})
    flat = [c for f in folds for c in f]
    assert sorted(flat) == [f"w{i}" for i in range(10)] and len(set(flat)) == 10
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert folds == category_folds(words, 3, seed=4, exclude={"eye"})
    assert folds != category_folds(words, 3, seed=5, exclude={"eye"})
    with pytest.raises(ValueError, match="k must be"):
        category_folds(words, 12, seed=0, exclude=set())


def test_make_folds_never_trains_on_held_out_or_excluded_categories(tmp_path, shared_data):
    cats_file, strokes_file, _ = _write_files(tmp_path, shared_data)
    cats, outliers = load_files((cats_file,)), load_files((strokes_file,))
    words = np.array([str(w) for w in outliers.words], dtype=object)
    folds = make_folds(cats, outliers, 3, seed=0, exclude={"eye"})
    held_cat_rows = np.concatenate([f.cat_held for f in folds])
    assert sorted(held_cat_rows.tolist()) == list(range(120))  # every cat is held out exactly once
    for f in folds:
        assert not set(f.cat_train) & set(f.cat_held)
        train_words, held_words = set(words[f.out_train]), set(words[f.out_held])
        assert not train_words & held_words and "eye" not in train_words | held_words
        assert held_words == set(f.held_categories)
    assert sorted(c for f in folds for c in f.held_categories) == sorted(WORDS)


def test_conformal_threshold_and_interval():
    scores = np.arange(1, 20, dtype=float)  # n = 19: ceil(20 * 0.95) = 19th smallest
    assert conformal_threshold(scores) == 19.0
    assert conformal_threshold(np.arange(1, 100, dtype=float)) == 95.0  # ceil(100 * 0.95) = 95
    interval = conformal_fpr_interval(525)
    assert interval["rank"] == 500 and interval["low"] < interval["expected_fpr"] < 0.05 < interval["high"]
    assert conformal_fpr_interval(1050)["high"] - conformal_fpr_interval(1050)["low"] < interval["high"] - interval["low"]
    low, high = clopper_pearson(5, 100)
    assert low == pytest.approx(0.01643, abs=1e-4) and high == pytest.approx(0.11283, abs=1e-4)
    # Exchangeable cats: the share flagged at the other half's threshold stays near (at most about) 5%.
    rng = np.random.default_rng(0)
    flagged, n = calibration_counts(rng.normal(size=4000), seed=1)
    assert n == 4000 and 0.035 < flagged / n < 0.06


def test_cat_jitter_and_drop_keep_shape_range_and_remove_ink(shared_data):
    imgs = np.load(shared_data / "cat_bitmaps_28.npy")[:50].reshape(-1, 28, 28).astype(np.float32) / 255
    rng = np.random.default_rng(0)
    off = jitter_and_drop(imgs, rng, CatAugmentConfig(jitter_px=0.0, drop_probability=0.0))
    np.testing.assert_array_equal(off, imgs)
    dropped = jitter_and_drop(imgs, rng, CatAugmentConfig(jitter_px=0.0, drop_probability=1.0))
    assert dropped.shape == imgs.shape and (dropped <= imgs).all() and (dropped.sum(axis=(1, 2)) < imgs.sum(axis=(1, 2))).all()
    jittered = jitter_and_drop(imgs, rng, CatAugmentConfig(jitter_px=1.0, drop_probability=0.0))
    assert jittered.shape == imgs.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert 0 < np.abs(jittered - imgs).mean() < 0.2


def test_jigsaw_negatives_rearrange_the_quadrants():
    imgs = np.arange(3 * 28 * 28, dtype=np.float32).reshape(3, 28, 28)
    out = jigsaw(imgs, np.random.default_rng(0))
    assert out.shape == imgs.shape
    for a, b in zip(imgs, out):
        assert not np.array_equal(a, b) and sorted(a.ravel()) == sorted(b.ravel())
        quads = {a[:14, :14].tobytes(), a[:14, 14:].tobytes(), a[14:, :14].tobytes(), a[14:, 14:].tobytes()}
        assert {b[:14, :14].tobytes(), b[:14, 14:].tobytes(), b[14:, :14].tobytes(), b[14:, 14:].tobytes()} == quads


def test_ssim_error_is_zero_for_a_perfect_copy_and_high_for_a_blank(shared_data):
    imgs = np.load(shared_data / "cat_bitmaps_28.npy")[:5].reshape(-1, 28, 28).astype(np.float32) / 255
    assert (ssim_error(imgs, imgs) < 1e-3).all()
    assert (ssim_error(imgs, np.zeros_like(imgs)) > 0.9).all()


def test_cv_command_reports_every_variant_on_unseen_categories(tmp_path, shared_data):
    cats, strokes, bitmaps = _write_files(tmp_path, shared_data)
    out = tmp_path / "cv.json"
    result = CliRunner().invoke(cv_command, [
        "--data", str(cats), "--outliers", str(strokes), "--eval-anomalous", str(bitmaps), "--k", "2",
        "--epochs", "1", "--near-cat-weight", "2", "--cat-drop", "0.3", "--jigsaw-negatives", "0.2", "--threads", "2", "--out", str(out),
        "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res == json.loads(out.read_text())
    assert res["k"] == 2 and res["folds_run"] == 2 and res["excluded_categories"] == ["eye", "fish"]
    assert res["recipe"]["near_cat_weight"] == 2 and res["recipe"]["cat_drop_probability"] == 0.3
    assert res["recipe"]["jigsaw_negatives"] == 0.2
    held = [set(f["held_categories"]) for f in res["folds"]]
    assert not held[0] & held[1] and held[0] | held[1] == set(WORDS)
    assert {"pixel", "ssim", "tta_flip", "maha", "pixel+0.5maha"} <= set(res["variants"])
    pixel = res["variants"]["pixel"]["summary"]
    assert 0 <= pixel["strokes"]["auroc"] <= 1 and 0 <= pixel["bitmaps"]["auroc"] <= 1
    assert {r["category"] for r in pixel["per_category"]} == set(WORDS)
    assert {r["category"] for r in pixel["bitmap_categories"]} == {"eye", "fish"}
    cal = pixel["calibration"]
    assert cal["n"] == 120 and cal["ci95"][0] <= cal["flagged_fraction"] <= cal["ci95"][1]
    scores = np.load(out.with_suffix(".npz"))
    assert len(scores["fold0_pixel_cats"]) + len(scores["fold1_pixel_cats"]) == 120
    assert len(scores["fold0_pixel_bitmaps"]) == 12


def test_cv_command_table_and_bad_k(tmp_path, shared_data):
    cats, strokes, _ = _write_files(tmp_path, shared_data)
    args = ["--data", str(cats), "--outliers", str(strokes), "--epochs", "1", "--threads", "2"]
    result = CliRunner().invoke(cv_command, [*args, "--k", "2", "--folds", "1"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 category folds" in result.output and "pixel" in result.output
    bad = CliRunner().invoke(cv_command, [*args, "--k", "40"])
    assert bad.exit_code != 0 and "--k" in bad.output
