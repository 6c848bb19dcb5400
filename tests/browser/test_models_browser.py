"""The Models page in a real browser (issue 16): put a candidate in shadow and compare it on sketches the live
worker scored with both models, promote it with its confirmation, watch the stored sketches being re-scored
by the worker, and roll back the same way. The tests run in file order on one live stack.

A candidate (a copy of the shipped model under its own version name) is registered beside the bootstrapped
active model; the worker of the live stack loads it from its path after the promote. Screenshots go to the
screenshot folder of tests/browser/conftest.py (never the repository).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from playwright.sync_api import expect

from browser_support import log_in, scalar

CANDIDATE = "cand-browser-1"
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped"
RESCORE_TIMEOUT_MS = 180_000
SHADOW_PICKUP_S = 5
# The candidate is the shipped model under another name: a lower threshold makes the two flag differently.
SHADOW_LOWER_BY = 0.25


def _register_candidate(live) -> str:
    """Bootstrap the registry as the stack's workers see it and register the candidate (once); the active version."""
    from service.core import registry
    from service.core.settings import get_settings

    artifact = live.workdir / CANDIDATE
    if not artifact.exists():
        shutil.copytree(SHIPPED, artifact)
        meta = json.loads((artifact / "model.json").read_text())
        (artifact / "model.json").write_text(json.dumps({**meta, "version": CANDIDATE}))
    with live.session() as s:
        active = registry.ensure_bootstrapped(s, get_settings({"env": "testing", "model_dir": live.model_dir}))
        if registry.get(s, CANDIDATE) is None:
            registry.register(s, version=CANDIDATE, artifact_uri=str(artifact), parent_version=active.version,
                              created_by="browser-test", threshold=active.threshold - SHADOW_LOWER_BY,
                              metrics={"auroc": 0.96})  # fmt: skip
        return active.version


def _status(live, version: str) -> str:
    return scalar(live, "SELECT status FROM model_versions WHERE version = :v", v=version)


def _submit_drawings(live, shared: Path, n: int = 12) -> list[int]:
    """Submit ``n`` more Quick Draw drawings (half cats) through the API and wait until they are scored."""
    items = []
    for name in ("cat.ndjson", "others.ndjson"):
        with (shared / name).open() as f:
            for i, line in zip(range(n // 2), f):
                obj = json.loads(line)
                items.append({"drawing": obj["drawing"], "client_ref": f"shadowed-{name}-{i}",
                              "metadata": {"word": obj.get("word")}})
    resp = live.submit(items, timeout=60)
    assert resp.status_code == 202 and resp.json()["rejected"] == 0, resp.text
    ids = [item["id"] for item in resp.json()["items"]]
    live.wait_for(ids, {"scored"}, timeout=120)
    return ids


def test_shadow_asks_first_then_the_live_worker_scores_new_sketches_for_the_comparison(page, live, shared_data, screenshot):
    _register_candidate(live)
    log_in(page, live, "admin")
    page.goto("/models/")
    page.get_by_test_id(f"shadow-{CANDIDATE}").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("flags do not change")
    page.get_by_test_id("confirm-action").click()
    page.wait_for_url("**/models/")
    assert _status(live, CANDIDATE) == "shadow"
    # Workers re-read the registry every model_poll_s (2 s by default): sketches sent after that get both scores.
    time.sleep(SHADOW_PICKUP_S)
    ids = _submit_drawings(live, shared_data)
    shadowed = scalar(live, "SELECT count(*) FROM shadow_scores WHERE model_version = :v", v=CANDIDATE)
    assert shadowed == len(ids), shadowed
    page.goto("/models/")
    compare = page.get_by_test_id("shadow-compare")
    expect(compare.get_by_test_id("scored-by-both")).to_have_text(str(len(ids)))
    expect(compare.get_by_test_id("hist-active")).to_be_visible()
    expect(compare.get_by_test_id("hist-shadow")).to_be_visible()
    screenshot(page, "models-shadow")
    disagreeing = int(compare.get_by_test_id("disagreement-count").inner_text())
    assert disagreeing > 0
    page.get_by_test_id("disagreements-link").click()
    expect(page.locator("h1")).to_have_text("Flags that disagree")
    cards = page.get_by_test_id("disagreements").get_by_test_id("flagged-item")
    expect(cards).to_have_count(disagreeing)
    screenshot(page, "models-disagreements")
    # Reviewable like flagged ones: the card's own verdict button.
    first = int(cards.first.get_attribute("data-id"))
    cards.first.get_by_test_id("review-dismiss").click()
    expect(page.get_by_test_id("undo-flash").or_(page.locator(".flash"))).to_be_visible()
    deadline = time.monotonic() + 10
    while scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=first) != "cat" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=first) == "cat"


def test_promote_asks_first_then_every_stored_sketch_is_rescored_and_rollback_restores(page, live, screenshot):
    previous = _register_candidate(live)
    scored = scalar(live, "SELECT count(*) FROM sketches WHERE status = 'scored'")
    assert scored > 50
    log_in(page, live, "admin")
    page.goto("/models/")
    table = page.get_by_test_id("models-table")
    expect(table.locator(f'[data-testid="model-row"][data-version="{CANDIDATE}"]')).to_have_attribute("data-status", "shadow")
    expect(page.get_by_test_id("training-progress")).to_be_visible()
    screenshot(page, "models")

    # The button only opens the confirmation; Cancel leaves everything as it was.
    page.get_by_test_id(f"promote-{CANDIDATE}").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text(f"Promote {CANDIDATE}?")
    expect(page.get_by_test_id("confirm-rescore")).to_be_checked()
    screenshot(page, "models-promote-confirm")
    page.get_by_test_id("confirm-cancel").click()
    page.wait_for_url("**/models/")
    assert _status(live, CANDIDATE) in ("candidate", "shadow") and _status(live, previous) == "active"

    # Confirmed: the candidate is active, and the re-scoring of the stored sketches shows its progress.
    page.get_by_test_id(f"promote-{CANDIDATE}").click()
    page.get_by_test_id("confirm-action").click()
    page.wait_for_url("**/models/")
    expect(page.locator(".flash")).to_contain_text(f"{CANDIDATE} is now the active model")
    assert _status(live, CANDIDATE) == "active" and _status(live, previous) == "retired"
    expect(page.get_by_test_id("rescore-progress")).to_be_visible()
    # The page polls while the job runs and reloads once it ends.
    expect(page.locator('[data-testid="rescore-progress"][data-status="done"]')).to_be_visible(timeout=RESCORE_TIMEOUT_MS)
    expect(page.get_by_test_id("rescore-done")).to_have_text(f"{scored:,}")
    screenshot(page, "models-rescored")
    assert scalar(live, "SELECT count(*) FROM sketches WHERE status = 'scored' AND model_version = :v", v=CANDIDATE) == scored
    assert scalar(live, "SELECT count(*) FROM score_history WHERE replaced_by = :v", v=CANDIDATE) == scored

    # Roll back, confirmed, without re-scoring: the previous version is active again.
    page.get_by_test_id("rollback").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Roll back")
    page.get_by_test_id("confirm-rescore").uncheck()
    page.get_by_test_id("confirm-action").click()
    page.wait_for_url("**/models/")
    expect(page.locator(".flash")).to_contain_text(f"{previous} is the active model again")
    assert _status(live, previous) == "active" and _status(live, CANDIDATE) == "retired"
    expect(page.locator(f'[data-testid="model-row"][data-version="{previous}"]')).to_have_attribute("data-status", "active")
