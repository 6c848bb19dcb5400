"""A few sketches drawn by the project itself, for ``sketchwatch demo`` when no Quick Draw data is at hand.

Each drawing is a list of strokes ``[[x...], [y...]]`` sketched on a 256x256 grid, then fitted the way
Quick Draw's simplified files are (top-left at 0, larger side 255), so they look like real submissions.
"""

from __future__ import annotations

import math

Stroke = list[list[int]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20, start: float = 0.0, end: float = 360.0) -> Stroke:
    """An open or closed elliptical arc as one stroke (angles in degrees, clockwise on screen)."""
    xs, ys = [], []
    for i in range(n + 1):
        a = math.radians(start + (end - start) * i / n)
        xs.append(round(cx + rx * math.cos(a)))
        ys.append(round(cy + ry * math.sin(a)))
    return [xs, ys]


def _fit(strokes: list[Stroke]) -> list[Stroke]:
    """Shift to the origin and scale the larger side to 255, as in Quick Draw's simplified data."""
    xs = [x for s in strokes for x in s[0]]
    ys = [y for s in strokes for y in s[1]]
    x0, y0 = min(xs), min(ys)
    span = max(max(xs) - x0, max(ys) - y0) or 1
    k = 255.0 / span
    return [[[round((x - x0) * k) for x in s[0]], [round((y - y0) * k) for y in s[1]]] for s in strokes]


CAT_FACE: list[Stroke] = [
    _ellipse(128, 150, 95, 80, n=24),
    [[52, 62, 98], [100, 22, 78]],  # left ear
    [[158, 194, 204], [78, 22, 100]],  # right ear
    _ellipse(92, 132, 12, 9, n=8),  # left eye
    _ellipse(164, 132, 12, 9, n=8),  # right eye
    [[118, 138, 128, 118], [162, 162, 174, 162]],  # nose
    [[128, 128, 114, 102], [174, 188, 196, 190]],  # mouth, left
    [[128, 142, 154], [188, 196, 190]],  # mouth, right
    [[100, 40], [172, 160]],  # whiskers
    [[100, 38], [180, 186]],
    [[156, 216], [172, 160]],
    [[156, 218], [180, 186]],
]

SITTING_CAT: list[Stroke] = [
    _ellipse(90, 70, 45, 40, n=20),  # head
    [[58, 60, 80], [44, 6, 34]],  # ears
    [[100, 122, 124], [34, 6, 44]],
    [[74, 76], [66, 68]],  # eyes
    [[104, 106], [66, 68]],
    [[60, 40, 34, 46, 80, 150, 170, 160, 120], [104, 150, 210, 240, 246, 246, 210, 150, 106]],  # body
    [[160, 210, 236, 226, 200], [236, 232, 200, 160, 150]],  # tail
    [[70, 70], [200, 246]],  # front legs
    [[110, 110], [200, 246]],
]

HOUSE: list[Stroke] = [
    [[30, 30, 226, 226, 30], [110, 250, 250, 110, 110]],  # walls
    [[16, 128, 240, 16], [120, 14, 120, 120]],  # roof
    [[108, 108, 148, 148], [250, 180, 180, 250]],  # door
    [[50, 50, 90, 90, 50], [140, 174, 174, 140, 140]],  # window
    [[166, 166, 206, 206, 166], [140, 174, 174, 140, 140]],
    [[180, 180, 204, 204], [72, 26, 26, 94]],  # chimney
]

LINE: list[Stroke] = [[[0, 255], [128, 131]]]

CIRCLE: list[Stroke] = [_ellipse(128, 128, 120, 118, n=28)]

STAR: list[Stroke] = [
    [
        [round(128 + (120 if i % 2 == 0 else 48) * math.sin(math.radians(36 * i))) for i in range(11)],
        [round(128 - (120 if i % 2 == 0 else 48) * math.cos(math.radians(36 * i))) for i in range(11)],
    ]
]

FISH: list[Stroke] = [
    _ellipse(110, 128, 90, 50, n=24, start=-150, end=150),  # body, open at the tail
    [[32, 0, 0, 32], [104, 70, 186, 152]],  # tail
    _ellipse(170, 116, 6, 6, n=6),  # eye
]

SCRIBBLE: list[Stroke] = [
    [[10, 240, 20, 230, 30, 220, 40, 210, 60, 200], [20, 40, 70, 90, 120, 140, 170, 190, 220, 240]],
    [[120, 60, 200, 90, 180], [10, 250, 30, 200, 90]],
]

# (name, word, strokes): cats first, then things that are not cats.
DEMO: list[tuple[str, str, list[Stroke]]] = [
    ("cat-face", "cat", _fit(CAT_FACE)),
    ("sitting-cat", "cat", _fit(SITTING_CAT)),
    ("house", "house", _fit(HOUSE)),
    ("line", "line", _fit(LINE)),
    ("circle", "circle", _fit(CIRCLE)),
    ("star", "star", _fit(STAR)),
    ("fish", "fish", _fit(FISH)),
    ("scribble", "squiggle", _fit(SCRIBBLE)),
]


def demo_items() -> list[dict]:
    """The demo sketches as API submissions (client_ref ``demo:<name>`` keeps re-runs idempotent)."""
    return [
        {
            "drawing": strokes,
            "format": "simplified",
            "client_ref": f"demo:{name}",
            "metadata": {"word": word, "source": "sketchwatch demo"},
        }
        for name, word, strokes in DEMO
    ]
