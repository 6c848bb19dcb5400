"""PNG thumbnails from the 784-byte bitmaps: input, reconstruction, both stacked, difference map.

A stroke submission's input bitmap is not stored: :func:`input_of` rasterizes its drawing again
(models.raster, the worker's own rendering, so the pixels are the ones the model saw).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from models.raster import SIDE

NBYTES = SIDE * SIDE
MIN_SCALE, MAX_SCALE = 1, 16
# Gap between the drawing and its reconstruction in a stacked pair, in 28x28 pixels.
PAIR_GAP = 1
KINDS = ("input", "reconstruction", "pair", "diff")
# The lower half of a pair whose reconstruction is not kept.
NOT_KEPT_GREY = 225


class BitmapError(ValueError):
    """Stored bytes that are not a 28x28 uint8 bitmap."""


def bitmap_array(raw: bytes | memoryview | None, what: str = "bitmap") -> np.ndarray:
    """The (28, 28) uint8 array of a stored bitmap (ink = 255, as in Quick Draw's numpy_bitmap)."""
    if raw is None:
        raise BitmapError(f"{what} is missing")
    data = bytes(raw)
    if len(data) != NBYTES:
        raise BitmapError(f"{what} has {len(data)} bytes, expected {NBYTES}")
    return np.frombuffer(data, dtype=np.uint8).reshape(SIDE, SIDE)


def input_of(input_raw: bytes | memoryview | None, drawing: list | None) -> bytes | None:
    """The input bitmap: the stored one (image submissions), else the drawing rasterized; None without either."""
    if input_raw is not None:
        return bytes(input_raw)
    if not drawing:
        return None
    from models.raster import rasterize

    try:
        return rasterize(drawing).astype(np.uint8).tobytes()
    except (ValueError, TypeError, IndexError):
        return None


def check_scale(scale: int) -> int:
    """Validate an integer upscaling factor."""
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be between {MIN_SCALE} and {MAX_SCALE}")
    return scale


def _paper(pixels: np.ndarray) -> np.ndarray:
    """Dark ink on white paper, which reads better on the page than white on black."""
    return 255 - pixels


def encode_png(pixels: np.ndarray, scale: int = 4) -> bytes:
    """PNG bytes of a grey (H, W) or RGB (H, W, 3) uint8 array, enlarged by an integer factor (nearest)."""
    check_scale(scale)
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def bitmap_png(raw: bytes | None, scale: int = 4, what: str = "bitmap") -> bytes:
    """One bitmap as a PNG."""
    return encode_png(_paper(bitmap_array(raw, what)), scale)


def pair_png(input_raw: bytes, recon_raw: bytes | None, scale: int = 4) -> bytes:
    """The drawing above its reconstruction in one PNG (one request per gallery item).

    Without a reconstruction (not kept, or not computed yet) the lower half is a plain grey square.
    """
    top = _paper(bitmap_array(input_raw, "input bitmap"))
    if recon_raw is None:
        bottom = np.full((SIDE, SIDE), NOT_KEPT_GREY, dtype=np.uint8)
    else:
        bottom = _paper(bitmap_array(recon_raw, "reconstruction"))
    gap = np.full((PAIR_GAP, SIDE), 200, dtype=np.uint8)
    return encode_png(np.vstack([top, gap, bottom]), scale)


def difference_rgb(input_raw: bytes, recon_raw: bytes) -> np.ndarray:
    """RGB difference map: red where ink was drawn but not reconstructed, blue for the reverse."""
    a = bitmap_array(input_raw, "input bitmap").astype(np.int16)
    b = bitmap_array(recon_raw, "reconstruction").astype(np.int16)
    missed = np.clip(a - b, 0, 255).astype(np.uint8)
    invented = np.clip(b - a, 0, 255).astype(np.uint8)
    rgb = np.full((SIDE, SIDE, 3), 255, dtype=np.uint8)
    rgb[..., 0] -= invented
    rgb[..., 1] -= np.maximum(missed, invented)
    rgb[..., 2] -= missed
    return rgb


def difference_png(input_raw: bytes, recon_raw: bytes, scale: int = 4) -> bytes:
    """The difference map as a PNG."""
    return encode_png(difference_rgb(input_raw, recon_raw), scale)


def render(kind: str, input_raw: bytes | None, recon_raw: bytes | None, scale: int) -> bytes:
    """PNG of one image kind ('input', 'reconstruction', 'pair', 'diff'); BitmapError if data is missing."""
    if kind == "input":
        return bitmap_png(input_raw, scale, "input bitmap")
    if kind == "reconstruction":
        return bitmap_png(recon_raw, scale, "reconstruction")
    if kind == "pair":
        return pair_png(input_raw, recon_raw, scale)
    if kind == "diff":
        return difference_png(input_raw, recon_raw, scale)
    raise ValueError(f"unknown image kind {kind!r}; expected one of {', '.join(KINDS)}")


def etag(kind: str, scale: int, *parts: bytes | None) -> str:
    """Strong validator for a rendered image: the stored bytes fully determine the PNG."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{kind}:{scale}:".encode())
    for part in parts:
        h.update(b"-" if part is None else bytes(part))
    return h.hexdigest()
