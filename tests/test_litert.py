"""LiteRT scoring: the export and its parity check, the LiteRT scorer, and workers that never load TensorFlow.

The export runs on a copy of the shipped Keras model, so these tests do not depend on the committed
model.tflite; one test checks the committed one too. Worker tests start real workers (PostgreSQL +
Redis) through the ``stack`` fixture.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from models.artifact import META_FILE, MODEL_FILE, TFLITE_FILE, ArtifactError, check_artifact, shipped_model_dir
from models.lite import MAX_CHUNK, LiteScorer, chunk_sizes
from stack_fixtures import READY_LINE, ROOT, wait_for

PROBE_ENV = {"CELERY_WORKER_INCLUDE": "tests.litert_probe"}
SCORE_TOL = 1e-5
RECON_TOL = 1e-4


def shipped_heldout_cats() -> int:
    """How many held-out cats the shipped model records (its parity check and --heldout-only use them all)."""
    return int(json.loads((shipped_model_dir() / META_FILE).read_text())["data"]["cats"]["n_heldout"])


def keras_only_copy(dest: Path) -> Path:
    """The shipped model.keras and model.json (without any litert record) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shipped_model_dir() / MODEL_FILE, dest / MODEL_FILE)
    meta = json.loads((shipped_model_dir() / META_FILE).read_text())
    meta.pop("litert", None)
    (dest / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def read_drawings(path: Path, limit: int) -> list[list[np.ndarray]]:
    """Up to ``limit`` drawings of an ndjson file as (2, n) strokes (raw ones normalised, as the service does)."""
    from itertools import islice

    from models.formats import read_ndjson

    return [d.strokes for d in islice(read_ndjson(path), limit)]


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory) -> Path:
    """An artifact with the shipped Keras model and no model.tflite."""
    return keras_only_copy(tmp_path_factory.mktemp("keras-only"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data) -> tuple[Path, dict]:
    """(artifact directory, litert record): the shipped Keras model exported by models.export."""
    from models.export import export_artifact

    path = keras_only_copy(tmp_path_factory.mktemp("exported"))
    record = export_artifact(path, data_dir=shared_data)
    return path, record


@pytest.fixture(scope="module")
def keras_scorer(keras_dir):
    from models.scoring import Scorer

    return Scorer.load(keras_dir, threads=1)


@pytest.fixture(scope="module")
def test_bitmaps(shared_data) -> dict[str, np.ndarray]:
    """Every test drawing at hand: the shipped model's held-out cats, 15,000 non-cat bitmaps, stroke cats and non-cats."""
    from models.raster import rasterize_batch

    meta = json.loads((shipped_model_dir() / META_FILE).read_text())
    cats = np.load(shared_data / "cat_bitmaps_28.npy").reshape(-1, 28, 28)
    return {
        "heldout_cats": cats[meta["data"]["cats"]["heldout_rows"]],
        "others_bitmaps": np.load(shared_data / "others_bitmaps_28.npy").reshape(-1, 28, 28),
        "cat_strokes": rasterize_batch(read_drawings(shared_data / "cat.ndjson", 25)),
        "other_strokes": rasterize_batch(read_drawings(shared_data / "others.ndjson", 3000)),
    }


# --------------------------------------------------------------------------- export and parity


def test_export_writes_a_plain_graph_and_records_its_parity(exported):
    path, record = exported
    meta = json.loads((path / META_FILE).read_text())
    assert meta["litert"] == record
    assert record["file"] == TFLITE_FILE and record["bytes"] == (path / TFLITE_FILE).stat().st_size
    assert record["weights_sha256"] == meta["weights_sha256"]
    # Builtin operators only: no Flex (TensorFlow) kernels, no custom ops, no in-graph kernel padding.
    assert set(record["graph"]["ops"]) <= {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED",
                                           "CONCATENATION", "STRIDED_SLICE", "LOGISTIC"}
    assert record["graph"]["ops"]["CONV_2D"] == 9  # 4 folded DualConvs + 4 up-block convs + the output
    parity = record["parity"]
    assert parity["passed"] is True
    assert set(parity["sets"]) == {"heldout_cats", "noncats"}
    assert parity["sets"]["heldout_cats"]["n"] == meta["data"]["cats"]["n_heldout"] == shipped_heldout_cats()
    assert parity["sets"]["noncats"]["n"] == 1000
    for figures in parity["sets"].values():
        assert 0 <= figures["max_abs_reconstruction_diff"] <= RECON_TOL
        assert 0 <= figures["max_abs_score_diff"] <= SCORE_TOL
    check_artifact(path)  # the written pair validates


def test_litert_scores_every_test_drawing_like_keras(exported, keras_scorer, test_bitmaps):
    lite = LiteScorer.load(exported[0])
    for name, bitmaps in test_bitmaps.items():
        k_scores, k_recon = keras_scorer.score_bitmaps(bitmaps)
        l_scores, l_recon = lite.score_bitmaps(bitmaps)
        assert l_scores.dtype == np.float32 and l_recon.dtype == np.uint8 and l_recon.shape == bitmaps.shape
        assert np.isfinite(l_scores).all()
        assert np.max(np.abs(k_scores - l_scores)) <= SCORE_TOL, name
        # Reconstructions differ by float rounding only: at most one grey level after rounding to uint8.
        assert np.max(np.abs(k_recon.astype(int) - l_recon.astype(int))) <= 1, name


def test_holdout_auroc_is_unchanged_to_three_decimals(exported, keras_scorer, test_bitmaps):
    from models.metrics import evaluate_scores

    lite = LiteScorer.load(exported[0])
    cats = test_bitmaps["heldout_cats"]
    for name in ("others_bitmaps", "other_strokes"):
        results = []
        for scorer in (keras_scorer, lite):
            normal, _ = scorer.score_bitmaps(cats)
            anomalous, _ = scorer.score_bitmaps(test_bitmaps[name])
            results.append(evaluate_scores(normal, anomalous, scorer.suggested_threshold)["auroc"])
        assert round(results[0], 3) == round(results[1], 3), (name, results)


def test_export_refuses_a_graph_that_fails_parity_and_writes_nothing(tmp_path, shared_data):
    from models.export import ExportError, export_artifact

    path = keras_only_copy(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    # A tolerance below float32 rounding: the real graph differs from Keras by ~1e-7, so it must be refused.
    with pytest.raises(ExportError) as info:
        export_artifact(path, data_dir=shared_data, recon_tol=1e-12)
    message = str(info.value)
    assert "does not match Keras" in message and f"{TFLITE_FILE} was not written" in message
    assert f"heldout_cats: n={shipped_heldout_cats()}" in message and "noncats: n=1000" in message
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_export_command_refuses_with_a_clear_message(tmp_path):
    path = keras_only_copy(tmp_path / "model")
    (path / MODEL_FILE).write_bytes(b"not a keras archive")
    proc = subprocess.run([sys.executable, "-m", "models.export", "--model", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"Error: {path / MODEL_FILE}: cannot load the Keras model" in proc.stderr
    assert not (path / TFLITE_FILE).exists()


def test_export_without_the_data_checks_synthetic_drawings(tmp_path):
    from models.export import export_artifact

    path = keras_only_copy(tmp_path / "model")
    record = export_artifact(path, data_dir=tmp_path / "no-data-here")
    sets = record["parity"]["sets"]
    assert list(sets) == ["synthetic"]
    assert sets["synthetic"]["n"] == shipped_heldout_cats() + 1000
    assert "data files not found under" in sets["synthetic"]["source"]
    assert sets["synthetic"]["max_abs_score_diff"] <= SCORE_TOL
    blank, _ = LiteScorer.load(path).score_bitmaps(np.zeros((1, 28, 28), dtype=np.uint8))
    assert blank[0] == 1.0  # an empty drawing scores 1 (nothing to reconstruct)


def test_export_command_is_quiet_unless_verbose(tmp_path):
    path = keras_only_copy(tmp_path / "model")
    cmd = [sys.executable, "-m", "models.export", "--model", str(path), "--data", str(tmp_path / "none")]
    quiet = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert f"parity synthetic (n={shipped_heldout_cats() + 1000})" in quiet.stdout
    loud = subprocess.run([*cmd, "--verbose"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "oneDNN" in loud.stderr  # the line the quiet run dropped


def test_evaluate_compares_the_runtimes_in_one_quiet_run(shared_data):
    cmd = [sys.executable, "-m", "models.cli", "evaluate", "--normal", str(shared_data / "cat_bitmaps_28.npy"),
           "--anomalous", str(shared_data / "others_bitmaps_28.npy"), "--heldout-only", "--runtime", "both", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no oneDNN or absl lines without --verbose
    result = json.loads(proc.stdout)
    runtimes = result["runtimes"]
    assert runtimes["max_abs_score_diff"] <= SCORE_TOL
    assert round(runtimes["keras"]["auroc"], 3) == round(runtimes["litert"]["auroc"], 3) == round(result["auroc"], 3)
    assert result["runtime"] == "keras" and result["n_normal"] == shipped_heldout_cats()
    assert result["n_anomalous"] == 15000


def test_evaluate_on_litert_never_loads_tensorflow(shared_data):
    code = (
        "import sys\n"
        "from models.cli import evaluate_command\n"
        f"evaluate_command.main(['--normal', {str(shared_data / 'cat_bitmaps_28.npy')!r}, '--anomalous',"
        f" {str(shared_data / 'others_bitmaps_28.npy')!r}, '--heldout-only', '--runtime', 'litert', '--json'],"
        " standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result, modules = proc.stdout.strip().splitlines()
    assert json.loads(result)["runtime"] == "litert" and modules == "[]"


@pytest.mark.slow
def test_train_writes_a_checked_tflite_and_prints_no_tensorflow_lines(shared_data, tmp_path):
    out = tmp_path / "trained"
    cmd = [sys.executable, "-m", "models.cli", "train", "--data", str(shared_data / "cat_bitmaps_28.npy"),
           "--outliers", str(shared_data / "others.ndjson"), "--epochs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("oneDNN", "absl", "I0000", "W0000", "E0000", "XNNPACK"):
        assert noise not in proc.stderr, noise
    assert "model.tflite: max score diff vs Keras" in proc.stderr
    meta = json.loads((out / META_FILE).read_text())
    assert set(meta["litert"]["parity"]["sets"]) == {"heldout_cats", "noncats"}
    assert meta["litert"]["parity"]["max_abs_score_diff"] <= SCORE_TOL
    check_artifact(out)


def test_the_shipped_artifact_carries_a_checked_tflite():
    meta = json.loads((shipped_model_dir() / META_FILE).read_text())
    assert (shipped_model_dir() / TFLITE_FILE).is_file()
    assert meta["litert"]["parity"]["passed"] is True
    assert meta["litert"]["parity"]["max_abs_score_diff"] <= SCORE_TOL
    assert set(meta["litert"]["parity"]["sets"]) == {"heldout_cats", "noncats"}
    check_artifact(shipped_model_dir())
    assert LiteScorer.load().version == meta["version"]


# --------------------------------------------------------------------------- the LiteRT scorer


def test_chunk_sizes_cover_any_batch_with_a_few_fixed_sizes():
    assert chunk_sizes(0) == []
    assert chunk_sizes(1) == [1]
    assert chunk_sizes(100) == [64, 32, 4]
    assert chunk_sizes(255) == [64, 64, 64, 32, 16, 8, 4, 2, 1]
    for n in range(0, 600):
        sizes = chunk_sizes(n)
        assert sum(sizes) == n and set(sizes) <= {1, 2, 4, 8, 16, 32, 64}


def test_variable_batch_sizes_reuse_the_same_interpreters(exported, keras_scorer, test_bitmaps):
    lite = LiteScorer.load(exported[0], threads=1)
    lite.warm_up()
    interpreters = dict(lite._graph._interpreters)  # noqa: SLF001 - identity shows nothing is re-created
    assert sorted(interpreters) == [1, 2, 4, 8, 16, 32, 64] and MAX_CHUNK == 64
    bitmaps = test_bitmaps["other_strokes"]
    expected, _ = keras_scorer.score_bitmaps(bitmaps[:300])
    rng = np.random.default_rng(0)
    for n in [0, 1, 2, 3, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 300, *rng.integers(1, 300, 40)]:
        scores, recon = lite.score_bitmaps(bitmaps[:n])
        assert scores.shape == (n,) and recon.shape == (n, 28, 28)
        assert np.max(np.abs(scores - expected[:n]), initial=0.0) <= SCORE_TOL, n
    assert lite._graph._interpreters == interpreters  # noqa: SLF001 - same objects, no resize, no new size
    # The same row scores the same whatever batch it arrives in.
    single = np.concatenate([lite.score_bitmaps(bitmaps[i : i + 1])[0] for i in range(100)])
    assert np.max(np.abs(single - lite.score_bitmaps(bitmaps[:100])[0])) <= 1e-6


def test_score_drawings_matches_score_bitmaps(exported, shared_data):
    from models.raster import rasterize_batch

    lite = LiteScorer.load(exported[0])
    drawings = read_drawings(shared_data / "others.ndjson", 700)
    scores, recon = lite.score_drawings(drawings, batch_size=256)  # three batches, rasterized in overlap
    expected, expected_recon = lite.score_bitmaps(rasterize_batch(drawings))
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(recon, expected_recon)
    result = lite.score_drawings_result(drawings, batch_size=256)
    np.testing.assert_array_equal(result.scores, expected)
    np.testing.assert_array_equal(result.logits, lite.score_result(rasterize_batch(drawings)).logits)
    assert result.logits.dtype == np.float64 and np.all(np.isfinite(result.logits))
    assert lite.percentiles.keys() == {"90", "95", "99", "99.5"}
    assert lite.suggested_threshold == pytest.approx(lite.meta["suggested_threshold"])


def test_importing_and_using_the_litert_scorer_never_loads_tensorflow(exported):
    code = (
        "import sys, numpy as np\n"
        "from models.lite import LiteScorer\n"
        f"s = LiteScorer.load({str(exported[0])!r})\n"
        "s.score_drawings([[np.array([[0, 255], [0, 255]], dtype=float)]] * 300, batch_size=128)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert proc.stderr == ""  # LiteRT's delegate notice does not reach the terminal


def test_litert_scorer_refuses_a_missing_or_foreign_tflite(exported, keras_dir, tmp_path):
    with pytest.raises(ArtifactError, match="sketchwatch export"):
        LiteScorer.load(keras_dir)
    path = tmp_path / "tampered"
    shutil.copytree(exported[0], path)
    data = bytearray((path / TFLITE_FILE).read_bytes())
    data[-100] ^= 0xFF
    (path / TFLITE_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match litert.sha256"):
        LiteScorer.load(path)
    with pytest.raises(ArtifactError, match="does not match litert.sha256"):
        check_artifact(path)


def test_check_artifact_validates_the_tflite_and_its_record(exported, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(exported[0], path)
    meta = json.loads((path / META_FILE).read_text())

    (path / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "litert"}))
    with pytest.raises(ArtifactError, match="no 'litert' record"):
        check_artifact(path)

    (path / META_FILE).write_text(json.dumps({**meta, "litert": {**meta["litert"], "weights_sha256": "0" * 64}}))
    with pytest.raises(ArtifactError, match="exported from other weights"):
        check_artifact(path)

    (path / META_FILE).write_text(json.dumps(meta))
    (path / TFLITE_FILE).write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match="not a TFLite model"):
        check_artifact(path)

    (path / TFLITE_FILE).unlink()
    assert check_artifact(path) == path  # no file: the Keras model alone is a valid artifact


# --------------------------------------------------------------------------- workers and web


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _mapped_libraries(pid: int) -> set[str]:
    """Paths of the files a process has mapped (its shared libraries among them)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as fh:
        return {line.split()[-1] for line in fh if "/" in line}


def _pool_pids(s) -> list[int]:
    return [rec["pid"] for rec in _json_lines(s.log("worker")) if rec.get("msg") == READY_LINE]


def _api_items(path: Path, limit: int, tag: str) -> list[dict]:
    """API items (drawing, format, a unique client_ref) from an ndjson file."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for i, line in zip(range(limit), fh):
            obj = json.loads(line)
            items.append({"drawing": obj["drawing"], "format": obj.get("format", "simplified"),
                          "client_ref": f"{tag}-{i}"})
    return items


def _submit(s, items: list[dict]) -> list[int]:
    resp = s.submit(items)
    assert resp.status_code == 202, resp.text[:500]
    body = resp.json()
    assert body["rejected"] == 0, body
    return [item["id"] for item in body["items"]]


def test_pool_process_scores_with_litert_and_never_imports_tensorflow(stack, exported, keras_scorer, shared_data,
                                                                      tmp_path):
    from service.core.celery_app import QUEUE, make_celery
    from service.core.settings import get_settings
    from litert_probe import PROBE_TASK

    s = stack(model_dir=str(exported[0]), env=PROBE_ENV)
    log = _json_lines(s.log("worker"))
    loaded = [rec for rec in log if rec.get("runtime") == "litert" and rec.get("model_version")]
    assert loaded, s.log("worker")[-3000:]
    assert not any("has no model.tflite" in rec.get("msg", "") for rec in log)
    pools = _pool_pids(s)
    assert len(pools) == 1

    cats = _api_items(shared_data / "cat.ndjson", 25, "litert-cat")
    others = _api_items(shared_data / "others.ndjson", 110, "litert-other")
    # Batches of several sizes, so the pool process scores 1-row, odd and >64-row model calls.
    ids = _submit(s, cats[:1]) + _submit(s, cats[1:8]) + _submit(s, cats[8:25] + others[:100])
    ids += [i for item in others[100:110] for i in _submit(s, [item])]
    rows = s.wait_for(ids, {"scored"}, timeout=120)

    # A stroke submission's model input is its rasterized drawing (not stored since migration 0010).
    from models.raster import rasterize

    bitmaps = np.stack([rasterize(rows[i].drawing) for i in ids])
    expected, _ = keras_scorer.score_bitmaps(bitmaps)
    got = np.array([rows[i].score for i in ids])
    assert np.max(np.abs(got - expected)) <= SCORE_TOL
    assert all(rows[i].model_version == keras_scorer.version for i in ids)
    # The worker stores the log-odds from the model's sums (issue 15): those of this runtime, row by row.
    logits = np.array([rows[i].score_logit for i in ids], dtype=np.float64)
    np.testing.assert_allclose(logits, LiteScorer.load(exported[0]).score_result(bitmaps).logits, rtol=0, atol=1e-4)

    producer = make_celery(get_settings({"broker_url": s.broker_url, "database_url": s.database_url}))
    report_path = tmp_path / "modules.json"
    try:
        producer.send_task(PROBE_TASK, args=[str(report_path)], queue=QUEUE)
        wait_for(report_path.exists, 60, "the probe task did not report")
    finally:
        producer.close()
    report = json.loads(report_path.read_text())
    assert report["pid"] == pools[0]  # the process that scored every sketch above (concurrency 1)
    assert report["heavy_modules"] == []
    assert report["litert_loaded"] is True and report["runtime"] == "litert"
    assert report["interpreter_sizes"] == [1, 2, 4, 8, 16, 32, 64]

    # No process of the worker (main, pool, beat) nor of the web server maps TensorFlow's libraries or
    # numba's LLVM (the stroke kernels are compiled C), and the web maps no LiteRT either.
    for pid in s.worker_pids():
        libs = _mapped_libraries(pid)
        assert not [p for p in libs if "tensorflow" in p or "/keras/" in p or "llvmlite" in p], pid
    web = psutil.Process(s.procs["web"].pid)
    for proc in [web, *web.children(recursive=True)]:
        libs = _mapped_libraries(proc.pid)
        assert not [p for p in libs if "tensorflow" in p or "ai_edge_litert" in p], proc.pid


def test_worker_without_tflite_falls_back_to_keras_with_a_warning(stack, keras_dir, shared_data):
    s = stack(model_dir=str(keras_dir))
    log = _json_lines(s.log("worker"))
    warnings = [rec for rec in log if "has no model.tflite" in rec.get("msg", "")]
    assert warnings, s.log("worker")[-3000:]
    assert warnings[0]["level"] == "WARNING"
    assert f"sketchwatch export --model {keras_dir}" in warnings[0]["msg"]
    assert any(rec.get("runtime") == "keras" and rec.get("model_version") for rec in log)
    ids = _submit(s, _api_items(shared_data / "cat.ndjson", 1, "keras-fallback"))
    rows = s.wait_for(ids, {"scored"}, timeout=120)
    assert np.isfinite(rows[ids[0]].score)


def test_worker_refuses_a_tflite_that_does_not_match_its_record(stack, exported, tmp_path):
    s = stack(model_dir=str(exported[0]), env=PROBE_ENV)  # the stack of the test above
    path = tmp_path / "tampered"
    shutil.copytree(exported[0], path)
    data = bytearray((path / TFLITE_FILE).read_bytes())
    data[-100] ^= 0xFF
    (path / TFLITE_FILE).write_bytes(bytes(data))
    s.kill_worker()
    proc = s.start_worker(env={"SKETCHWATCH_MODEL_DIR": str(path)}, wait=False)
    assert proc.wait(timeout=120) == 78
    assert "does not match litert.sha256" in s.log("worker")
    assert READY_LINE not in s.log("worker")


def test_the_web_app_imports_neither_tensorflow_nor_litert(tmp_path):
    code = (
        "import sys\n"
        "from stack_fixtures import build_testing_app\n"
        "from service.core.migrate import upgrade\n"
        "from pathlib import Path\n"
        f"d = Path({str(tmp_path)!r}); upgrade(f'sqlite:///{{d}}/app.db')\n"
        "app = build_testing_app(f'sqlite:///{d}/app.db', d)\n"
        "c = app.test_client()\n"
        "for url in ('/healthz', '/readyz', '/login', '/api/v1/model'):\n"
        "    c.get(url)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'ai_edge_litert')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
