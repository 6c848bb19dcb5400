"""The review dashboard in a real browser: logins, histogram, threshold preview and apply, reviews,
escaping, and a drawing scored end to end by the Celery worker.

The tests share one live stack and run in file order (the threshold test changes what is flagged).
"""

from __future__ import annotations

import math
import re

from playwright.sync_api import expect

from service.core.schema import Sketch

from browser_support import EVIL_CLIENT, EVIL_META, api_status, column, log_in, scalar


def _int(text: str) -> int:
    return int(text.replace(",", "").strip())


def test_anonymous_visitors_are_turned_away(page, live, screenshot):
    page.goto("/threshold")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fthreshold|/login\?next=/threshold"))
    expect(page.locator('[data-testid="login-submit"]')).to_be_visible()
    screenshot(page, "login")
    assert api_status(live, "/api/v1/stats/histogram") == 401
    page.fill('input[name="username"]', live.reviewer[0])
    page.fill('input[name="password"]', "not-her-password")
    page.click('[data-testid="login-submit"]')
    expect(page.locator('[data-testid="login-error"]')).to_be_visible()


def test_overview_shows_histogram_and_threshold_line(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/")
    histogram = page.locator('[data-testid="histogram"]')
    expect(histogram).to_be_visible()
    line = page.locator('[data-testid="threshold-line"]')
    expect(line).to_be_visible()
    threshold = float(line.get_attribute("data-value"))
    expect(page.locator('[data-testid="threshold-label"]')).to_contain_text("threshold")
    scored = scalar(live, "SELECT count(*) FROM sketches WHERE status = 'scored'")
    flagged = scalar(live, "SELECT count(*) FROM sketches WHERE flagged = :yes", yes=True)
    assert _int(page.locator('[data-testid="count-scored"]').inner_text()) == scored
    assert _int(page.locator('[data-testid="flagged-count"]').inner_text()) == flagged
    bars = histogram.locator("rect.bar")
    assert sum(int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count())) == scored
    assert threshold > 0
    screenshot(page, "overview")
    page.locator('[data-testid="log-toggle"]').check()
    expect(page).to_have_url(re.compile(r"log=1"))
    expect(page.locator('[data-testid="histogram"]')).to_have_attribute("aria-label", re.compile("log counts"))


def test_threshold_preview_and_apply_change_flags_and_gallery(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/threshold")
    scores = sorted(column(live, "SELECT score FROM sketches WHERE score IS NOT NULL"))
    new_t = round(scores[len(scores) // 3], 6)
    expected = sum(s > new_t for s in scores)
    before = _int(page.locator('[data-testid="preview-count"]').inner_text())
    assert before != expected
    line = page.locator('[data-testid="threshold-line"]')
    x_before = float(line.get_attribute("x"))
    old_t = float(page.locator('[data-testid="current-threshold"]').inner_text())

    # Typed as log-odds, the threshold box follows (issue 15); then the plain value, which the log-odds follow.
    page.locator('[data-testid="threshold-logit-input"]').fill("0")
    expect(page.locator('[data-testid="threshold-input"]')).to_have_value("0.5")
    page.locator('[data-testid="threshold-input"]').fill(str(new_t))
    expect(page.locator('[data-testid="preview-count"]')).to_have_text(f"{expected:,}")
    expect(page.locator('[data-testid="threshold-logit-input"]')).to_have_value(f"{math.log(new_t / (1 - new_t)):.4f}")
    x_after = float(line.get_attribute("x"))
    # The line follows the typed value: left for a lower threshold, right for a higher one.
    assert (x_after < x_before) if new_t < old_t else (x_after > x_before)
    expect(page.locator('[data-testid="preview-position"]')).to_contain_text("held-out cats")
    screenshot(page, "threshold")

    page.locator('[data-testid="threshold-reason"]').fill("browser test: flag more")
    page.locator('[data-testid="threshold-apply"]').click()
    # Applying asks first (issue 13): the confirmation names how many sketches change flag.
    expect(page.locator('[data-testid="threshold-confirm"]')).to_be_visible()
    page.locator('[data-testid="threshold-confirm-apply"]').click()
    expect(page.locator(".flash-success")).to_contain_text(f"{expected:,} sketches are now flagged")
    expect(page.locator('[data-testid="current-threshold"]')).to_have_text(f"{new_t:.6g}")
    expect(page.locator('[data-testid="threshold-history"]')).to_contain_text("browser test: flag more")

    page.goto("/")
    expect(page.locator('[data-testid="flagged-count"]')).to_have_text(f"{expected:,}")
    page.goto("/flagged?per_page=200")
    expect(page.locator('[data-testid="gallery-total"]')).to_have_text(f"{expected:,}")
    expect(page.locator('[data-testid="flagged-item"]')).to_have_count(expected)


def test_review_persists_after_reload(page, live, screenshot):
    log_in(page, live, "reviewer")
    page.goto("/flagged?state=unreviewed&sort=score")
    first = page.locator('[data-testid="flagged-item"]').first
    sketch_id = first.get_attribute("data-id")
    first.locator('[data-testid="review-confirm"]').click()
    expect(first.locator('[data-testid="verdict"]')).to_have_text("anomaly")

    # Keyboard queue: the clicked card is current; j moves to the next one, c marks it a cat.
    page.keyboard.press("j")
    second = page.locator('[data-testid="flagged-item"]').nth(1)
    second_id = second.get_attribute("data-id")
    page.keyboard.press("c")
    expect(second.locator('[data-testid="verdict"]')).to_have_text("cat")
    screenshot(page, "flagged")

    page.reload()
    page.goto("/flagged?state=anomaly")
    expect(page.locator(f'[data-testid="flagged-item"][data-id="{sketch_id}"] [data-testid="verdict"]')).to_have_text("anomaly")
    page.goto(f"/sketches/{second_id}")
    expect(page.locator('[data-testid="review-history"]')).to_contain_text(live.reviewer[0])
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("cat")
    # Change of mind: the verdict is changeable and the history keeps both.
    page.locator('[data-testid="review-confirm"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("anomaly")
    expect(page.locator('[data-testid="review-history"] tbody tr')).to_have_count(2)
    expect(page.locator('[data-testid="image-diff"]')).to_be_visible()
    screenshot(page, "detail")
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(second_id)) == "anomaly"


def test_metadata_is_shown_escaped_and_never_runs(page, live):
    log_in(page, live, "reviewer")
    evil_id = scalar(live, "SELECT id FROM sketches WHERE client_ref = 'evil'")
    page.goto(f"/sketches/{evil_id}")
    meta = page.locator('[data-testid="metadata"]')
    expect(meta).to_contain_text(EVIL_META["note"])
    expect(meta).to_contain_text(EVIL_META["caption"])
    expect(page.locator('[data-testid="detail-client"]')).to_have_text(EVIL_CLIENT)
    assert page.evaluate("window.__pwned") is None
    assert page.locator('[data-testid="metadata"] script, [data-testid="metadata"] img').count() == 0


def test_reviewer_cannot_apply_a_threshold(page, live):
    log_in(page, live, "reviewer")
    page.goto("/threshold")
    expect(page.locator('[data-testid="apply-admin-only"]')).to_be_visible()
    expect(page.locator('[data-testid="threshold-apply"]')).to_have_count(0)
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    resp = page.request.post(live.url + "/threshold", form={"value": "0.001", "reason": "sneaky", "csrf_token": token})
    assert resp.status == 403
    assert scalar(live, "SELECT count(*) FROM threshold_changes WHERE reason = 'sneaky'") == 0
    page.goto("/admin/users")
    expect(page.locator("h1")).to_contain_text("403")


def test_admin_pages(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/admin/users")
    expect(page.locator(f'[data-testid="user-row"][data-username="{live.reviewer[0]}"]')).to_be_visible()
    screenshot(page, "admin-users")
    page.goto("/admin/keys")
    page.fill('input[name="name"]', "browser-client")
    page.click('[data-testid="key-create"]')
    key = page.locator('[data-testid="new-api-key"]').inner_text()
    assert key.startswith("sw_")
    assert api_status(live, "/api/v1/stats/histogram", Authorization=f"Bearer {key}") == 200
    screenshot(page, "admin-keys")


def _draw_cat(page) -> None:
    box = page.locator('[data-testid="draw-canvas"]').bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]

    def stroke(points):
        page.mouse.move(x0 + points[0][0] * w, y0 + points[0][1] * h)
        page.mouse.down()
        for px, py in points[1:]:
            page.mouse.move(x0 + px * w, y0 + py * h, steps=4)
        page.mouse.up()

    import math

    head = [(0.5 + 0.3 * math.cos(a / 20 * 2 * math.pi), 0.58 + 0.26 * math.sin(a / 20 * 2 * math.pi)) for a in range(21)]
    stroke(head)
    stroke([(0.24, 0.45), (0.28, 0.15), (0.42, 0.34)])
    stroke([(0.58, 0.34), (0.72, 0.15), (0.76, 0.45)])
    stroke([(0.38, 0.52), (0.40, 0.55)])
    stroke([(0.60, 0.52), (0.62, 0.55)])
    stroke([(0.45, 0.66), (0.5, 0.7), (0.55, 0.66)])
    stroke([(0.3, 0.66), (0.08, 0.62)])
    stroke([(0.7, 0.66), (0.92, 0.62)])


def test_drawing_is_scored_by_the_worker(page, live, screenshot):
    log_in(page, live, "reviewer")
    page.goto("/draw")
    expect(page.locator('[data-testid="draw-submit"]')).to_be_disabled()
    _draw_cat(page)
    page.locator('[data-testid="draw-submit"]').click()
    result = page.locator('[data-testid="draw-result"]')
    expect(result).to_have_attribute("data-state", "scored", timeout=120_000)
    score = float(page.locator('[data-testid="draw-score"]').inner_text())
    sketch_id = int(result.get_attribute("data-sketch-id"))
    with live.session() as s:
        row = s.get(Sketch, sketch_id)
        assert (row.client, row.source_format, row.status) == (f"dashboard:{live.reviewer[0]}", "raw", "scored")
        assert abs(row.score - score) < 1e-4
    recon = page.locator('[data-testid="draw-reconstruction"]')
    expect(recon).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=recon.element_handle())
    screenshot(page, "draw")
