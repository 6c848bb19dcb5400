"""Refresh the README's pictures in docs/screenshots/ from a run of the browser tests.

The browser tests never write into the repository: they save their screenshots into
``$SKETCHWATCH_SCREENSHOT_DIR`` (else a pytest temporary folder). This command runs them with that
folder set to a temporary directory and, when they pass, shrinks each viewport screenshot into a
palette PNG in docs/screenshots/. Run it from the repository root, with the test services up::

    python -m tests.browser.refresh_screenshots [extra pytest arguments]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOCS_SHOTS = REPO / "docs" / "screenshots"
VIEWPORT_SUFFIX = ".viewport.png"
# Enough colours for the charts and thumbnails; keeps each picture small in the repository.
PALETTE_COLORS = 96


def shrink(src: Path, dst: Path) -> None:
    """Save the screenshot ``src`` as an optimised palette PNG at ``dst``."""
    with Image.open(src) as img:
        small = img.convert("RGB").quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT)
    small.save(dst, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Run the browser tests into a temporary folder, then copy their viewport screenshots into docs/screenshots/."""
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="sketchwatch-screenshots-") as tmp:
        env = dict(os.environ, SKETCHWATCH_SCREENSHOT_DIR=tmp)
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", str(HERE), *args], cwd=REPO, env=env)
        if code != 0:
            print(f"browser tests failed (exit {code}); docs/screenshots/ left as it was", file=sys.stderr)
            return code
        shots = sorted(Path(tmp).glob(f"*{VIEWPORT_SUFFIX}"))
        if not shots:
            print("the browser tests took no screenshots; docs/screenshots/ left as it was", file=sys.stderr)
            return 1
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for src in shots:
            dst = DOCS_SHOTS / (src.name.removesuffix(VIEWPORT_SUFFIX) + ".png")
            shrink(src, dst)
            print(dst.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
