"""Autoencoder, training, scoring, artifacts, the shipped model and the train/evaluate commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from models import scoring
from models.artifact import (
    ArtifactError,
    load_artifact,
    read_meta,
    save_artifact,
    shipped_model_dir,
)
from models.autoencoder import AutoencoderConfig, build_autoencoder, to_model_input
from models.cli import evaluate_command, train_command
from models.datasets import fingerprint, load_file, split_categories, split_holdout
from models.formats import read_ndjson
from models.raster import rasterize_batch
from models.scoring import Scorer, configure_tensorflow, pad_rows, score_batch
from models.train import AugmentConfig, augment_batch, train_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _tf_threads():
    configure_tensorflow(2)


@pytest.fixture(scope="module")
def cats(shared_data) -> np.ndarray:
    return np.load(shared_data / "cat_bitmaps_28.npy").reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def others(shared_data):
    """First 400 non-cat stroke drawings (several categories), rasterized, with their words."""
    drawings = []
    for d in read_ndjson(shared_data / "others.ndjson"):
        drawings.append(d)
        if len(drawings) == 400:
            break
    return rasterize_batch([d.strokes for d in drawings]), [d.word for d in drawings]


@pytest.fixture(scope="module")
def tiny_model(cats, others):
    """One quick epoch: enough to exercise every code path, not to detect anything."""
    model, history = train_model(cats[:300], others[0][:300], epochs=1, batch_size=64, seed=1,
                                 val_fraction=0.2, patience=2, progress=False)
    return model, history


def _lines(n: int) -> list[list[np.ndarray]]:
    """Simple straight-line drawings at various angles (strokes in the 0..255 box)."""
    out = []
    for k in range(n):
        a = np.pi * k / n
        x = 127.5 + 127.5 * np.array([-np.cos(a), np.cos(a)])
        y = 127.5 + 127.5 * np.array([-np.sin(a), np.sin(a)])
        out.append([np.vstack([x, y]).round()])
    return out


def test_importing_the_model_modules_does_not_load_tensorflow():
    code = ("import sys, models.scoring, models.artifact, models.metrics, models.cli, models.datasets, "
            "models.train, models.autoencoder; print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("size", [28, 32])
def test_autoencoder_maps_input_shape_to_itself(size):
    cfg = AutoencoderConfig(input_size=size, latent_dim=8)
    model = build_autoencoder(cfg.to_dict())
    assert model.input_shape == (None, size, size, 1)
    assert model.output_shape == (None, size, size, 1)
    assert AutoencoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_dual_conv_equals_the_reference_block():
    """The fused layer computes concat(Conv3x3(x), Conv2x2(x)) with 'same' padding and ReLU exactly."""
    import keras

    from models.autoencoder import custom_objects

    x = np.random.default_rng(0).random((3, 7, 7, 2)).astype(np.float32)
    dual = custom_objects()["DualConv"](4)
    dual(x)
    conv3 = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    conv2 = keras.layers.Conv2D(4, 2, padding="same", activation="relu")
    conv3.build(x.shape)
    conv2.build(x.shape)
    rng = np.random.default_rng(1)
    for var in (dual.bias3, dual.bias2):
        var.assign(rng.normal(0, 0.1, var.shape).astype(np.float32))
    conv3.set_weights([dual.kernel3.numpy(), dual.bias3.numpy()])
    conv2.set_weights([dual.kernel2.numpy(), dual.bias2.numpy()])
    expected = np.concatenate([conv3(x).numpy(), conv2(x).numpy()], axis=-1)
    np.testing.assert_allclose(dual(x).numpy(), expected, atol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="input_size"):
        AutoencoderConfig(input_size=29)
    with pytest.raises(ValueError, match="unknown architecture keys"):
        AutoencoderConfig.from_dict({"latent": 3})


def test_model_input_pads_and_scales():
    b = np.zeros((2, 28, 28), np.uint8)
    b[0, 0, 0] = 255
    x = to_model_input(b, 32)
    assert x.shape == (2, 32, 32, 1) and x.dtype == np.float32
    assert x[0, 2, 2, 0] == 1.0 and x.sum() == 1.0


def test_augmentation_identity_and_range(cats):
    x = to_model_input(cats[:40], 32)[..., 0]
    same = augment_batch(x, np.random.default_rng(0), AugmentConfig(0.0, (1.0, 1.0), 0.0, 0.0, 1.0))
    np.testing.assert_allclose(same, x, atol=1e-6)
    a = augment_batch(x, np.random.default_rng(0))
    b = augment_batch(x, np.random.default_rng(0))
    assert a.shape == x.shape and a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, x)


def test_training_smoke_run(tiny_model):
    _, history = tiny_model
    assert len(history.loss) == 1 and len(history.val_loss) == 1
    assert np.isfinite(history.loss[0]) and history.best_epoch == 0
    assert history.n_train_cats == 240 and history.n_val_outliers == 60


def test_training_is_reproducible_with_a_seed(cats, others, tiny_model):
    again, _ = train_model(cats[:300], others[0][:300], epochs=1, batch_size=64, seed=1,
                           val_fraction=0.2, patience=2, progress=False)
    for w1, w2 in zip(tiny_model[0].get_weights(), again.get_weights()):
        np.testing.assert_array_equal(w1, w2)


def test_training_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        train_model(np.zeros((10, 28, 28), np.float32), epochs=1, batch_size=4, seed=0, val_fraction=0.1,
                    patience=1, progress=False)


def test_score_batch_shapes_and_blank_is_anomalous(tiny_model, cats):
    model, _ = tiny_model
    batch = np.concatenate([cats[:5], np.zeros((1, 28, 28), np.uint8)])
    scores, recon = score_batch(model, batch, batch_size=4)
    assert scores.shape == (6,) and scores.dtype == np.float32
    assert recon.shape == (6, 28, 28) and recon.dtype == np.uint8
    assert np.all((scores >= 0) & (scores <= 1))
    # An empty drawing has nothing to reconstruct; it must not look like a perfect cat.
    assert scores[-1] > 0.5


def test_any_batch_size_reaches_tensorflow_as_a_few_fixed_shapes(tiny_model, cats, monkeypatch):
    model, _ = tiny_model
    alone = np.array([score_batch(model, cats[i : i + 1])[0][0] for i in range(5)])
    real_fn = scoring._inference_fn(model)
    seen: list[int] = []

    def recording(x):
        seen.append(int(x.shape[0]))
        return real_fn(x)

    monkeypatch.setattr(scoring, "_inference_fn", lambda m: recording)
    for n in (1, 5, 17, 37):
        scores, recon = score_batch(model, cats[:n], batch_size=32)
        assert scores.shape == (n,) and recon.shape == (n, 28, 28)
        # The blank rows that fill the batch up must not change the real rows' scores.
        np.testing.assert_allclose(scores[:5], alone[: min(n, 5)], rtol=1e-5)
    assert seen == [16, 16, 32, 32, 16]


def test_pad_rows_appends_blank_rows_only_when_needed():
    batch = np.ones((3, 2), np.float32)
    assert pad_rows(batch, 4).shape == (4, 2) and not pad_rows(batch, 4)[3:].any()
    assert pad_rows(batch, 3) is batch


def _meta(scores: np.ndarray) -> dict:
    pct = {k: float(np.percentile(scores, float(k))) for k in ("90", "95", "99", "99.5")}
    return {"architecture": AutoencoderConfig().to_dict(), "input": {"side": 28},
            "score": {"formula": "ink_normalized_sq_error"}, "percentiles": pct, "suggested_threshold": pct["95"]}


def test_artifact_round_trip_gives_identical_scores(tiny_model, cats, tmp_path):
    model, _ = tiny_model
    before, recon_before = score_batch(model, cats[:64])
    meta = save_artifact(model, _meta(before), tmp_path / "art")
    assert meta["version"].endswith(meta["weights_sha256"][:8])
    assert {"tensorflow", "keras", "numpy"} <= set(meta["frameworks"])
    loaded, loaded_meta = load_artifact(tmp_path / "art")
    after, recon_after = score_batch(loaded, cats[:64])
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(recon_before, recon_after)
    assert loaded_meta == meta
    scorer = Scorer.load(tmp_path / "art")
    np.testing.assert_array_equal(scorer.score_bitmaps(cats[:64])[0], before)
    # The Keras scorer's richer result: the same scores and reconstructions, with float64 log-odds (issue 15).
    result = scorer.score_result(cats[:64])
    np.testing.assert_array_equal(result.scores, before)
    np.testing.assert_array_equal(result.reconstructions, recon_before)
    assert result.logits.dtype == np.float64 and np.all(np.isfinite(result.logits))
    assert np.all(np.diff(result.logits[np.argsort(before, kind="stable")]) >= -1e-3)  # the same order as the scores
    assert scorer.version == meta["version"] and scorer.suggested_threshold == meta["suggested_threshold"]


def test_artifact_load_errors_are_clear(tiny_model, tmp_path):
    model, _ = tiny_model
    with pytest.raises(ArtifactError, match="model directory not found"):
        load_artifact(tmp_path / "missing")
    art = tmp_path / "art"
    save_artifact(model, _meta(np.linspace(0, 1, 50)), art)
    meta_text = (art / "model.json").read_text()
    (art / "model.json").write_text(meta_text[:40])
    with pytest.raises(ArtifactError, match=r"model.json: line \d+ column \d+: invalid JSON"):
        read_meta(art)
    bad = json.loads(meta_text)
    del bad["percentiles"]["99"]
    (art / "model.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match=r"percentiles\['99'\]"):
        load_artifact(art)
    wrong = json.loads(meta_text)
    wrong["weights_sha256"] = "0" * 64
    (art / "model.json").write_text(json.dumps(wrong))
    with pytest.raises(ArtifactError, match="weights do not match"):
        load_artifact(art)
    (art / "model.json").write_text(meta_text)
    (art / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="cannot load the Keras model"):
        load_artifact(art)
    (art / "model.keras").unlink()
    with pytest.raises(ArtifactError, match="model.keras: file not found"):
        load_artifact(art)


def test_shipped_model_is_small_and_documented():
    d = shipped_model_dir()
    total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert total < 2_000_000
    meta = read_meta(d)
    assert meta["training"]["seed"] is not None and meta["training"]["command"]
    held = set(meta["data"]["outliers"]["heldout_categories"])
    assert held and held.isdisjoint(meta["data"]["outliers"]["train_categories"])
    assert meta["percentiles"]["90"] <= meta["percentiles"]["95"] <= meta["percentiles"]["99"] <= meta["percentiles"]["99.5"]


def test_shipped_percentiles_come_from_cats_it_never_saw(cats):
    """Rebuild the recorded held-out split, check its fingerprint, and reproduce the stored percentiles."""
    scorer = Scorer.load()
    info = scorer.meta["data"]["cats"]
    train, held = split_holdout(len(cats), info["holdout_fraction"], scorer.meta["training"]["seed"], info["holdout_first"])
    assert fingerprint(cats[held]) == info["sha256_heldout"]
    assert fingerprint(cats[train]) == info["sha256_train"]
    scores, _ = scorer.score_bitmaps(cats[held])
    for key, value in scorer.percentiles.items():
        assert np.percentile(scores, float(key)) == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_shipped_model_ranks_cats_below_simple_shapes(shared_data):
    scorer = Scorer.load()
    cat_drawings = [d.strokes for d in read_ndjson(shared_data / "cat.ndjson")]
    cat_scores, recon = scorer.score_drawings(cat_drawings)
    line_scores, _ = scorer.score_drawings(_lines(20))
    assert recon.shape == (len(cat_drawings), 28, 28)
    assert cat_scores.mean() < line_scores.mean()
    assert np.median(cat_scores) < scorer.suggested_threshold < np.median(line_scores)
    # Strokes go through the same renderer as the training bitmaps: same drawing, (nearly) same score.
    bitmap_scores, _ = scorer.score_bitmaps(np.load(shared_data / "cat_bitmaps_28.npy")[:25].reshape(-1, 28, 28))
    np.testing.assert_allclose(cat_scores, bitmap_scores, atol=0.05)


def test_score_drawings_in_overlapped_batches_matches_one_pass(shared_data):
    scorer = Scorer.load()
    drawings = [d.strokes for d in read_ndjson(shared_data / "cat.ndjson")] + _lines(6)
    scores, recon = scorer.score_drawings(drawings, batch_size=8)
    expected, expected_recon = scorer.score_bitmaps(rasterize_batch(drawings))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # Different batch sizes may round differently in the last float bit: allow one grey level.
    assert np.abs(recon.astype(int) - expected_recon).max() <= 1
    assert scores.shape == (31,)


def test_split_helpers():
    train, held = split_holdout(100, 0.15, seed=3, always_holdout=5)
    assert len(held) == 15 and set(range(5)) <= set(held) and not set(train) & set(held)
    assert len(train) + len(held) == 100
    train_c, held_c = split_categories(["a", "b", "c", "d", "a"], 0.5, seed=0)
    assert len(held_c) == 2 and sorted(train_c + held_c) == ["a", "b", "c", "d"]
    assert split_categories(["a", "b"], ["b"], seed=0) == (["a"], ["b"])
    words = [f"w{i}" for i in range(20)]
    train_c, held_c = split_categories(words, 0.25, seed=1, always_holdout=["w3", "zebra"])
    assert "w3" in held_c and "zebra" not in held_c and len(held_c) == 1 + 5
    assert split_categories(words, ["w1"], seed=0, always_holdout=["w2"])[1] == ["w1", "w2"]
    with pytest.raises(ValueError, match="not in the data"):
        split_categories(["a"], ["zebra"], seed=0)


def _write_eval_files(tmp_path: Path, shared_data: Path) -> tuple[Path, Path, Path]:
    cats = np.load(shared_data / "cat_bitmaps_28.npy")[:25]
    normal = tmp_path / "cats.npy"
    np.save(normal, cats)
    lines = []
    with open(shared_data / "others.ndjson", "rb") as fh:
        for raw in fh:
            rec = orjson.loads(raw)
            if rec["word"] in ("line", "circle") and sum(r.startswith(rec["word"]) for r in lines) < 10:
                lines.append(f"{rec['word']}\t{raw.decode().strip()}")
    anomalous = tmp_path / "shapes.ndjson"
    anomalous.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    bitmaps = tmp_path / "more.npy"
    np.save(bitmaps, rasterize_batch(_lines(6)))
    (tmp_path / "more_words.txt").write_text("stick\n" * 6)
    return normal, anomalous, bitmaps


def test_evaluate_command_json(tmp_path, shared_data):
    normal, anomalous, bitmaps = _write_eval_files(tmp_path, shared_data)
    result = CliRunner().invoke(evaluate_command, ["--normal", str(normal), "--anomalous", str(anomalous),
                                                   "--anomalous", str(bitmaps), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"auroc", "average_precision", "tpr_at_fpr_1", "tpr_at_fpr_5", "n_normal", "n_anomalous",
            "per_category", "precision_at_threshold", "recall_at_threshold"} <= set(out)
    assert out["n_normal"] == 25 and out["n_anomalous"] == 26
    assert {r["category"] for r in out["per_category"]} == {"line", "circle", "stick"}
    assert out["auroc"] > 0.5


def test_evaluate_command_table(tmp_path, shared_data):
    normal, anomalous, _ = _write_eval_files(tmp_path, shared_data)
    result = CliRunner().invoke(evaluate_command, ["--normal", str(normal), "--anomalous", str(anomalous)])
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "per category" in result.output and "circle" in result.output


def test_evaluate_command_names_the_bad_file_and_line(tmp_path, shared_data):
    normal, _, _ = _write_eval_files(tmp_path, shared_data)
    bad = tmp_path / "broken.ndjson"
    bad.write_text('{"word": "line", "drawing": [[[0, 10], [0, 10]]]}\n{"word": "line", "drawing": [[[0, 1]\n')
    result = CliRunner().invoke(evaluate_command, ["--normal", str(normal), "--anomalous", str(bad)])
    assert result.exit_code != 0
    assert "broken.ndjson" in result.output and "line 2" in result.output
    words_mismatch = tmp_path / "short.npy"
    np.save(words_mismatch, np.zeros((3, 784), np.uint8))
    (tmp_path / "short_words.txt").write_text("a\nb\n")
    result = CliRunner().invoke(evaluate_command, ["--normal", str(normal), "--anomalous", str(words_mismatch)])
    assert result.exit_code != 0 and "short_words.txt" in result.output


def test_train_command_writes_a_loadable_artifact(tmp_path, shared_data):
    normal, anomalous, _ = _write_eval_files(tmp_path, shared_data)
    cats = tmp_path / "train_cats.npy"
    np.save(cats, np.load(shared_data / "cat_bitmaps_28.npy")[:200])
    out = tmp_path / "model"
    result = CliRunner().invoke(train_command, [
        "--data", str(cats), "--outliers", str(anomalous), "--holdout-categories", "circle",
        "--eval-anomalous", str(tmp_path / "more.npy"), "--eval-normal", str(normal),
        "--epochs", "1", "--batch-size", "64", "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, meta = load_artifact(out)
    assert meta["data"]["outliers"]["heldout_categories"] == ["circle"]
    assert meta["data"]["outliers"]["train_categories"] == ["line"]
    assert meta["data"]["cats"]["n_heldout"] == 30 and meta["data"]["cats"]["n_train"] == 170
    assert set(meta["metrics"]) == {"heldout_categories", "more.npy"}
    assert meta["metrics"]["heldout_categories"]["per_category"][0]["category"] == "circle"
    assert "cats.npy" in meta["normal_checks"]
    assert meta["training"]["history"]["epochs_run"] == 1
    held_file = load_file(cats)
    _, held = split_holdout(200, 0.15, 2)
    scores, _ = score_batch(model, held_file.bitmaps[held])
    assert np.percentile(scores, 95) == pytest.approx(meta["percentiles"]["95"], rel=1e-5)
    # The suggested threshold is split-conformal: the ceil(31 * 0.95) = 30th smallest of the 30 held-out cats.
    assert meta["suggested_threshold"] == pytest.approx(float(np.sort(scores)[29]), rel=1e-5)
    calibration = meta["threshold_calibration"]
    assert calibration["nominal_fpr"] == pytest.approx(0.05) and calibration["fpr_on_new_cats"]["n"] == 30
    # --heldout-only keeps the 30 held-out cats and drops the 'line' rows the model trained on.
    result = CliRunner().invoke(evaluate_command, ["--normal", str(cats), "--anomalous", str(anomalous),
                                                   "--model", str(out), "--heldout-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_normal"] == 30 and report["dropped_training_category_rows"] == 10
    assert [r["category"] for r in report["per_category"]] == ["circle"]
    result = CliRunner().invoke(evaluate_command, ["--normal", str(normal), "--anomalous", str(anomalous),
                                                   "--model", str(out), "--heldout-only"])
    assert result.exit_code != 0 and "fingerprint differs" in result.output
