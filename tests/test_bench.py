"""``sketchwatch bench``: helpers behave, and a tiny run on the real stack produces every figure.

No timing assertions: this machine's numbers belong in docs/performance.md, not in a test.
"""

from __future__ import annotations

import http.server
import json
import math
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import report
from bench.cli import BenchOptions, bench_command
from bench.dashboard import ENDPOINTS, _to_psycopg, load_templates
from bench.e2e import sustained
from bench.loadgen import load_fragments, percentiles

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADLINE = (
    "model_ceiling_per_s", "e2e_per_s", "e2e_ratio", "latency_p50_s", "latency_p95_s", "latency_p99_s",
    "intake_p50_ms", "intake_p99_ms", "worker_rss_mb", "web_rss_mb",
)  # fmt: skip


def test_percentiles_interpolate_like_numpy():
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    got = percentiles(values)
    for p in (50, 95, 99):
        assert got[f"p{p}"] == pytest.approx(float(np.percentile(values, p)))
    assert got["max"] == 9.0 and got["n"] == 6
    assert percentiles([])["p99"] is None


def test_percentiles_keep_unscored_as_infinite():
    got = percentiles([0.1] * 98 + [math.inf] * 2)
    assert got["p50"] == pytest.approx(0.1)
    assert got["p99"] == math.inf


def test_sustained_counts_empty_seconds_as_zero():
    series = [(100, 50), (101, 900), (102, 1000), (103, 1100), (105, 1000), (106, 1000), (107, 300)]
    got = sustained(series, trim=2)
    # Seconds 102..106 (104 filled in with 0), the ramp-up and the last second left out.
    assert got == {"median": 1000.0, "min": 0.0, "seconds": 8}
    assert sustained([]) == {"median": None, "min": None, "seconds": 0}


def test_options_sweep_always_includes_the_headline_rate():
    opts = BenchOptions(rate=200.0)
    assert opts.sweep_rates() == [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]
    assert 30.0 in BenchOptions(rate=30.0, rates=[10.0, 20.0]).sweep_rates()


def test_options_dashboard_levels_are_powers_of_ten_up_to_rows():
    assert BenchOptions(rows=1_000_000).dashboard_levels() == [10_000, 100_000, 1_000_000]
    assert BenchOptions(rows=100_000).dashboard_levels() == [10_000, 100_000]
    assert BenchOptions(rows=2000).dashboard_levels() == [2000]


def test_named_placeholders_become_psycopg_ones():
    sql = "SELECT 'a%' || x::text FROM t WHERE k = :lo AND v < CAST(:thr AS float8)"
    assert _to_psycopg(sql) == "SELECT 'a%%' || x::text FROM t WHERE k = %(lo)s AND v < CAST(%(thr)s AS float8)"


def test_fragments_are_valid_json_once_closed(shared_data):
    frags = load_fragments(shared_data / "others.ndjson", limit=50)
    assert len(frags) == 50
    for i, frag in enumerate(frags):
        obj = json.loads(frag + f"ref-{i}".encode() + b'"}')
        assert obj["client_ref"] == f"ref-{i}"
        assert obj["format"] in ("simplified", "raw") and obj["drawing"]


def test_fragments_name_the_bad_line(tmp_path):
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"drawing": [[[1], [2]]]}\n{"nope": 1}\n')
    with pytest.raises(Exception, match=r"bad\.ndjson:2"):
        load_fragments(bad)


def test_dashboard_templates_are_real_drawings(shared_data):
    rows = load_templates(20)
    assert len(rows) == 20
    from service.core.packing import unpack_bitmap, unpack_drawing

    for k, drawing, meta, bitmap, recon in rows:
        # Stored as production stores them (service.core.packing): packed drawing, zlib-packed bitmaps.
        assert unpack_drawing(drawing) and "word" in json.loads(meta)
        assert len(unpack_bitmap(bitmap)) == 784 and len(unpack_bitmap(recon)) == 784


def test_report_marks_unmeasured_targets():
    result = {"e2e_per_s": 1200.0, "e2e_ratio": 0.5, "throughput": {"duration_s": 60.0, "batch": 100}}
    got = {t["name"]: t["reached"] for t in report.targets(result)}
    assert got == {"end-to-end throughput": True, "share of the model ceiling": True}
    short = report.targets({"e2e_per_s": 5000.0, "throughput": {"duration_s": 10.0, "batch": 100}})
    assert short[0]["reached"] is False  # fast, but not sustained for 60 s


def test_cli_help_lists_the_options():
    out = CliRunner().invoke(bench_command, ["--help"])
    assert out.exit_code == 0
    for option in ("--json", "--quick", "--duration", "--workers", "--rate", "--rows", "--skip-e2e", "--plot"):
        assert option in out.output


@pytest.mark.slow
def test_quick_bench_produces_every_figure(shared_data, tmp_path):
    """The whole bench on a tiny load against a real granian + Celery + PostgreSQL + Redis stack."""
    cmd = [sys.executable, "-m", "bench.cli", "--quick", "--json", "--plot", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result["errors"] == []

    for key in HEADLINE:
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["e2e_ratio"] == pytest.approx(result["e2e_per_s"] / result["model_ceiling_per_s"])
    assert result["latency_p50_s"] <= result["latency_p95_s"] <= result["latency_p99_s"]

    # Every submitted sketch was scored, in every phase.
    main = result["throughput"]
    assert main["submitted"] > 0 and main["drained"] and main["scored"] == main["submitted"]
    assert [r["workers"] for r in result["growth"]] == [1, 2]
    for run in result["growth"]:
        assert run["scored"] == run["submitted"] > 0
    steps = result["latency_sweep"]
    assert [s["rate"] for s in steps] == [10.0, 20.0]
    for step in steps:
        assert step["dropped"] == 0 and step["accepted"] == step["offered"] and step["scored"] == step["accepted"]
    # Each phase began with the previous one's writes on disk (a CHECKPOINT, allowed for the test's user).
    for phase in [main, *steps]:
        assert isinstance(phase["settle_s"], float) and phase["settle_s"] >= 0

    # Every dashboard page and stats endpoint answered 200 and was timed.
    assert set(result["dashboard_ms"]) == {name for name, _ in ENDPOINTS}
    for level in result["dashboard"]:
        assert {e["status"] for e in level["endpoints"].values()} == {200}

    assert {t["name"] for t in result["targets"]} == {
        "end-to-end throughput", "share of the model ceiling", "submit-to-scored p99",
        "intake p99 (202 answer)", "worker RSS", "dashboard and stats endpoints",
        "PostgreSQL bytes per sketch row (table, TOAST, indexes; 8% flagged)",
    }  # fmt: skip
    assert result["bytes_per_row"] > 0 and result["dashboard"][-1]["bytes_per_row"] == result["bytes_per_row"]
    for name in report.FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    saved = json.loads((tmp_path / "bench-result.json").read_text())
    assert saved["throughput"]["submitted"] == main["submitted"]


class _Intake(http.server.BaseHTTPRequestHandler):
    """202 for every POST; every third answer silently drops the keep-alive connection afterwards."""

    protocol_version = "HTTP/1.1"
    answered = 0
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        type(self).answered += 1
        data = b'{"id": 1}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # Like a server closing an idle keep-alive connection: the client learns it on its next send.
        self.close_connection = type(self).answered % 3 == 0

    def log_message(self, *args):
        pass


def test_single_mode_sends_every_request_once_and_survives_closed_keepalive_connections():
    from bench.loadgen import run_single

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Intake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        frags = [b'{"drawing":[[[0,1],[0,1]]],"format":"simplified","client_ref":"']
        # In a thread of its own, as in its own process: the browser tests leave an event loop running here.
        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(run_single, f"http://127.0.0.1:{server.server_port}", "k", frags, rate=200,
                              duration=0.5, concurrency=4, prefix="t", trace=True).result()  # fmt: skip
    finally:
        server.shutdown()
    assert out["offered"] == 100 and out["dropped"] == 0
    assert out["statuses"] == {"202": 100} and out["accepted"] == 100 and not out["errors"]
    assert len(out["trace"]) == 100 and all(status == 202 for _, _, status in out["trace"])
    refs = sorted(json.loads(b)["client_ref"] for b in _Intake.bodies)
    assert refs == sorted(f"t-{i}" for i in range(100))
    assert out["intake_ms"]["n"] == 100 and out["intake_ms"]["p99"] is not None
