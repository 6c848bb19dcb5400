"""What every scoring runtime shares: drawings in, the artifact's metadata out (Keras and LiteRT alike)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from models.formulas import SCORE_DEFINITION
from models.raster import rasterize_batch

DEFAULT_BATCH = 256


class ScorerBase:
    """A scorer's common half; a runtime supplies ``meta`` and ``score_bitmaps(bitmaps, batch_size)``."""

    meta: dict[str, Any]

    def score_bitmaps(self, bitmaps_uint8: np.ndarray, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) uint8 -> (scores (N,) float32, reconstructions (N, 28, 28) uint8)."""
        raise NotImplementedError

    def score_drawings(self, drawings: Sequence[Sequence], batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Rasterize drawings (lists of (2, n) strokes in the 0..255 box) and score them, ``batch_size`` at a time.

        Beyond one batch, the next batch is rasterized in a helper thread while the runtime scores the
        current one (TensorFlow and LiteRT release the GIL while they compute), so the two costs overlap.
        """
        if len(drawings) <= batch_size:
            return self.score_bitmaps(rasterize_batch(drawings), batch_size)
        chunks = [drawings[i : i + batch_size] for i in range(0, len(drawings), batch_size)]
        scores, recons = [], []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasterize") as pool:
            pending = pool.submit(rasterize_batch, chunks[0])
            for i in range(len(chunks)):
                bitmaps = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(rasterize_batch, chunks[i + 1])
                s, r = self.score_bitmaps(bitmaps, batch_size)
                scores.append(s)
                recons.append(r)
        return np.concatenate(scores), np.concatenate(recons)

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
