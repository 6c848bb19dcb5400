"""Loading training/evaluation data as 28x28 bitmaps, and the seeded splits used for honest evaluation.

Any format :func:`models.formats.read_any` understands is accepted; stroke drawings are rendered with
:func:`models.raster.rasterize_batch` (the official numpy_bitmap rendering). Category labels come from
the ndjson ``word`` field, or for ``name.npy`` from a sibling ``name_words.txt`` (one word per row).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.formats import Bitmap, Drawing, FormatError, load_npy, read_any


@dataclass
class LabeledBitmaps:
    """Bitmaps (N, 28, 28) uint8 with optional per-row category words and the source file of each row."""

    bitmaps: np.ndarray
    words: np.ndarray  # object array of str or None
    sources: np.ndarray  # object array of file names

    def __len__(self) -> int:
        return int(self.bitmaps.shape[0])

    @property
    def has_words(self) -> bool:
        """True when every row carries a category word."""
        return len(self) > 0 and all(w is not None for w in self.words)

    def subset(self, mask_or_index: np.ndarray) -> LabeledBitmaps:
        """Rows selected by a boolean mask or an index array."""
        return LabeledBitmaps(self.bitmaps[mask_or_index], self.words[mask_or_index], self.sources[mask_or_index])


def words_file_for(path: str | Path) -> Path:
    """The optional labels file of a .npy: ``name.npy`` -> ``name_words.txt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}_words.txt")


def _npy_words(path: Path, n: int) -> list[str | None]:
    """Words from the sibling words file, or Nones when there is none."""
    wpath = words_file_for(path)
    if not wpath.is_file():
        return [None] * n
    lines = wpath.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n:
        raise FormatError(wpath, None, f"has {len(lines)} words for the {n} rows of {path.name}")
    for i, word in enumerate(lines):
        if not word.strip():
            raise FormatError(wpath, f"line {i + 1}", "empty word")
    return [w.strip() for w in lines]


def load_file(path: str | Path) -> LabeledBitmaps:
    """Load one file of any supported format as bitmaps (strokes are rasterized); FormatError on bad data."""
    from models.raster import rasterize_batch

    p = Path(path)
    if not p.is_file():
        raise FormatError(p, None, "file not found")
    if p.suffix.lower() == ".npy":
        bitmaps = np.array(load_npy(p))
        words = _npy_words(p, len(bitmaps))
    else:
        strokes: list = []
        bitmap_rows: list[np.ndarray] = []
        words = []
        for item in read_any(p):
            if isinstance(item, Drawing):
                strokes.append(item.strokes)
                words.append(item.word)
            elif isinstance(item, Bitmap):
                bitmap_rows.append(item.pixels)
                words.append(None)
        if strokes and bitmap_rows:
            raise FormatError(p, None, "mixes drawings and bitmaps")
        if strokes:
            bitmaps = rasterize_batch(strokes)
        elif bitmap_rows:
            bitmaps = np.stack(bitmap_rows).astype(np.uint8)
        else:
            bitmaps = np.zeros((0, 28, 28), dtype=np.uint8)
    if len(bitmaps) == 0:
        raise FormatError(p, None, "contains no drawings")
    return LabeledBitmaps(bitmaps, np.array(words, dtype=object), np.array([p.name] * len(bitmaps), dtype=object))


def load_files(paths: Iterable[str | Path]) -> LabeledBitmaps:
    """Load and concatenate several files (in the given order)."""
    parts = [load_file(p) for p in paths]
    if not parts:
        raise ValueError("no input files")
    return LabeledBitmaps(
        np.concatenate([p.bitmaps for p in parts]),
        np.concatenate([p.words for p in parts]),
        np.concatenate([p.sources for p in parts]),
    )


def split_holdout(n: int, fraction: float, seed: int, always_holdout: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices; the first ``always_holdout`` rows are always held out.

    The held-out set has round(n * fraction) rows (at least ``always_holdout``). Both are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout fraction must be in (0, 1)")
    if not 0 <= always_holdout <= n:
        raise ValueError(f"always_holdout must be in [0, {n}]")
    n_hold = max(round(n * fraction), always_holdout)
    rest = np.random.default_rng(seed).permutation(np.arange(always_holdout, n))
    held = np.concatenate([np.arange(always_holdout), rest[: n_hold - always_holdout]])
    train = rest[n_hold - always_holdout :]
    return np.sort(train), np.sort(held)


def split_categories(
    words: Sequence[str], holdout: float | Sequence[str], seed: int, always_holdout: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Split the distinct categories into (training, held-out), both sorted.

    ``holdout`` is a fraction (a seeded draw among the categories not already forced out) or an
    explicit list of names. ``always_holdout`` names present in ``words`` are held out in any case
    (e.g. the categories of evaluation-only files, so those are never seen in training).
    """
    categories = sorted({str(w) for w in words})
    forced = sorted(set(categories) & {str(c) for c in always_holdout})
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):
        if not 0.0 <= float(holdout) < 1.0:
            raise ValueError("category holdout fraction must be in [0, 1)")
        rest = [c for c in categories if c not in set(forced)]
        order = np.random.default_rng(seed).permutation(len(rest))
        n_hold = round(len(rest) * float(holdout))
        held = sorted(forced + [rest[i] for i in order[:n_hold]])
    else:
        held = sorted({str(h) for h in holdout})
        unknown = sorted(set(held) - set(categories))
        if unknown:
            raise ValueError(f"held-out categories not in the data: {unknown}")
        held = sorted(set(held) | set(forced))
    held_set = set(held)
    return [c for c in categories if c not in held_set], held


def fingerprint(arr: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (identifies the exact training data)."""
    a = np.ascontiguousarray(arr)
    digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()
