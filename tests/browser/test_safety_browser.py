"""Safe admin actions in a real browser (issue 13): threshold bounds, one error per bad value, the
confirmation before applying a threshold, undo of bulk and single verdicts, and the confirmation before
revoking an API key or deactivating a user.

The tests share one live stack and run in file order: the reviews first (they need the default flags),
then the admin pages, then the threshold (applying one changes what is flagged). Screenshots go to the
screenshot folder of tests/browser/conftest.py (never the repository).
"""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

from browser_support import column, log_in, scalar

PER_PAGE = 48


def _int(text: str) -> int:
    return int(text.replace(",", "").strip())


def _verdicts(live, ids) -> list:
    return [scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(i)) for i in ids]


# --------------------------------------------------------------------------- undo


def test_select_all_then_its_a_cat_can_be_undone(page, live, screenshot):
    log_in(page, live, "reviewer")
    page.goto(f"/flagged?state=unreviewed&per_page={PER_PAGE}")
    items = page.locator('[data-testid="flagged-item"]')
    ids = [items.nth(i).get_attribute("data-id") for i in range(items.count())]
    assert len(ids) >= 10, "the seeded stack should flag a page of sketches"
    page.locator("[data-select-all]").check()
    page.locator('[data-testid="bulk-dismiss"]').click()
    flash = page.locator('[data-testid="undo-flash"]')
    expect(flash).to_contain_text(f"{len(ids)} sketches marked it's a cat")
    assert _verdicts(live, ids) == ["cat"] * len(ids)
    screenshot(page, "bulk-undo")

    page.locator('[data-testid="undo"]').click()
    expect(page.locator(".flash-success")).to_contain_text(f"Undone: {len(ids)} verdicts withdrawn.")
    assert _verdicts(live, ids) == [None] * len(ids)
    assert scalar(live, "SELECT count(*) FROM reviews WHERE reviewer = :r", r=live.reviewer[0]) == 0
    # Back in the unreviewed queue, and the spent Undo is gone.
    expect(page.locator('[data-testid="flagged-item"]')).to_have_count(len(ids))
    expect(page.locator('[data-testid="undo"]')).to_have_count(0)


def test_a_reviewers_last_verdict_can_be_undone_in_place_and_on_the_detail_page(page, live):
    log_in(page, live, "reviewer")
    page.goto("/flagged?state=unreviewed&sort=score")
    first = page.locator('[data-testid="flagged-item"]').first
    sketch_id = first.get_attribute("data-id")
    first.locator('[data-testid="review-confirm"]').click()
    expect(first.locator('[data-testid="verdict"]')).to_have_text("anomaly")
    assert _verdicts(live, [sketch_id]) == ["anomaly"]
    toast = page.locator('[data-testid="undo-flash"]')
    expect(toast).to_contain_text(f"Sketch {sketch_id}")
    toast.locator('[data-testid="undo"]').click()
    expect(toast).to_contain_text("Undone: 1 verdict withdrawn.")
    expect(first.locator('[data-testid="verdict"]')).to_have_text("unreviewed")
    assert _verdicts(live, [sketch_id]) == [None]

    # From the keyboard: k keeps the first card current, c marks it a cat, u takes it back.
    page.keyboard.press("k")
    page.keyboard.press("c")
    expect(first.locator('[data-testid="verdict"]')).to_have_text("cat")
    page.keyboard.press("u")
    expect(first.locator('[data-testid="verdict"]')).to_have_text("unreviewed")
    assert _verdicts(live, [sketch_id]) == [None]

    # On the detail page a verdict is a form post; the page it lands on offers the undo.
    page.goto(f"/sketches/{sketch_id}")
    page.locator('[data-testid="review-confirm"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("anomaly")
    page.locator('[data-testid="review-dismiss"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("cat")
    page.locator('[data-testid="undo"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("anomaly")  # the verdict before the last
    expect(page.locator('[data-testid="review-history"] tbody tr')).to_have_count(1)
    assert _verdicts(live, [sketch_id]) == ["anomaly"]


# --------------------------------------------------------------------------- destructive admin actions


def test_revoking_a_key_asks_first_and_cancel_keeps_it(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/admin/keys")
    page.fill('input[name="name"]', "to-be-revoked")
    page.click('[data-testid="key-create"]')
    key = page.locator('[data-testid="new-api-key"]').inner_text()
    api = {"Authorization": f"Bearer {key}"}
    assert requests.get(live.url + "/api/v1/sketches", headers=api, timeout=30).status_code == 200

    row = page.locator('[data-testid="key-row"][data-name="to-be-revoked"]')
    row.locator('[data-testid="key-revoke"]').click()
    dialog = page.locator('[data-testid="confirm-dialog"]')
    expect(dialog).to_contain_text("Revoke the API key to-be-revoked?")
    expect(dialog).to_contain_text("cannot be restored")
    screenshot(page, "confirm-revoke")
    page.locator('[data-testid="confirm-cancel"]').click()
    expect(page).to_have_url(re.compile(r"/admin/keys$"))
    assert requests.get(live.url + "/api/v1/sketches", headers=api, timeout=30).status_code == 200
    assert scalar(live, "SELECT revoked_at FROM api_keys WHERE name = 'to-be-revoked'") is None

    row.locator('[data-testid="key-revoke"]').click()
    page.locator('[data-testid="confirm-action"]').click()
    expect(page.locator(".flash-success")).to_contain_text("Key to-be-revoked revoked.")
    expect(row).to_contain_text("revoked")
    assert requests.get(live.url + "/api/v1/sketches", headers=api, timeout=30).status_code == 401


def test_deactivating_a_user_asks_first(page, live, browser):
    log_in(page, live, "admin")
    page.goto("/admin/users")
    page.fill('input[name="username"]', "temp-reviewer")
    page.fill('input[name="password"]', "temp-password-123")
    page.click('[data-testid="user-create"]')
    expect(page.locator('[data-testid="user-row"][data-username="temp-reviewer"]')).to_be_visible()

    other = browser.new_context(base_url=live.url)
    try:
        temp = other.new_page()
        temp.goto("/login")
        temp.fill('input[name="username"]', "temp-reviewer")
        temp.fill('input[name="password"]', "temp-password-123")
        temp.click('[data-testid="login-submit"]')
        temp.wait_for_url(lambda url: "/login" not in url)

        row = page.locator('[data-testid="user-row"][data-username="temp-reviewer"]')
        row.locator('[data-testid="user-toggle"]').click()
        dialog = page.locator('[data-testid="confirm-dialog"]')
        expect(dialog).to_contain_text("Deactivate temp-reviewer?")
        expect(dialog).to_contain_text("logged out at once")
        page.locator('[data-testid="confirm-cancel"]').click()
        assert scalar(live, "SELECT active FROM users WHERE username = 'temp-reviewer'") is True

        row.locator('[data-testid="user-toggle"]').click()
        page.locator('[data-testid="confirm-action"]').click()
        expect(page.locator(".flash-success")).to_contain_text("User temp-reviewer deactivated.")
        assert scalar(live, "SELECT active FROM users WHERE username = 'temp-reviewer'") is False
        temp.goto("/")
        expect(temp).to_have_url(re.compile(r"/login"))
        # Reactivating is one click: nothing is lost by it.
        row.locator('[data-testid="user-toggle"]').click()
        expect(page.locator(".flash-success")).to_contain_text("User temp-reviewer reactivated.")
    finally:
        other.close()


# --------------------------------------------------------------------------- the threshold


def test_a_bad_threshold_shows_one_error_and_keeps_what_was_typed(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/threshold")
    box = page.locator('[data-testid="threshold-input"]')
    error = page.locator('[data-testid="threshold-error"]')
    visible_errors = page.locator(".field-error:visible")
    before = page.locator('[data-testid="current-threshold"]').inner_text()
    changes = scalar(live, "SELECT count(*) FROM threshold_changes")

    # While typing: the live preview's one message (the one the form would give).
    for typed, words in (("abc", "is not a number"), ("-1", "below 0"), ("1e9", "above 1"), ("", "Enter a threshold")):
        box.fill(typed)
        expect(error).to_be_visible()
        expect(error).to_contain_text(words)
        expect(visible_errors).to_have_count(1)
        expect(box).to_have_value(typed)
    box.fill("0.5")
    expect(error).to_be_hidden()
    expect(visible_errors).to_have_count(0)

    # Submitted anyway: the page comes back with the same single message and what was typed.
    page.locator('[data-testid="threshold-reason"]').fill("too low")
    for typed, words in (("-1", "-1 is below 0, the lowest score: every sketch would be flagged"),
                         ("1e9", "1e9 is above 1, the highest score: no sketch would be flagged"),
                         ("0.5abc", "“0.5abc” is not a number")):
        box.fill(typed)
        page.locator('[data-testid="threshold-apply"]').click()
        expect(error).to_contain_text(words)
        expect(error).to_contain_text("Enter a threshold between 0 and 1.")
        expect(visible_errors).to_have_count(1)
        expect(box).to_have_value(typed)
        expect(page.locator('[data-testid="threshold-confirm"]')).to_have_count(0)
    screenshot(page, "threshold-error")
    expect(page.locator('[data-testid="current-threshold"]')).to_have_text(before)
    assert scalar(live, "SELECT count(*) FROM threshold_changes") == changes


def test_applying_a_threshold_asks_first_with_the_number_of_sketches_that_change_flag(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/threshold")
    old = page.locator('[data-testid="current-threshold"]').inner_text()
    scores = sorted(column(live, "SELECT score FROM sketches WHERE score IS NOT NULL"))
    new_t = round(scores[len(scores) // 2], 6)
    changing = scalar(
        live, "SELECT count(*) FROM sketches WHERE status = 'scored' AND flagged <> (score > :t)", t=new_t
    )
    assert changing > 0

    page.locator('[data-testid="threshold-input"]').fill(str(new_t))
    expect(page.locator('[data-testid="preview-changes"]')).to_have_text(f"{changing:,}")
    page.locator('[data-testid="threshold-reason"]').fill("browser: halfway")
    page.locator('[data-testid="threshold-apply"]').click()
    confirm = page.locator('[data-testid="threshold-confirm"]')
    expect(confirm).to_be_visible()
    expect(page.locator('[data-testid="threshold-confirm-count"]')).to_have_text(f"{changing:,}")
    expect(confirm).to_contain_text("will change flag")
    expect(page.locator('[data-testid="threshold-input"]')).to_have_value(str(new_t))
    screenshot(page, "threshold-confirm")
    # Nothing is applied before the confirmation; Cancel leaves everything as it was.
    assert scalar(live, "SELECT count(*) FROM threshold_changes WHERE reason = 'browser: halfway'") == 0
    page.locator('[data-testid="threshold-confirm-cancel"]').click()
    expect(page.locator('[data-testid="threshold-confirm"]')).to_have_count(0)
    expect(page.locator('[data-testid="current-threshold"]')).to_have_text(old)

    page.locator('[data-testid="threshold-input"]').fill(str(new_t))
    page.locator('[data-testid="threshold-reason"]').fill("browser: halfway")
    page.locator('[data-testid="threshold-apply"]').click()
    page.locator('[data-testid="threshold-confirm-apply"]').click()
    expect(page.locator(".flash-success")).to_contain_text("sketches are now flagged")
    expect(page.locator('[data-testid="current-threshold"]')).to_have_text(f"{new_t:.6g}")
    assert scalar(live, "SELECT count(*) FROM sketches WHERE status = 'scored' AND flagged <> (score > :t)", t=new_t) == 0
    assert scalar(live, "SELECT count(*) FROM threshold_changes WHERE reason = 'browser: halfway'") == 1
    expect(page.locator('[data-testid="preview-changes"]')).to_have_text("0")
    assert _int(page.locator('[data-testid="preview-count"]').inner_text()) == sum(s > new_t for s in scores)
