"""The reviewer's workflow in a real browser (issue 18): every sketch browsable and searchable, the audit sample
and its estimates, explanations on the cards, previous/next and auto-advance, progress, an expired session that
keeps the selection, styled error pages, times in UTC, the CSV in the chosen order, and every page at 390 px.

The tests share one live stack (PostgreSQL, Redis, a Celery worker scoring real Quick Draw drawings) and run in
file order. Screenshots go to the screenshot folder of tests/browser/conftest.py (never the repository).
"""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from browser_support import column, log_in, scalar

PHONE = {"width": 390, "height": 844}

# Every element sticking out past the right edge of the window, unless a scroll box of its own holds it.
OVERFLOW_JS = """
() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') return true;
    }
    return false;
  };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right > width + 0.5 && !scrolls(el)) {
      out.push(el.tagName.toLowerCase() + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : '')
               + ' right=' + Math.round(r.right));
    }
  }
  // Text that runs out of its box (a long unbroken word) does not show in the box's own size.
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(n);
    const r = range.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 0.5 && !scrolls(n.parentElement)) {
      out.push('text "' + n.textContent.trim().slice(0, 30) + '" right=' + Math.round(r.right));
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, width: width, offenders: out.slice(0, 8)};
}
"""


def _int(text: str) -> int:
    return int(text.replace(",", "").strip())


@pytest.fixture
def phone(browser, live):
    """A page in a 390 px wide window (a phone) that fails the test on any JavaScript error or dialog."""
    ctx = browser.new_context(base_url=live.url, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    ctx.set_default_timeout(15_000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors or dialogs: {errors}"


def assert_fits(page, what: str) -> None:
    """No horizontal overflow: the page is no wider than the window and nothing sticks out of it."""
    page.wait_for_load_state("load")
    box = page.evaluate(OVERFLOW_JS)
    assert box["scrollWidth"] <= box["width"], (what, box)
    assert not box["offenders"], (what, box)


def draw_audit(page, per_side: int = 10) -> None:
    """Start the audit (or draw more) from the audit page."""
    page.goto("/audit")
    page.locator('[data-testid="audit-size"]').fill(str(per_side))
    page.locator('[data-testid="audit-draw"]').click()
    expect(page.locator('[data-testid="audit-sample"]')).to_be_visible()


# --------------------------------------------------------------------------- 390 px


def test_every_page_fits_a_phone(phone, browser, live, screenshot):
    page = phone
    log_in(page, live, "admin")
    draw_audit(page, 3)
    page.goto("/admin/keys")
    page.fill('input[name="name"]', "a-client-with-a-rather-long-name-for-a-phone-screen")
    page.click('[data-testid="key-create"]')
    expect(page.locator('[data-testid="new-api-key"]')).to_be_visible()
    evil_id = scalar(live, "SELECT id FROM sketches WHERE client_ref = 'evil'")
    some_id = scalar(live, "SELECT min(id) FROM sketches WHERE flagged")
    # The menu's own links (whatever pages it offers) and every other kind of page.
    page.goto("/")
    menu = page.locator("nav.mainnav a")
    hrefs = [menu.nth(i).get_attribute("href") for i in range(menu.count())]
    assert {"/", "/flagged", "/sketches", "/audit", "/threshold", "/draw", "/admin/users", "/admin/keys"} <= set(hrefs)
    pages = list(dict.fromkeys(hrefs + [
        "/?log=1", "/flagged?state=unreviewed", "/sketches?q=cat&flagged=no", "/sketches?sort=score",
        f"/sketches/{some_id}?next=/flagged", f"/sketches/{evil_id}", f"/sketches/{some_id}?next=/audit",
        "/no/such/page", "/sketches/999999999",
    ]))
    for path in pages:
        page.goto(path)
        assert_fits(page, path)
        screenshot(page, "phone" + re.sub(r"[^a-z0-9]+", "-", path.lower()).rstrip("-"))

    # The menu is one line under the brand, not three.
    page.goto("/flagged")
    nav = page.locator("nav.mainnav").bounding_box()
    link = page.locator("nav.mainnav a").first.bounding_box()
    assert nav["height"] < 1.6 * link["height"], (nav, link)
    header = page.locator("header.topbar").bounding_box()
    assert header["height"] < 4 * link["height"]

    # The API keys page: every Revoke button inside its card.
    page.goto("/admin/keys")
    card = page.locator("section.card", has=page.locator('[data-testid="api-keys"]')).bounding_box()
    revokes = page.locator('[data-testid="key-revoke"]')
    assert revokes.count() >= 1
    for i in range(revokes.count()):
        b = revokes.nth(i).bounding_box()
        assert card["x"] <= b["x"] and b["x"] + b["width"] <= card["x"] + card["width"], (b, card)

    # The histogram's labels are drawn big enough to read, and the x labels do not overlap.
    page.goto("/")
    ticks = page.locator("svg.histogram text.tick:visible")
    assert ticks.count() >= 4
    heights = [ticks.nth(i).bounding_box()["height"] for i in range(ticks.count())]
    assert min(heights) >= 9, heights
    xs = page.locator("svg.histogram text.xtick:visible")
    boxes = sorted((xs.nth(i).bounding_box() for i in range(xs.count())), key=lambda b: b["x"])
    assert all(a["x"] + a["width"] <= b["x"] for a, b in zip(boxes, boxes[1:])), boxes

    # Logged out, and as a reviewer (403).
    other = browser.new_context(base_url=live.url, viewport=PHONE)
    try:
        anon = other.new_page()
        anon.goto("/login")
        assert_fits(anon, "/login")
        screenshot(anon, "phone-login")
        log_in(anon, live, "reviewer")
        anon.goto("/admin/users")
        expect(anon.locator('[data-testid="error-page"]')).to_be_visible()
        assert_fits(anon, "403")
        screenshot(anon, "phone-403")
    finally:
        other.close()


# --------------------------------------------------------------------------- every sketch, searched and filtered


def test_the_sketches_page_lists_searches_and_filters_every_sketch(page, live, screenshot):
    log_in(page, live, "reviewer")
    page.goto("/sketches")
    total = scalar(live, "SELECT count(*) FROM sketches")
    expect(page.locator('[data-testid="sketches-total"]')).to_have_text(f"{total:,}")
    rows = page.locator('[data-testid="sketch-row"]')
    first_page = [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]
    assert [int(i) for i in first_page] == sorted(column(live, "SELECT id FROM sketches"), reverse=True)[: len(first_page)]
    screenshot(page, "sketches")
    # Cursor pages, both ways.
    page.locator('[data-testid="page-next"]').first.click()
    expect(rows.first).not_to_have_attribute("data-id", first_page[0])
    page.locator('[data-testid="page-prev"]').first.click()
    expect(rows.first).to_have_attribute("data-id", first_page[0])

    # Metadata search: one key, exactly.
    box = page.locator('[data-testid="sketch-search"]')
    box.fill("word:cat")
    box.press("Enter")
    cats = column(live, "SELECT id FROM sketches WHERE metadata->>'word' = 'cat' ORDER BY id DESC")
    expect(rows).to_have_count(len(cats))
    assert {rows.nth(i).locator('[data-testid="row-word"]').inner_text() for i in range(rows.count())} == {"cat"}
    # Combined with a filter: the cats that were not flagged.
    page.locator('[data-testid="filter-flagged"]').select_option("no")
    page.locator('[data-testid="sketch-search-submit"]').click()
    unflagged = column(live, "SELECT id FROM sketches WHERE metadata->>'word' = 'cat' AND NOT flagged ORDER BY id DESC")
    expect(rows).to_have_count(len(unflagged))
    assert [int(rows.nth(i).get_attribute("data-id")) for i in range(rows.count())] == unflagged
    assert "q=word%3Acat" in page.url and "flagged=no" in page.url

    # Score range, and the search by id and by client_ref.
    page.goto("/sketches?score_min=0.2&score_max=0.4&sort=score_asc")
    scores = [float(rows.nth(i).get_attribute("data-score")) for i in range(rows.count())]
    assert scores == sorted(scores) and all(0.2 <= s <= 0.4 for s in scores)
    assert len(scores) == scalar(live, "SELECT count(*) FROM sketches WHERE score BETWEEN 0.2 AND 0.4")
    some = scalar(live, "SELECT id FROM sketches WHERE client_ref IS NOT NULL AND client_ref <> 'evil' ORDER BY id LIMIT 1")
    ref = scalar(live, "SELECT client_ref FROM sketches WHERE id = :id", id=some)
    for text in (f"#{some}", ref):
        page.goto("/sketches")
        box.fill(text)
        box.press("Enter")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-id", str(some))
    # A plain number also matches client_refs and metadata; the sketch with that id is offered at once.
    box.fill(str(some))
    box.press("Enter")
    page.locator('[data-testid="id-match"] a').first.click()
    expect(page).to_have_url(re.compile(rf"/sketches/{some}\?next="))

    # A missed anomaly, found and recorded from the list of everything (not the flagged gallery).
    page.goto("/sketches?flagged=no&verdict=none")
    row = rows.first
    missed = int(row.get_attribute("data-id"))
    row.locator('[data-testid="review-confirm"]').click()
    expect(row.locator('[data-testid="verdict"]')).to_have_text("anomaly")
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=missed) == "anomaly"
    assert scalar(live, "SELECT flagged FROM sketches WHERE id = :id", id=missed) is False
    page.locator('[data-testid="undo"]').click()
    expect(page.locator('[data-testid="undo-flash"]')).to_contain_text("Undone")


# --------------------------------------------------------------------------- explanations on the cards


def test_cards_explain_the_score(page, live, screenshot):
    log_in(page, live, "reviewer")
    page.goto("/flagged?sort=score")
    card = page.locator('[data-testid="flagged-item"]').first
    sketch_id = int(card.get_attribute("data-id"))
    word, ref = (scalar(live, f"SELECT {c} FROM sketches WHERE id = :id", id=sketch_id) for c in ("metadata->>'word'", "client_ref"))
    expect(card.locator('[data-testid="card-word"]')).to_have_text(word)
    expect(card.locator('[data-testid="card-client-ref"]')).to_have_text(ref)
    expect(card.locator('[data-testid="card-meta"]')).to_contain_text("countrycode")
    for testid in ("card-strokes", "card-heatmap"):
        img = card.locator(f'[data-testid="{testid}"]')
        img.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    # The strokes are the stored vector drawing, not a blown-up 28x28 bitmap.
    svg = page.request.get(card.locator('[data-testid="card-strokes"]').get_attribute("src"))
    assert svg.headers["content-type"].startswith("image/svg+xml")
    from service.core.packing import unpack_drawing

    drawing = unpack_drawing(scalar(live, "SELECT drawing FROM sketches WHERE id = :id", id=sketch_id))
    assert svg.text().count("<polyline") == len(drawing)
    # The heatmap is never blank where the drawing has ink: a refused drawing shows red, not nothing.
    heat = card.locator('[data-testid="card-heatmap"]')
    coloured = page.evaluate(
        """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                  const x = c.getContext('2d'); x.drawImage(img, 0, 0);
                  const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;
                  for (let i = 0; i < d.length; i += 4) { if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++; }
                  return n; }""",
        heat.element_handle(),
    )
    assert coloured > 20
    expect(page.locator('[data-testid="heat-legend"]')).to_contain_text("threshold")
    screenshot(page, "cards")
    page.goto(f"/sketches/{sketch_id}")
    expect(page.locator('[data-testid="image-strokes"]')).to_be_visible()
    expect(page.locator('[data-testid="image-heatmap"]')).to_be_visible()
    expect(page.locator('[data-testid="detail-word"]')).to_have_text(word)


# --------------------------------------------------------------------------- the review loop


def test_previous_next_auto_advance_and_undo_on_the_detail_page(page, live, screenshot):
    log_in(page, live, "reviewer")
    gallery = "/flagged?state=unreviewed&sort=score"
    page.goto(gallery)
    cards = page.locator('[data-testid="flagged-item"]')
    first, second, third = (cards.nth(i).get_attribute("data-id") for i in range(3))
    cards.first.locator("a.thumbs").click()
    expect(page).to_have_url(re.compile(rf"/sketches/{first}\?next="))
    expect(page.locator('[data-testid="detail-prev"]')).to_have_count(0)
    assert urlsplit(page.locator('[data-testid="detail-next"]').get_attribute("href")).path == f"/sketches/{second}"
    page.keyboard.press("j")
    expect(page).to_have_url(re.compile(rf"/sketches/{second}\?"))
    page.keyboard.press("k")
    expect(page).to_have_url(re.compile(rf"/sketches/{first}\?"))
    expect(page.locator('[data-testid="detail-back"]')).to_have_attribute("href", gallery)

    # Auto-advance: a verdict takes the reviewer to the next sketch of the list, with the undo at hand.
    page.locator('[data-testid="auto-advance"]').check()
    page.keyboard.press("a")
    expect(page).to_have_url(re.compile(rf"/sketches/{second}\?next="))
    assert parse_qs(urlsplit(page.url).query)["next"] == [gallery]
    expect(page.locator('[data-testid="undo-flash"]')).to_contain_text(f"Sketch {first}: confirmed anomaly")
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(first)) == "anomaly"
    expect(page.locator('[data-testid="auto-advance"]')).to_be_checked()  # remembered
    screenshot(page, "detail-advanced")
    page.locator('[data-testid="undo"]').click()
    expect(page.locator(".flash-success")).to_contain_text("Undone: 1 verdict withdrawn.")
    expect(page).to_have_url(re.compile(rf"/sketches/{second}\?"))
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(first)) is None
    page.keyboard.press("c")
    expect(page).to_have_url(re.compile(rf"/sketches/{third}\?"))
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(second)) == "cat"
    page.locator('[data-testid="undo"]').click()
    page.locator('[data-testid="auto-advance"]').uncheck()
    page.reload()
    expect(page.locator('[data-testid="auto-advance"]')).not_to_be_checked()


def test_progress_bar_and_verdicts_per_reviewer(page, live):
    log_in(page, live, "reviewer")
    page.goto("/flagged?state=unreviewed")
    progress = page.locator('[data-testid="review-progress"]')
    flagged = scalar(live, "SELECT count(*) FROM sketches WHERE flagged")
    reviewed = scalar(live, "SELECT count(*) FROM sketches WHERE flagged AND verdict IS NOT NULL")
    expect(progress).to_have_attribute("data-total", str(flagged))
    expect(progress).to_have_attribute("data-reviewed", str(reviewed))
    expect(progress).to_contain_text(f"{reviewed} of {flagged} flagged sketches reviewed")
    page.locator('[data-testid="flagged-item"]').first.locator('[data-testid="review-dismiss"]').click()
    expect(page.locator('[data-testid="undo-flash"]')).to_be_visible()
    page.reload()
    expect(progress).to_have_attribute("data-reviewed", str(reviewed + 1))
    assert progress.locator("progress").get_attribute("value") == str(reviewed + 1)
    counts = page.locator('[data-testid="reviewer-counts"]')
    counts.locator("summary").click()
    mine = scalar(live, "SELECT count(*) FROM reviews WHERE reviewer = :r AND NOT by_client", r=live.reviewer[0])
    expect(counts.locator(f'tr[data-reviewer="{live.reviewer[0]}"] [data-testid="reviewer-total"]')).to_have_text(str(mine))


def _log_in_again(page, live, role: str = "reviewer") -> None:
    username, password = live.admin if role == "admin" else live.reviewer
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', password)
    page.click('[data-testid="login-submit"]')


def test_an_expired_session_keeps_a_keyboard_verdict_and_the_selection(page, context, live, screenshot):
    log_in(page, live, "reviewer")
    gallery = "/flagged?state=unreviewed&sort=score"
    page.goto(gallery)
    cards = page.locator('[data-testid="flagged-item"]')
    ids = [cards.nth(i).get_attribute("data-id") for i in range(3)]
    page.keyboard.press("j")
    page.keyboard.press("x")  # select the first
    page.keyboard.press("j")
    page.keyboard.press("x")  # and the second, which stays current
    context.clear_cookies()  # the session ends
    page.keyboard.press("a")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.locator(".flash-info")).to_contain_text("Your session has expired")
    screenshot(page, "session-expired")
    _log_in_again(page, live)
    expect(page).to_have_url(re.compile(r"/flagged\?state=unreviewed&sort=score$"))  # back, the marker gone
    banner = page.locator('[data-testid="pending-restored"]')
    expect(banner).to_contain_text(f"confirm anomaly on sketch {ids[1]}")
    for i in (0, 1):
        expect(cards.nth(i).locator('input[name="ids"]')).to_be_checked()
    expect(cards.nth(2).locator('input[name="ids"]')).not_to_be_checked()
    expect(cards.nth(1)).to_have_class(re.compile(r"\bcurrent\b"))
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(ids[1])) is None
    screenshot(page, "session-resumed")
    page.locator('[data-testid="pending-retry"]').click()
    expect(cards.nth(1).locator('[data-testid="verdict"]')).to_have_text("anomaly")
    assert scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(ids[1])) == "anomaly"
    page.locator('[data-testid="undo"]').click()
    expect(page.locator('[data-testid="undo-flash"]')).to_contain_text("Undone")


def test_an_expired_session_keeps_a_bulk_selection(page, context, live):
    log_in(page, live, "reviewer")
    gallery = "/flagged?state=unreviewed&sort=score_asc"
    page.goto(gallery)
    cards = page.locator('[data-testid="flagged-item"]')
    ids = [cards.nth(i).get_attribute("data-id") for i in range(3)]
    for i in range(3):
        cards.nth(i).locator('input[name="ids"]').check()
    context.clear_cookies()
    page.locator('[data-testid="bulk-dismiss"]').click()
    expect(page).to_have_url(re.compile(r"/login\?next="))
    _log_in_again(page, live)
    expect(page).to_have_url(re.compile(r"/flagged\?state=unreviewed&sort=score_asc$"))
    expect(page.locator('[data-testid="pending-restored"]')).to_contain_text("it's a cat on 3 selected sketches")
    for i in range(3):
        expect(cards.nth(i).locator('input[name="ids"]')).to_be_checked()
    assert [scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(i)) for i in ids] == [None] * 3
    page.locator('[data-testid="pending-retry"]').click()
    expect(page.locator('[data-testid="undo-flash"]')).to_contain_text("3 sketches marked it's a cat")
    assert [scalar(live, "SELECT verdict FROM sketches WHERE id = :id", id=int(i)) for i in ids] == ["cat"] * 3
    page.locator('[data-testid="undo"]').click()
    expect(page.locator(".flash-success")).to_contain_text("Undone: 3 verdicts withdrawn.")

    # The same on the detail page: the verdict waits for the login.
    sketch_id = ids[0]
    page.goto(f"/sketches/{sketch_id}?next=/flagged")
    context.clear_cookies()
    page.keyboard.press("c")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    _log_in_again(page, live)
    expect(page).to_have_url(re.compile(rf"/sketches/{sketch_id}\?next=%2Fflagged$|/sketches/{sketch_id}\?next=/flagged$"))
    expect(page.locator('[data-testid="pending-restored"]')).to_contain_text(f"it's a cat on sketch {sketch_id}")
    page.locator('[data-testid="pending-retry"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("cat")
    page.locator('[data-testid="undo"]').click()
    expect(page.locator("h1 [data-testid='verdict']")).to_have_text("unreviewed")


# --------------------------------------------------------------------------- the audit sample and its estimates


def test_the_audit_sample_gives_weighted_estimates_and_the_f1_suggestion(page, live, screenshot):
    log_in(page, live, "reviewer")
    draw_audit(page, 10)  # more for the round the phone test started, or the first draw
    sample = page.locator('[data-testid="audit-sample"] [data-testid="flagged-item"]')
    n = sample.count()
    strata = {s: scalar(live, "SELECT count(*) FROM audit_samples WHERE stratum = :s", s=s) for s in ("above", "below")}
    assert n == sum(strata.values()) and min(strata.values()) >= 10, strata
    expect(page.locator('[data-testid="audit-f1-none"]')).to_be_visible()
    screenshot(page, "audit")

    # Review the whole sample from the keyboard: a cat is a cat, anything else an anomaly.
    page.keyboard.press("j")
    for i in range(n):
        card = sample.nth(i)
        expect(card).to_have_class(re.compile(r"\bcurrent\b"))
        word = card.locator('[data-testid="card-word"]').inner_text()
        page.keyboard.press("c" if word == "cat" else "a")
        expect(card.locator('[data-testid="verdict"]')).to_have_text("cat" if word == "cat" else "anomaly")
    page.reload()
    expect(page.locator('[data-testid="audit-progress"]')).to_have_attribute("data-reviewed", str(n))
    expect(page.locator('[data-testid="estimate-basis"]')).to_contain_text(f"From {n} reviewed audit")

    # The estimate is the stratum-weighted one, checked against the database by hand.
    t = float(page.locator('[data-testid="audit-estimates"]').get_attribute("data-threshold"))
    pops = {s: scalar(live, f"SELECT population_{s} FROM audit_rounds ORDER BY id DESC LIMIT 1") for s in ("above", "below")}
    rows = column(live, "SELECT a.stratum || ' ' || s.verdict || ' ' || s.score FROM audit_samples a JOIN sketches s "
                        "ON s.id = a.sketch_id WHERE s.verdict IS NOT NULL")
    tp = fp = fn = 0.0
    for h in ("above", "below"):
        mine = [r.split(" ") for r in rows if r.startswith(h + " ")]
        w = pops[h] / len(mine)
        tp += w * sum(1 for _, v, s in mine if v == "anomaly" and float(s) > t)
        fp += w * sum(1 for _, v, s in mine if v == "cat" and float(s) > t)
        fn += w * sum(1 for _, v, s in mine if v == "anomaly" and float(s) <= t)
    precision = page.locator('[data-testid="estimate-precision"]')
    recall = page.locator('[data-testid="estimate-recall"]')
    assert float(precision.get_attribute("data-value")) == pytest.approx(tp / (tp + fp), abs=1e-9)
    assert float(recall.get_attribute("data-value")) == pytest.approx(tp / (tp + fn), abs=1e-9)
    for m in (precision, recall):
        assert float(m.get_attribute("data-low")) <= float(m.get_attribute("data-value")) <= float(m.get_attribute("data-high"))
    expect(page.locator('[data-testid="audit-f1-suggestion"]')).to_contain_text(f"from {n} reviews")
    screenshot(page, "audit-reviewed")

    page.goto("/threshold")
    chip = page.locator('[data-testid="suggest-f1"]')
    expect(chip).to_have_attribute("data-reviews", str(n))
    expect(chip).to_contain_text(f"{n} audit reviews")
    expect(page.locator('[data-testid="estimate-reviews"]')).to_have_text(str(n))
    chip.click()  # the preview moves to the suggestion, and so do the estimates
    expect(page.locator("#threshold-form")).to_have_attribute("data-preview-state", "ready")
    expect(page.locator('[data-testid="estimate-f1"]')).to_have_attribute(
        "data-value", re.compile(r"^0\.\d+|^1(\.0)?$"))
    screenshot(page, "threshold-estimates")


# --------------------------------------------------------------------------- errors, times, CSV


def test_error_pages_are_styled_and_plain(page, live, screenshot):
    log_in(page, live, "admin")
    page.goto("/no/such/page")
    err = page.locator('[data-testid="error-page"]')
    expect(err).to_contain_text("Page not found")
    expect(page.locator("nav.mainnav")).to_be_visible()
    assert page.evaluate("getComputedStyle(document.querySelector('[data-testid=\"error-page\"]')).backgroundColor") == "rgb(255, 255, 255)"
    page.locator('[data-testid="error-home"]').click()
    expect(page).to_have_url(re.compile(r"/$"))
    screenshot(page, "error-404")
    # A broken server (a table gone): a styled 500 page, no details.
    with live.session() as s:
        from sqlalchemy import text

        s.execute(text("ALTER TABLE audit_rounds RENAME TO audit_rounds_away"))
    try:
        resp = page.goto("/audit")
        assert resp.status == 500
        expect(err).to_contain_text("Something went wrong")
        expect(page.locator("nav.mainnav")).to_be_visible()
        assert "audit_rounds" not in page.content() and "Traceback" not in page.content()
        screenshot(page, "error-500")
    finally:
        with live.session() as s:
            s.execute(text("ALTER TABLE audit_rounds_away RENAME TO audit_rounds"))
    page.goto("/audit")
    expect(page.locator("h1")).to_have_text("Audit sample")


def test_times_carry_their_timezone(page, live):
    log_in(page, live, "reviewer")
    sketch_id = scalar(live, "SELECT min(id) FROM sketches")
    page.goto(f"/sketches/{sketch_id}")
    times = page.locator("time")
    assert times.count() >= 2
    for i in range(times.count()):
        assert times.nth(i).inner_text().endswith(" UTC")
        assert times.nth(i).get_attribute("datetime").endswith("+00:00")


def test_the_csv_follows_the_chosen_order_with_metadata(page, live):
    log_in(page, live, "reviewer")
    page.goto("/flagged")
    page.locator('[data-testid="sort"]').select_option("score_asc")
    expect(page).to_have_url(re.compile(r"sort=score_asc"))
    with page.expect_download() as info:
        page.locator('[data-testid="export-csv"]').click()
    rows = list(csv.DictReader(io.StringIO(open(info.value.path(), encoding="utf-8").read())))
    scores = [float(r["score"]) for r in rows]
    assert len(rows) >= 10 and scores == sorted(scores)
    assert '"word"' in rows[0]["metadata"] and '"countrycode"' in rows[0]["metadata"]
