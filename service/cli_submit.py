"""``sketchwatch submit`` and ``sketchwatch demo``: bulk submission to a running SketchWatch over HTTP."""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import click
import numpy as np
import orjson

from service.client import RETRY_STATUSES, RetryPolicy, SubmitClient, post_with_retries

DEFAULT_URL = "http://127.0.0.1:8000"
ENV_API_KEY = "SKETCHWATCH_API_KEY"
ENV_SHARED_DIR = "SKETCHWATCH_SHARED_DIR"
QUICKDRAW_SUBDIR = Path("data") / "quickdraw"
REQUEST_TIMEOUT_S = 60
SHOWN_PROBLEMS = 20
# Four attempts, 0.5 s, 1 s and 2 s apart (or what Retry-After asks, at most 10 s).
RETRY_POLICY = RetryPolicy(max_attempts=4, first_delay_s=0.5, backoff=2.0, max_delay_s=10.0)


class FatalError(click.ClickException):
    """A problem that makes further requests pointless (bad key, server unreachable)."""


@dataclass
class Source:
    """Where one submitted item came from, for error messages."""

    path: str
    location: str | None

    def __str__(self) -> str:
        return f"{self.path}: {self.location}" if self.location else self.path


@dataclass
class Summary:
    """Counts of one run, and the first problems for the report."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    file_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def problem(self, text: str) -> None:
        """Remember a rejection or failure (only the first few are printed)."""
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        """True when everything was stored."""
        return not (self.rejected or self.failed or self.file_errors)


class Submitter:
    """Posts JSON batches and images from a thread pool through one SubmitClient (a session per thread)."""

    def __init__(self, url: str, api_key: str, concurrency: int, progress) -> None:
        self.url = url
        self.client = SubmitClient(url, api_key, timeout_s=REQUEST_TIMEOUT_S)
        self.summary = Summary()
        self.progress = progress
        self.fatal: FatalError | None = None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="submit")
        self._pending: set[Future] = set()
        # Bounded in-flight work: files are streamed, never loaded whole.
        self._max_pending = 2 * concurrency

    def submit_batch(self, items: list[dict], sources: list[Source]) -> None:
        """Queue one JSON batch for sending."""
        self._schedule(self._send_batch, items, sources)

    def submit_image(self, data: bytes, filename: str, source: Source) -> None:
        """Queue one PNG/JPEG upload for sending."""
        self._schedule(self._send_image, data, filename, source)

    def _schedule(self, fn, *args) -> None:
        """Hand one send to the pool, first waiting while too many are in flight."""
        if self.fatal:
            raise self.fatal
        while len(self._pending) >= self._max_pending:
            done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()
            if self.fatal:
                raise self.fatal
        self._pending.add(self._pool.submit(fn, *args))

    def close(self) -> None:
        """Wait for every request, then stop the pool."""
        try:
            for fut in list(self._pending):
                fut.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.client.close()
        if self.fatal:
            raise self.fatal

    def _post(self, retry_read_timeout: bool, **request):
        """POST with retries on 429/5xx (honouring Retry-After) and on connection failures.

        Returns the final Answer, or a string saying why there is none.
        """

        def settled(answer) -> bool:
            if answer.status == 0:
                # A read timeout may mean the server stored the items: only retry when that is idempotent.
                return answer.timed_out and not retry_read_timeout
            return answer.status not in RETRY_STATUSES

        answer = post_with_retries(self.client, RETRY_POLICY, settled, cancelled=lambda: self.fatal is not None, **request)
        if answer is None:
            return "cancelled"
        if answer.status == 0:
            if answer.unreachable:
                self.fatal = FatalError(f"cannot reach SketchWatch at {self.url}: {answer.error}")
            return f"no answer after {answer.attempt} attempt(s): {type(answer.error).__name__}"
        if answer.status in (401, 403):
            self.fatal = FatalError(f"API key rejected by {self.url} ({answer.status}): {answer.message()}")
            return "API key rejected"
        return answer

    def _send_batch(self, items: list[dict], sources: list[Source]) -> None:
        """Send one JSON batch (re-sendable after a timeout when every item has a client_ref) and record it."""
        idempotent = all(item.get("client_ref") for item in items)
        answer = self._post(idempotent, data=orjson.dumps(items), content_type="application/json")
        self._record(answer, sources)

    def _send_image(self, data: bytes, filename: str, source: Source) -> None:
        """Upload one image and record the answer."""
        mimetype = "image/jpeg" if filename.lower().endswith((".jpg", ".jpeg")) else "image/png"
        answer = self._post(False, files={"image": (filename, data, mimetype)})
        self._record(answer, [source], single=True)

    def _record(self, answer, sources: list[Source], single: bool = False) -> None:
        """Count one request's outcome in the summary (an Answer, or the reason there was none)."""
        s = self.summary
        with s.lock:
            if isinstance(answer, str):
                s.failed += len(sources)
                if not self.fatal:
                    s.problem(f"{sources[0]}{' and following' if len(sources) > 1 else ''}: request failed: {answer}")
            else:
                body = answer.json()
                if single and answer.status in (200, 202):
                    s.accepted += 1
                    s.duplicates += bool(body.get("duplicate"))
                elif isinstance(body.get("items"), list):
                    for item in body["items"]:
                        self._record_item(item, sources)
                else:
                    # The whole request was refused (too large, too many items, server error...).
                    counter = "rejected" if 400 <= answer.status < 500 else "failed"
                    setattr(s, counter, getattr(s, counter) + len(sources))
                    s.problem(f"{sources[0]}{' and following' if len(sources) > 1 else ''}: "
                              f"HTTP {answer.status}: {answer.message()}")
        self.progress.update(len(sources))

    def _record_item(self, item: dict, sources: list[Source]) -> None:
        """Count one item of a batch answer: accepted (maybe a duplicate) or rejected with its field."""
        s = self.summary
        if "error" in item:
            s.rejected += 1
            err = item["error"] or {}
            where = sources[item["index"]] if 0 <= item.get("index", -1) < len(sources) else "?"
            s.problem(f"{where}: rejected: {err.get('field')}: {err.get('message')}")
        else:
            s.accepted += 1
            s.duplicates += bool(item.get("duplicate"))


# --------------------------------------------------------------------------- reading files


def drawing_item(drawing, source_name: str) -> dict:
    """A models.formats.Drawing as an API item (strokes are already in the simplified 0..255 box)."""
    strokes = [np.clip(np.rint(np.asarray(s)[:2]), 0, 255).astype(np.int64).tolist() for s in drawing.strokes]
    meta = {k: getattr(drawing, k) for k in ("word", "countrycode", "recognized", "timestamp")}
    meta = {k: v for k, v in meta.items() if v is not None}
    meta["source"] = source_name
    if drawing.fmt != "simplified":
        meta["original_format"] = drawing.fmt
    item: dict[str, Any] = {"drawing": strokes, "format": "simplified", "metadata": meta}
    if drawing.key_id:
        item["client_ref"] = str(drawing.key_id)
    return item


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode a (28, 28) uint8 bitmap as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def iter_records(path: Path, summary: Summary) -> Iterator[tuple[Any, Source]]:
    """Stream (record, source) from any supported file; format errors are recorded against the file."""
    from models.formats import NDJSON_SUFFIXES, FormatError, read_any

    kwargs = {"errors": "collect"} if path.suffix.lower() in NDJSON_SUFFIXES else {}
    try:
        for record in read_any(path, **kwargs):
            if isinstance(record, FormatError):
                summary.file_errors.append(str(record))
                continue
            yield record, Source(str(path), getattr(record, "location", None))
    except FormatError as exc:
        summary.file_errors.append(str(exc))
    except OSError as exc:
        summary.file_errors.append(f"{path}: cannot read: {exc.strerror or exc}")


def submit_files(submitter: Submitter, paths: Iterable[Path], batch_size: int) -> None:
    """Send every record of every file: strokes in JSON batches, bitmaps and images as PNG uploads."""
    from models.formats import IMAGE_SUFFIXES, Bitmap, Drawing

    for path in paths:
        batch: list[dict] = []
        sources: list[Source] = []
        for record, source in iter_records(path, submitter.summary):
            if isinstance(record, Drawing):
                batch.append(drawing_item(record, path.name))
                sources.append(source)
                if len(batch) >= batch_size:
                    submitter.submit_batch(batch, sources)
                    batch, sources = [], []
            elif isinstance(record, Bitmap):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    # The file decoded fine; send the original so the server sees the full resolution.
                    data = path.read_bytes()
                    submitter.submit_image(data, path.name, source)
                else:
                    submitter.submit_image(png_bytes(record.pixels), f"{path.stem}-{record.index}.png", source)
        if batch:
            submitter.submit_batch(batch, sources)


# --------------------------------------------------------------------------- commands


def _api_options(fn):
    fn = click.option(
        "--api-key",
        envvar=ENV_API_KEY,
        show_envvar=True,
        help="API key (default: $SKETCHWATCH_API_KEY).",
    )(fn)
    fn = click.option("--url", default=DEFAULT_URL, show_default=True, help="Base URL of the SketchWatch server.")(fn)
    return fn


def _require_key(api_key: str | None) -> str:
    if not api_key:
        raise click.UsageError(f"no API key: pass --api-key or set {ENV_API_KEY}")
    return api_key


def _progress(total: int | None = None):
    from tqdm import tqdm

    return tqdm(total=total, unit="sketch", desc="submitting", disable=None, leave=False)


def _report(summary: Summary) -> None:
    new = summary.accepted - summary.duplicates
    click.echo(
        f"accepted {summary.accepted} ({new} new, {summary.duplicates} duplicates), "
        f"rejected {summary.rejected}, failed {summary.failed}"
    )
    for text in summary.file_errors[:SHOWN_PROBLEMS]:
        click.echo(f"error: {text}", err=True)
    for text in summary.problems:
        click.echo(f"error: {text}", err=True)
    hidden = len(summary.file_errors) - SHOWN_PROBLEMS
    if hidden > 0:
        click.echo(f"... and {hidden} more file errors", err=True)


def _run(url: str, api_key: str, concurrency: int, work, total: int | None = None) -> Summary:
    with _progress(total) as bar:
        submitter = Submitter(url, api_key, concurrency, bar)
        try:
            work(submitter)
        finally:
            submitter.close()
    return submitter.summary


@click.command("submit")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_api_options
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel requests.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 1000), help="Sketches per JSON request.")
def submit(files: tuple[Path, ...], url: str, api_key: str | None, concurrency: int, batch_size: int) -> None:
    """Submit FILES (.ndjson/.jsonl, .bin, .npy, .png/.jpg) to a SketchWatch server."""
    api_key = _require_key(api_key)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise click.BadParameter(f"no such file: {', '.join(missing)}", param_hint="FILES")
    summary = _run(url, api_key, concurrency, lambda s: submit_files(s, files, batch_size))
    _report(summary)
    if not summary.ok:
        raise SystemExit(1)


def find_shared_quickdraw(cwd: Path | None = None) -> Path | None:
    """The Quick Draw sample folder: $SKETCHWATCH_SHARED_DIR (or its data/quickdraw), else ../shared/data/quickdraw."""
    candidates = []
    env = os.environ.get(ENV_SHARED_DIR)
    if env:
        candidates += [Path(env) / QUICKDRAW_SUBDIR, Path(env)]
    cwd = cwd or Path.cwd()
    candidates += [cwd.parent / "shared" / QUICKDRAW_SUBDIR, cwd / "shared" / QUICKDRAW_SUBDIR]
    for path in candidates:
        if (path / "cat.ndjson").is_file():
            return path
    return None


def sample_items(folder: Path, count: int) -> list[dict]:
    """About two thirds cats and one third other categories (one drawing per category), cats filling any gap."""
    from models.formats import read_ndjson

    cats = list(islice(read_ndjson(folder / "cat.ndjson", errors="skip"), count))
    wanted_others = count - min(len(cats), max(1, round(count * 2 / 3)))
    others: list = []
    seen: set[str | None] = set()
    if wanted_others > 0 and (folder / "others.ndjson").is_file():
        for drawing in read_ndjson(folder / "others.ndjson", errors="skip"):
            if len(others) >= wanted_others:
                break
            if drawing.word not in seen:
                seen.add(drawing.word)
                others.append(drawing)
    cats = cats[: count - len(others)]
    return [drawing_item(d, "cat.ndjson") for d in cats] + [drawing_item(d, "others.ndjson") for d in others]


@click.command("demo")
@_api_options
@click.option("--count", default=30, show_default=True, type=click.IntRange(1, 1000), help="How many sketches.")
def demo(url: str, api_key: str | None, count: int) -> None:
    """Submit sample sketches (Quick Draw samples if present, else built-in drawings) and print the dashboard URL."""
    api_key = _require_key(api_key)
    folder = find_shared_quickdraw()
    if folder is not None:
        items = sample_items(folder, count)
        click.echo(f"submitting {len(items)} Quick Draw sketches from {folder}")
    else:
        from service.demo_sketches import demo_items

        items = demo_items()[:count]
        click.echo(f"no Quick Draw samples found (set {ENV_SHARED_DIR}); submitting {len(items)} built-in sketches")
    sources = [Source("demo", f"item {i}") for i in range(len(items))]
    summary = _run(url, api_key, 1, lambda s: s.submit_batch(items, sources), total=len(items))
    _report(summary)
    click.echo(f"Dashboard: {url.rstrip('/')}/")
    if not summary.ok:
        raise SystemExit(1)
