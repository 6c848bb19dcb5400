"""Browser-test fixtures: Debian's headless Chromium driving a live stack.

The stack is the shared ``stack`` fixture (tests/stack_fixtures.py): a granian web server and a
Celery worker on PostgreSQL + Redis, scoring with ``$SKETCHWATCH_MODEL_DIR`` or the shipped model.
It is seeded once per module with real Quick Draw drawings submitted through the API.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from browser_support import CHROMIUM, LAUNCH_ARGS, SCORE_TIMEOUT_S, VIEWPORT, save_screenshots, seed

# Every test logs in through the form; the default login limit is meant for people, not a suite.
STACK_ENV = {"SKETCHWATCH_RATELIMIT_LOGIN": "1000 per minute"}


def pytest_collection_modifyitems(config, items):
    """Mark every test in this folder as a browser test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where screenshots go: $SKETCHWATCH_SCREENSHOT_DIR, else a pytest temporary folder (never the repository)."""
    configured = os.environ.get("SKETCHWATCH_SCREENSHOT_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshot(screenshot_dir):
    """``screenshot(page, name)``: save the page's screenshots into the screenshot folder."""
    return functools.partial(save_screenshots, out_dir=screenshot_dir)


@pytest.fixture(scope="module")
def live(stack, shared_data):
    """The running stack, with every seeded sketch scored by the worker."""
    s = stack(env=STACK_ENV)
    ids = seed(s, shared_data)
    s.wait_for(ids, {"scored"}, timeout=SCORE_TIMEOUT_S)
    return s


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium package"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser, live):
    """A fresh browser context (own cookies) pointed at the live stack."""
    ctx = browser.new_context(base_url=live.url, viewport=VIEWPORT)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    """A page that fails the test on any JavaScript error or dialog."""
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    assert not errors, f"JavaScript errors or dialogs: {errors}"
