"""What every scoring runtime shares: drawings in, the artifact's metadata out (Keras and LiteRT alike)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.formulas import DEFAULT_FORMULA, SCORE_DEFINITION, score_and_logit
from models.raster import rasterize_batch

DEFAULT_BATCH = 256


@dataclass(frozen=True)
class ScoreResult:
    """One batch's scores (N,) float32, their log-odds (N,) float64 and reconstructions (N, 28, 28) uint8."""

    scores: np.ndarray
    logits: np.ndarray
    reconstructions: np.ndarray

    @classmethod
    def concatenate(cls, parts: Sequence[ScoreResult]) -> ScoreResult:
        """The parts one after the other."""
        return cls(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.reconstructions for p in parts]),
        )


def recon_to_uint8(recon: np.ndarray) -> np.ndarray:
    """Reconstructions in [0, 1] as the stored uint8 bitmaps."""
    return np.clip(np.rint(recon * 255.0), 0, 255).astype(np.uint8)


class ScorerBase:
    """A scorer's common half; a runtime supplies ``meta``, ``formula`` and ``_reconstruct(bitmaps, batch_size)``."""

    meta: dict[str, Any]
    formula: str = DEFAULT_FORMULA

    def _reconstruct(self, bitmaps_uint8: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, reconstructions) as (N, 28, 28) float32 in [0, 1]."""
        raise NotImplementedError

    def score_result(self, bitmaps_uint8: np.ndarray, batch_size: int = DEFAULT_BATCH) -> ScoreResult:
        """(N, 28, 28) uint8 -> scores, their log-odds (full resolution near 1) and reconstructions."""
        x, recon = self._reconstruct(bitmaps_uint8, batch_size)
        scores, logits = score_and_logit(self.formula, x, recon)
        return ScoreResult(scores, logits, recon_to_uint8(recon))

    def score_bitmaps(self, bitmaps_uint8: np.ndarray, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) uint8 -> (scores (N,) float32, reconstructions (N, 28, 28) uint8)."""
        result = self.score_result(bitmaps_uint8, batch_size)
        return result.scores, result.reconstructions

    def score_drawings(self, drawings: Sequence[Sequence], batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Rasterize drawings (lists of (2, n) strokes in the 0..255 box) and score them, ``batch_size`` at a time."""
        result = self.score_drawings_result(drawings, batch_size)
        return result.scores, result.reconstructions

    def score_drawings_result(self, drawings: Sequence[Sequence], batch_size: int = DEFAULT_BATCH) -> ScoreResult:
        """Like :meth:`score_drawings`, with the log-odds (a :class:`ScoreResult`).

        Beyond one batch, the next batch is rasterized in a helper thread while the runtime scores the
        current one (TensorFlow and LiteRT release the GIL while they compute), so the two costs overlap.
        """
        if len(drawings) <= batch_size:
            return self.score_result(rasterize_batch(drawings), batch_size)
        chunks = [drawings[i : i + batch_size] for i in range(0, len(drawings), batch_size)]
        parts = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasterize") as pool:
            pending = pool.submit(rasterize_batch, chunks[0])
            for i in range(len(chunks)):
                bitmaps = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(rasterize_batch, chunks[i + 1])
                parts.append(self.score_result(bitmaps, batch_size))
        return ScoreResult.concatenate(parts)

    @property
    def version(self) -> str:
        """Model version id (date + short hash of the weights)."""
        return str(self.meta["version"])

    @property
    def suggested_threshold(self) -> float:
        """Default flagging threshold (flag when score > threshold)."""
        return float(self.meta["suggested_threshold"])

    @property
    def percentiles(self) -> dict[str, float]:
        """Held-out cat score percentiles, keys "90", "95", "99", "99.5"."""
        return {str(k): float(v) for k, v in self.meta["percentiles"].items()}

    @property
    def score_definition(self) -> str:
        """Human-readable definition of the score."""
        return str(self.meta.get("score", {}).get("definition", SCORE_DEFINITION))
