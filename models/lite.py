"""Scoring with LiteRT (``model.tflite``): the worker's runtime, without TensorFlow or Keras.

:class:`LiteScorer` has the interface of :class:`models.scoring.Scorer` that the worker uses (``load``,
``score_bitmaps``, ``score_drawings``, ``score_result``, ``version``, ``suggested_threshold``, ``percentiles``,
``meta``) and computes the score with the same numpy formula from the reconstruction, so only the graph's
float rounding differs from Keras; ``sketchwatch export`` measured that difference before it wrote
the file (``model.json`` ``litert.parity``).

Batches of any size run on interpreters of fixed batch sizes, powers of two up to :data:`MAX_CHUNK`,
each created on first use: a batch of 100 runs as 64 + 32 + 4. No row is padded, and no interpreter
is resized or re-allocated after its first call, whatever sizes the tasks bring.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import TFLITE_FILE, ArtifactError, read_meta, resolve_model_dir
from models.autoencoder import coerce_config, crop_output, to_model_input
from models.formulas import DEFAULT_FORMULA, SCORE_FORMULAS
from models.quiet import filtered_stderr
from models.raster import SIDE
from models.scorer_base import ScorerBase

log = logging.getLogger(__name__)

RUNTIME = "litert"
# Per-image speed barely grows past 64 rows on one thread, while each larger interpreter holds a
# bigger activation arena; 64 keeps the seven interpreters (1..64) at about 14 MB together.
MAX_CHUNK = 64


def chunk_sizes(n: int, max_chunk: int = MAX_CHUNK) -> list[int]:
    """Split ``n`` rows into interpreter batch sizes: full ``max_chunk`` chunks, then powers of two."""
    sizes = [max_chunk] * (n // max_chunk)
    rest = n % max_chunk
    bit = max_chunk >> 1
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def _log_native(line: str) -> None:
    """What LiteRT wrote on stderr, as a warning of this module's logger."""
    log.warning("LiteRT: %s", line)


def tflite_sha256(data: bytes) -> str:
    """SHA-256 of the model.tflite bytes (recorded in model.json as ``litert.sha256``)."""
    return hashlib.sha256(data).hexdigest()


def load_scorer(model_dir: str | Path | None = None, runtime: str = RUNTIME, threads: int | None = None):
    """The artifact's scorer on ``runtime``: "litert" (:class:`LiteScorer`) or "keras" (``models.scoring.Scorer``)."""
    if runtime == RUNTIME:
        return LiteScorer.load(model_dir, threads=threads)
    if runtime == "keras":
        from models.scoring import Scorer

        return Scorer.load(model_dir, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; known: 'litert', 'keras'")


class _Graph:
    """The converted graph: one interpreter per batch size, created on first use, each behind its own lock."""

    def __init__(self, content: bytes, side: int, threads: int) -> None:
        self.content = content
        self.side = side
        self.threads = threads
        self._interpreters: dict[int, tuple[Any, int, int, threading.Lock]] = {}
        self._create = threading.Lock()

    def _interpreter(self, rows: int):
        """(interpreter, input index, output index, lock) for batches of ``rows``; created on first use."""
        entry = self._interpreters.get(rows)
        if entry is not None:
            return entry
        from ai_edge_litert.interpreter import Interpreter

        with self._create:
            entry = self._interpreters.get(rows)
            if entry is None:
                with filtered_stderr(_log_native):
                    interp = Interpreter(model_content=self.content, num_threads=self.threads)
                    inp = interp.get_input_details()[0]
                    if tuple(inp["shape"][1:]) != (self.side, self.side, 1):
                        raise ArtifactError(f"model.tflite takes {tuple(inp['shape'])}, "
                                            f"not (N, {self.side}, {self.side}, 1)")
                    if int(inp["shape"][0]) != rows:
                        interp.resize_tensor_input(inp["index"], [rows, self.side, self.side, 1], strict=True)
                    interp.allocate_tensors()
                entry = (interp, inp["index"], interp.get_output_details()[0]["index"], threading.Lock())
                self._interpreters[rows] = entry
        return entry

    def run(self, x: np.ndarray) -> np.ndarray:
        """(rows, S, S, 1) float32 -> the graph's output for exactly these rows (rows is a chunk size)."""
        interp, inp, out, lock = self._interpreter(x.shape[0])
        # An interpreter holds its tensors between set and get: one call at a time (thread pools share it).
        with lock:
            interp.set_tensor(inp, x)
            interp.invoke()
            return interp.get_tensor(out)

    def sizes(self) -> list[int]:
        """Batch sizes that have an interpreter so far."""
        return sorted(self._interpreters)


class LiteScorer(ScorerBase):
    """A LiteRT model plus its metadata: scores bitmaps or stroke drawings (higher = more anomalous)."""

    runtime = RUNTIME

    def __init__(self, content: bytes, meta: dict[str, Any], model_dir: Path | None = None,
                 threads: int | None = None, max_chunk: int = MAX_CHUNK) -> None:
        self.meta = meta
        self.model_dir = model_dir
        self.formula = meta.get("score", {}).get("formula", DEFAULT_FORMULA)
        if self.formula not in SCORE_FORMULAS:
            raise ValueError(f"model.json names an unknown score formula {self.formula!r}")
        self.input_size = coerce_config(meta.get("architecture")).input_size
        if max_chunk < 1 or max_chunk & (max_chunk - 1):
            raise ValueError(f"max_chunk must be a power of two, not {max_chunk}")
        self.max_chunk = max_chunk
        self._graph = _Graph(content, self.input_size, int(threads or 1))

    @classmethod
    def load(cls, model_dir: str | Path | None = None, threads: int | None = None) -> LiteScorer:
        """Load an artifact's model.tflite (None = the shipped one), checked against model.json; 1 thread by default."""
        path = resolve_model_dir(model_dir)
        meta = read_meta(path)
        tflite = path / TFLITE_FILE
        record = meta.get("litert")
        if not tflite.is_file():
            raise ArtifactError(f"{tflite}: file not found (add it with: sketchwatch export --model {path})")
        if not isinstance(record, dict):
            raise ArtifactError(f"{tflite}: model.json has no 'litert' record for it "
                                f"(run: sketchwatch export --model {path})")
        content = tflite.read_bytes()
        if tflite_sha256(content) != record.get("sha256"):
            raise ArtifactError(f"{tflite}: does not match litert.sha256 in model.json (re-run sketchwatch export)")
        return cls(content, meta, path, threads)

    def reconstruct(self, bitmaps_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph: return (inputs, reconstructions) as (N, 28, 28) float32 in [0, 1]."""
        x = to_model_input(bitmaps_uint8, self.input_size)
        recon = np.empty((x.shape[0], SIDE, SIDE), dtype=np.float32)
        start = 0
        for rows in chunk_sizes(x.shape[0], self.max_chunk):
            recon[start : start + rows] = crop_output(self._graph.run(x[start : start + rows]), self.input_size)
            start += rows
        return crop_output(x, self.input_size), recon

    def _reconstruct(self, bitmaps_uint8: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (inputs, reconstructions); ``batch_size`` is unused (fixed interpreter sizes)."""
        return self.reconstruct(bitmaps_uint8)

    def warm_up(self) -> None:
        """Create the interpreter of every chunk size now, so no task pays for one."""
        size = 1
        while size <= self.max_chunk:
            self._graph.run(np.zeros((size, self.input_size, self.input_size, 1), dtype=np.float32))
            size <<= 1

    @property
    def interpreter_sizes(self) -> list[int]:
        """Batch sizes that have an interpreter so far (each created once, never resized)."""
        return self._graph.sizes()
