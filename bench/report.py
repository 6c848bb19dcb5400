"""Turn a bench result into targets, Markdown tables and matplotlib figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

E2E_TARGET_PER_S = 1000.0
E2E_TARGET_DURATION_S = 60.0
E2E_TARGET_RATIO = 0.40
LATENCY_TARGET_S = 1.0
LATENCY_TARGET_RATE = 200.0
INTAKE_TARGET_MS = 20.0
RSS_TARGET_MB = 1024.0
DASHBOARD_TARGET_MS = 300.0
DASHBOARD_TARGET_ROWS = 1_000_000

FIGURES = ("perf_throughput.png", "perf_latency.png", "perf_dashboard.png")


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return format(value, spec)


def targets(result: dict) -> list[dict]:
    """Each target of issue 6 with the measured value and whether it was reached (None = not measured)."""
    out = []
    tp = result.get("throughput") or {}
    e2e, ratio = result.get("e2e_per_s"), result.get("e2e_ratio")
    if e2e is not None:
        long_enough = tp.get("duration_s", 0) >= E2E_TARGET_DURATION_S and tp.get("batch") == 100
        out.append(
            {
                "name": "end-to-end throughput",
                "target": f">= {E2E_TARGET_PER_S:,.0f} sketches/s for {E2E_TARGET_DURATION_S:.0f} s, batches of 100",
                "value": f"{e2e:,.0f} /s over {tp.get('duration_s', 0):.0f} s",
                "reached": bool(e2e >= E2E_TARGET_PER_S and long_enough),
            }
        )
    if ratio is not None:
        out.append(
            {
                "name": "share of the model ceiling",
                "target": f">= {E2E_TARGET_RATIO:.0%} of the in-process ceiling",
                "value": f"{ratio:.0%}",
                "reached": bool(ratio >= E2E_TARGET_RATIO),
            }
        )
    lat = result.get("latency") or {}
    if result.get("latency_p99_s") is not None or lat:
        p99 = result.get("latency_p99_s")
        rate = lat.get("rate")
        out.append(
            {
                "name": "submit-to-scored p99",
                "target": f"<= {LATENCY_TARGET_S:g} s at {LATENCY_TARGET_RATE:.0f} single sketches/s",
                "value": f"{_fmt(p99, '.3f')} s at {_fmt(rate)}/s",
                "reached": bool(p99 is not None and p99 <= LATENCY_TARGET_S and (rate or 0) >= LATENCY_TARGET_RATE),
            }
        )
    if result.get("intake_p99_ms") is not None:
        out.append(
            {
                "name": "intake p99 (202 answer)",
                "target": f"<= {INTAKE_TARGET_MS:g} ms",
                "value": f"{result['intake_p99_ms']:.1f} ms",
                "reached": bool(result["intake_p99_ms"] <= INTAKE_TARGET_MS),
            }
        )
    if result.get("worker_rss_mb") is not None:
        out.append(
            {
                "name": "worker RSS",
                "target": f"<= {RSS_TARGET_MB:,.0f} MB per process",
                "value": f"{result['worker_rss_mb']:,.0f} MB (max over processes)",
                "reached": bool(result["worker_rss_mb"] <= RSS_TARGET_MB),
            }
        )
    levels = result.get("dashboard") or []
    if levels:
        top = max(levels, key=lambda lv: lv["rows"])
        worst_name, worst = max(((n, e["max_ms"]) for n, e in top["endpoints"].items()), key=lambda kv: kv[1])
        all_ok = all(e["status"] == 200 for e in top["endpoints"].values())
        out.append(
            {
                "name": "dashboard and stats endpoints",
                "target": f"<= {DASHBOARD_TARGET_MS:.0f} ms each with {DASHBOARD_TARGET_ROWS:,} sketches",
                "value": f"worst {worst:.0f} ms ({worst_name}) with {top['rows']:,} rows",
                "reached": bool(worst <= DASHBOARD_TARGET_MS and all_ok) if top["rows"] >= DASHBOARD_TARGET_ROWS else None,
            }
        )
        if top.get("bytes_per_row"):
            out.append(
                {
                    "name": "PostgreSQL bytes per sketch row (table, TOAST, indexes; 8% flagged)",
                    "target": f"<= {BYTES_PER_ROW_TARGET:,} per unflagged row",
                    "value": f"{top['bytes_per_row']:,.0f} B with {top['rows']:,} rows",
                    "reached": bool(top["bytes_per_row"] <= BYTES_PER_ROW_TARGET),
                }
            )
    return out


# Issue 20: a stored sketch, indexes included (the bench's rows are 8% flagged, so this is an upper bound).
BYTES_PER_ROW_TARGET = 1200


def summary(result: dict) -> dict:
    """The flat headline figures that ``--json`` promises."""
    keys = (
        "model_ceiling_per_s", "model_only_per_s", "e2e_per_s", "e2e_ratio", "latency_p50_s", "latency_p95_s",
        "latency_p99_s", "intake_p50_ms", "intake_p99_ms", "worker_rss_mb", "web_rss_mb", "dashboard_ms",
        "bytes_per_row",
    )  # fmt: skip
    return {k: result.get(k) for k in keys if k in result}


def markdown(result: dict) -> str:
    """All tables of a run, as Markdown."""
    lines: list[str] = []
    add = lines.append
    for err in result.get("errors") or []:
        add(f"**error:** {err}  ")
    if result.get("errors"):
        add("")
    add("| target | goal | measured | reached |")
    add("| --- | --- | --- | --- |")
    for t in result.get("targets") or targets(result):
        mark = {True: "yes", False: "**no**", None: "not measured"}[t["reached"]]
        add(f"| {t['name']} | {t['target']} | {t['value']} | {mark} |")
    add("")
    if result.get("model"):
        m = result["model"]
        add("| model ceiling (in-process, batch {}) | sketches/s |".format(m.get("batch", "")))
        add("| --- | ---: |")
        add(f"| from strokes (rasterize + model + score) | {_fmt(m.get('from_strokes_per_s'))} |")
        add(f"| model only (bitmaps in) | {_fmt(m.get('model_only_per_s'))} |")
        add("")
    runs = [r for r in result.get("growth") or [] if r]
    if runs:
        add("| worker processes | submitted | e2e sketches/s | sustained median /s | sustained min /s | % of ceiling | batch intake p50 / p99 ms | worker RSS max MB | web RSS max MB |")
        add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        ceiling = result.get("model_ceiling_per_s")
        for r in sorted(runs, key=lambda r: r["workers"]):
            share = f"{r['e2e_per_s'] / ceiling:.0%}" if ceiling and r.get("e2e_per_s") else "-"
            s = r.get("sustained_per_s") or {}
            add(
                f"| {r['workers']} | {r['submitted']:,} | {_fmt(r.get('e2e_per_s'))} | {_fmt(s.get('median'))} | "
                f"{_fmt(s.get('min'))} | {share} | {_fmt(r['batch_intake_ms'].get('p50'), '.0f')} / "
                f"{_fmt(r['batch_intake_ms'].get('p99'), '.0f')} | {_fmt(max(r['worker_rss_mb'] or [0]))} | "
                f"{_fmt(max(r['web_rss_mb'] or [0]))} |"
            )
        add("")
    cpu_rows = [(f"batch, {r['workers']} workers", r) for r in sorted(runs, key=lambda r: r["workers"])]
    cpu_rows += [(f"single, {s['rate']:,.0f}/s", s) for s in result.get("latency_sweep") or []]
    cpu_rows = [(label, r["resources"], r.get("per_sketch") or {}) for label, r in cpu_rows if r.get("resources")]
    if cpu_rows:
        cpus = (result.get("machine") or {}).get("cpus") or 1
        add("| phase | web | worker | postgres (our backends) | postgres (server processes) | redis | loadgen | total CPU ms/sketch | => sketches/s on idle cores | WAL bytes/sketch | Redis cmds/sketch | other programs' CPU | load before |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, res, counts in cpu_rows:
            per, cpu = res["cpu_ms_per_sketch"], res["cpu_s"]
            total = per.get("total")
            # What this machine could sustain if the five roles had all its cores to themselves.
            capacity = f"{cpus * 1000.0 / total:,.0f}" if total else "-"
            other = f"{cpu['other'] / cpu['capacity']:.0%}" if cpu.get("capacity") else "-"
            add(
                f"| {label} | " + " | ".join(_fmt(per.get(r), ".2f") for r in ("web", "worker", "postgres", "pg-shared", "redis", "loadgen"))
                + f" | {_fmt(total, '.2f')} | {capacity} | {_fmt(counts.get('wal_bytes'))} | {_fmt(counts.get('redis_commands'), '.1f')}"
                + f" | {other} | {res['load_before']:.1f} |"
            )
        add("")
    steps = result.get("latency_sweep") or []
    if steps:
        add("| offered /s | sent /s | scored /s | p50 s | p95 s | p99 s | intake p50 ms | intake p99 ms | client lag p99 ms | saturated |")
        add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for s in steps:
            lat, intake = s["latency_s"], s["intake_ms"]
            add(
                f"| {s['rate']:,.0f} | {s['achieved_send_rate']:,.0f} | {s['scored_rate']:,.0f} | {_fmt(lat['p50'], '.3f')} | "
                f"{_fmt(lat['p95'], '.3f')} | {_fmt(lat['p99'], '.3f')} | {_fmt(intake['p50'], '.1f')} | "
                f"{_fmt(intake['p99'], '.1f')} | {_fmt(s['client_lag_ms']['p99'], '.1f')} | {'yes' if s['saturated'] else 'no'} |"
            )
        add("")
    levels = result.get("dashboard") or []
    if levels:
        levels = sorted(levels, key=lambda lv: lv["rows"])
        add("| endpoint (max ms of 5) | " + " | ".join(f"{lv['rows']:,} rows" for lv in levels) + " |")
        add("| --- | " + " | ".join("---:" for _ in levels) + " |")
        for name, ep in levels[0]["endpoints"].items():
            cells = []
            for lv in levels:
                e = lv["endpoints"].get(name)
                cells.append("-" if e is None else (f"{e['max_ms']:.0f}" + ("" if e["status"] == 200 else f" (HTTP {e['status']})")))
            add(f"| `{ep['path']}` | " + " | ".join(cells) + " |")
        add("| seeding time s | " + " | ".join(f"{lv['seed_s']:.1f}" for lv in levels) + " |")
        add("")
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    """Write the figures (PNG) into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    # A run without a phase (--skip-e2e, --skip-dashboard) leaves that phase's figure as it was.
    if result.get("throughput"):
        paths.append(_throughput_figure(result, out_dir / FIGURES[0], plt))
    if result.get("latency_sweep"):
        paths.append(_latency_figure(result, out_dir / FIGURES[1], plt))
    if result.get("dashboard"):
        paths.append(_dashboard_figure(result, out_dir / FIGURES[2], plt))
    return paths


def _throughput_figure(result: dict, path: Path, plt) -> Path:
    """Throughput per worker count, and the main run's per-second scoring rate against CPU use."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    runs = sorted([r for r in result.get("growth") or [] if r], key=lambda r: r["workers"])
    ceiling = result.get("model_ceiling_per_s")
    if runs:
        xs = list(range(len(runs)))
        ax1.bar(xs, [r.get("e2e_per_s") or 0 for r in runs], color="#4c72b0", label="end-to-end")
        ax1.set_xticks(xs, [str(r["workers"]) for r in runs])
    if ceiling:
        ax1.axhline(ceiling, color="#dd8452", ls="--", label=f"model ceiling {ceiling:,.0f}/s")
    ax1.axhline(E2E_TARGET_PER_S, color="#c44e52", ls=":", label="target 1,000/s")
    ax1.set_xlabel("Celery worker processes")
    ax1.set_ylabel("sketches/s")
    ax1.set_title("End-to-end throughput (batches of 100)")
    ax1.legend(fontsize=8)
    tp = result.get("throughput") or {}
    series = tp.get("series") or []
    if series:
        t0 = series[0][0]
        ax2.plot([s - t0 for s, _ in series], [c for _, c in series], color="#4c72b0")
    ax2.axhline(E2E_TARGET_PER_S, color="#c44e52", ls=":")
    ax2.set_xlabel("seconds since first scored")
    ax2.set_ylabel("sketches scored per second")
    resources = tp.get("resources") or {}
    timeline = resources.get("timeline") or []
    if timeline and series and resources.get("started_at"):
        # CPU taken by other programs explains dips that are not the stack's doing.
        ax3 = ax2.twinx()
        xs = [resources["started_at"] + t - series[0][0] for t, _, _ in timeline]
        ax3.plot(xs, [o for _, _, o in timeline], color="#999999", lw=0.8, label="CPU: other programs")
        ax3.plot(xs, [u for _, u, _ in timeline], color="#55a868", lw=0.8, label="CPU: bench stack")
        ax3.set_xlim(left=min(0, xs[0]))
        ax3.set_ylabel("CPU cores in use")
        ax3.set_ylim(0, (result.get("machine") or {}).get("cpus") or 2)
        ax3.legend(fontsize=8, loc="upper right")
    ax2.set_title(f"Main run ({tp.get('workers', '?')} workers, {tp.get('duration_s', 0):.0f} s)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _latency_figure(result: dict, path: Path, plt) -> Path:
    """Submit-to-scored and intake latency percentiles against the offered rate."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = result.get("latency_sweep") or []
    if steps:
        rates = [s["rate"] for s in steps]
        for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
            ax1.plot(rates, [_finite(s["latency_s"][key]) for s in steps], style, label=key)
            ax2.plot(rates, [_finite(s["intake_ms"][key]) for s in steps], style, label=key)
        from matplotlib.ticker import FuncFormatter, NullFormatter

        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Plain numbers at the measured rates read better than powers of ten.
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax1.axhline(LATENCY_TARGET_S, color="#c44e52", ls=":", label="target 1 s")
    ax1.set_xlabel("offered single sketches/s")
    ax1.set_ylabel("submit -> scored (s)")
    ax1.set_title("Scoring latency vs offered rate")
    ax1.legend(fontsize=8)
    ax2.axhline(INTAKE_TARGET_MS, color="#c44e52", ls=":", label="target 20 ms")
    ax2.set_xlabel("offered single sketches/s")
    ax2.set_ylabel("202 answer (ms)")
    ax2.set_title("Intake latency vs offered rate")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, plt)


def _dashboard_figure(result: dict, path: Path, plt) -> Path:
    """Response time of every dashboard endpoint against the number of stored sketches."""
    fig, ax = plt.subplots(figsize=(11, 5))
    levels = sorted(result.get("dashboard") or [], key=lambda lv: lv["rows"])
    if levels:
        rows = [lv["rows"] for lv in levels]
        colors = plt.get_cmap("tab20").colors
        markers = "os^Dv<>ph*"
        for i, name in enumerate(levels[0]["endpoints"]):
            ax.plot(rows, [lv["endpoints"][name]["max_ms"] for lv in levels], marker=markers[i % len(markers)],
                    color=colors[i % len(colors)], label=name, lw=1)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.axhline(DASHBOARD_TARGET_MS, color="#c44e52", ls=":", label="target 300 ms")
    ax.set_xlabel("stored sketches")
    ax.set_ylabel("max response time of 5 (ms)")
    ax.set_title("Dashboard pages and stats endpoints")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path, plt)


def _finite(value):
    return value if value is not None and value != float("inf") else float("nan")


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collapsed_top(path: Path, top: int = 15, prefixes: tuple[str, ...] = ("service/", "worker/", "models/")) -> dict:
    """Summarise a py-spy ``--format raw`` recording: share of samples per frame, self and inclusive.

    ``inclusive`` only lists the project's own frames (``prefixes``), which answers "where does a
    request or a task spend its time"; ``self`` lists any frame, which shows the leaf costs (SQL
    driver, JSON, TensorFlow kernels).
    """
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + n
        for frame in dict.fromkeys(frames):  # each frame once per sample, even when recursive
            if any(p in frame for p in prefixes):
                incl_counts[frame] = incl_counts.get(frame, 0) + n

    def share(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [(frame, n / total) for frame, n in ranked] if total else []

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl_counts)}
