"""Browser-test support: seeding a live stack through its API, database reads, login and screenshots.

Screenshots of every main page go to the screenshot folder (``$SKETCHWATCH_SCREENSHOT_DIR``, else a
pytest temporary folder), never into the repository: ``<name>.png`` (full page) and
``<name>.viewport.png`` (what the window shows). ``python -m tests.browser.refresh_screenshots`` turns
the viewport ones into the README's pictures in ``docs/screenshots/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
VIEWPORT = {"width": 1200, "height": 820}
EVIL_META = {"note": "<script>window.__pwned = 1</script>", "caption": "<img src=x onerror=\"window.__pwned=2\">"}
# Client names come from API key names; an admin could name a key like this one.
EVIL_CLIENT = "<b onmouseover=alert(1)>partner</b>"
CATS, OTHERS = 25, 75
SCORE_TIMEOUT_S = 240


def _ndjson(path: Path, limit: int, rng: np.random.Generator) -> list[dict]:
    lines = path.read_text().splitlines()
    picks = sorted(rng.choice(len(lines), size=min(limit, len(lines)), replace=False))
    return [json.loads(lines[i]) for i in picks]


def _item(obj: dict) -> dict:
    return {
        "drawing": obj["drawing"],
        "format": obj.get("format", "simplified"),
        "client_ref": str(obj["key_id"]),
        "metadata": {"word": obj.get("word"), "countrycode": obj.get("countrycode")},
    }


def seed(stack, shared: Path) -> list[int]:
    """Submit real Quick Draw drawings (cats and other things) through the API; returns their ids.

    One more comes from a second API key with a hostile name and hostile metadata.
    """
    from service.core.schema import ApiKey
    from service.core.security import hash_api_key, new_api_key

    rng = np.random.default_rng(0)
    items = [_item(o) for o in _ndjson(shared / "cat.ndjson", CATS, rng)]
    items += [_item(o) for o in _ndjson(shared / "others.ndjson", OTHERS, rng)]
    resp = stack.submit(items, timeout=60)
    assert resp.status_code == 202 and resp.json()["rejected"] == 0, resp.text
    ids = [entry["id"] for entry in resp.json()["items"]]
    evil_key = new_api_key()
    with stack.session() as s:
        s.add(ApiKey(name=EVIL_CLIENT, prefix=evil_key[:12], key_hash=hash_api_key(evil_key)))
    evil = dict(items[0], client_ref="evil", metadata=EVIL_META)
    resp = stack.submit(evil, api_key=evil_key)
    assert resp.status_code == 202, resp.text
    return ids + [resp.json()["id"]]


def scalar(stack, sql: str, **params):
    """First column of the first row of a read query on the stack's database."""
    from sqlalchemy import text

    with stack.session() as s:
        return s.execute(text(sql), params).scalar()


def column(stack, sql: str, **params) -> list:
    """First column of every row of a read query on the stack's database."""
    from sqlalchemy import text

    with stack.session() as s:
        return list(s.execute(text(sql), params).scalars())


def api_status(stack, path: str, **headers) -> int:
    """Status code of a GET on the live server (no cookies)."""
    return requests.get(stack.url + path, headers=headers, timeout=30).status_code


def log_in(page, stack, role: str = "admin") -> None:
    """Log in through the login form as the stack's admin or reviewer."""
    username, password = stack.admin if role == "admin" else stack.reviewer
    page.goto("/login")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', password)
    page.click('[data-testid="login-submit"]')
    page.wait_for_url(lambda url: "/login" not in url)


def save_screenshots(page, name: str, out_dir: Path) -> None:
    """``<name>.png`` (full page) and ``<name>.viewport.png`` (the window) of ``page`` into ``out_dir``."""
    page.screenshot(path=str(out_dir / f"{name}.png"), full_page=True)
    page.screenshot(path=str(out_dir / f"{name}.viewport.png"), full_page=False)
