/* Review loop.
 * Lists (flagged gallery, sketches page, audit sample): j/k to move, a = confirm anomaly, c = it's a cat,
 * x = select, Enter = open, u = undo. Detail page: a/c record a verdict, j/k go to the next/previous sketch,
 * and "then go to the next sketch" (auto-advance) is remembered in localStorage.
 * When the session has expired, what the reviewer was doing (the verdict, the selection, the card they were
 * on) is kept in sessionStorage; they log in, come back to the same page (?resume=1) and find it restored,
 * with a button to record it now.
 */
(function () {
  "use strict";

  var LABELS = { anomaly: "anomaly", cat: "cat" };
  var WORDS = { anomaly: "confirm anomaly", cat: "it's a cat" };
  var PENDING = "sw-pending";
  var PENDING_MAX_AGE_MS = 6 * 3600 * 1000;

  /* This page's address without the resume marker (pending work is keyed by it). */
  function here() {
    var params = new URLSearchParams(window.location.search);
    params.delete("resume");
    var q = params.toString();
    return window.location.pathname + (q ? "?" + q : "");
  }

  function withResume(path) {
    return path + (path.indexOf("?") === -1 ? "?" : "&") + "resume=1";
  }

  function savePending(p) {
    p.path = here();
    p.at = Date.now();
    try { window.sessionStorage.setItem(PENDING, JSON.stringify(p)); } catch (e) { /* storage off: nothing kept */ }
  }

  /* The work kept for this page, if the page was reached by resuming; any other visit forgets it. */
  function takePending() {
    var resume = new URLSearchParams(window.location.search).has("resume");
    var raw = null;
    try { raw = window.sessionStorage.getItem(PENDING); } catch (e) { return null; }
    if (resume) {
      window.history.replaceState(null, "", here());
    }
    if (!raw) { return null; }
    var p = null;
    try { p = JSON.parse(raw); } catch (e) { p = null; }
    if (!p || p.path !== here()) { return null; }
    window.sessionStorage.removeItem(PENDING);
    if (!resume || Date.now() - p.at > PENDING_MAX_AGE_MS) { return null; }
    return p;
  }

  /* A failed request that a login or a reload can mend: keep the work, then go. True when handled. */
  function recover(err, pending) {
    var body = (err.body && err.body.error) || {};
    if (err.status === 401) {
      savePending(pending);
      window.location.assign(body.login_url || ("/login?next=" + encodeURIComponent(withResume(here()))));
      return true;
    }
    if (body.reload) {
      savePending(pending);
      window.location.assign(body.reload);
      return true;
    }
    return false;
  }

  function banner(kind, testid, text) {
    var bar = document.createElement("div");
    bar.className = "flash flash-" + kind + " pending";
    bar.setAttribute("role", kind === "error" ? "alert" : "status");
    bar.setAttribute("data-testid", testid);
    var span = document.createElement("span");
    span.textContent = text;
    bar.appendChild(span);
    var main = document.querySelector("main.page");
    main.insertBefore(bar, main.firstChild);
    return bar;
  }

  function button(text, testid, cls, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = text;
    b.setAttribute("data-testid", testid);
    b.addEventListener("click", onClick);
    return b;
  }

  /* Tell the reviewer what was kept, and let them record it now or drop it. */
  function offerPending(p, describe, retry) {
    var bar = banner("info", "pending-restored",
      "Your session had expired, so this was not recorded: " + describe + ". Your selection is kept. ");
    bar.appendChild(button("Record it now", "pending-retry", "small primary", function () { bar.remove(); retry(); }));
    bar.appendChild(button("Dismiss", "pending-dismiss", "link", function () { bar.remove(); }));
  }

  function setBadge(item, verdict) {
    var badge = item.querySelector('[data-testid="verdict"]');
    if (!badge) { return; }
    badge.className = "badge badge-" + (verdict || "none");
    badge.textContent = verdict ? (LABELS[verdict] || verdict) : "unreviewed";
  }

  /* Offer to undo the action just recorded; only the latest action can be undone, so older offers go. */
  function showUndo(undo, text, onUndone) {
    document.querySelectorAll('[data-testid="undo-flash"]').forEach(function (el) { el.remove(); });
    var bar = document.createElement("div");
    bar.className = "flash flash-success undo toast";
    bar.setAttribute("role", "status");
    bar.setAttribute("data-testid", "undo-flash");
    var span = document.createElement("span");
    span.textContent = text + " ";
    var btn = document.createElement("button");
    btn.type = "button";
    btn.className = "link";
    btn.setAttribute("data-testid", "undo");
    btn.textContent = "Undo";
    btn.addEventListener("click", function () {
      btn.disabled = true;
      window.SW.postForm(undo.url, { action: undo.action })
        .then(function (body) {
          onUndone(body.verdicts || {});
          span.textContent = "Undone: " + body.undone + (body.undone === 1 ? " verdict" : " verdicts") + " withdrawn.";
          bar.setAttribute("data-state", "undone");
          btn.remove();
        })
        .catch(function (err) {
          if (recover(err, {})) { return; }
          span.textContent = "Nothing undone: " + err.message;
          bar.setAttribute("data-state", "failed");
          btn.remove();
        });
    });
    bar.append(span, btn);
    document.body.appendChild(bar);
  }

  function initQueue(form) {
    var items = Array.prototype.slice.call(form.querySelectorAll("[data-review-item]"));
    var current = -1;

    function idOf(item) { return item.getAttribute("data-id"); }
    function boxOf(item) { return item.querySelector('input[name="ids"]'); }
    function selected() {
      return items.filter(function (it) { var b = boxOf(it); return b && b.checked; }).map(idOf);
    }
    function select(item, on) {
      var box = boxOf(item);
      if (box) { box.checked = on; item.classList.toggle("selected", on); }
    }

    function focusItem(i) {
      if (!items.length) { return; }
      current = Math.max(0, Math.min(items.length - 1, i));
      items.forEach(function (el, k) { el.classList.toggle("current", k === current); });
      items[current].focus({ preventScroll: true });
      items[current].scrollIntoView({ block: "nearest" });
    }

    function review(i, verdict) {
      var item = items[i];
      if (!item) { return Promise.resolve(false); }
      return window.SW.postForm(item.getAttribute("data-review-url"), { verdict: verdict })
        .then(function (body) {
          setBadge(item, body.verdict);
          item.classList.remove("reviewed-now");
          void item.offsetWidth; // restart the highlight animation
          item.classList.add("reviewed-now");
          item.setAttribute("data-verdict", body.verdict);
          if (body.undo) {
            showUndo(body.undo, "Sketch " + idOf(item) + ": " + (LABELS[body.verdict] || body.verdict) + ".",
              function (verdicts) {
                Object.keys(verdicts).forEach(function (id) {
                  var card = form.querySelector('[data-review-item][data-id="' + id + '"]');
                  if (card) { setBadge(card, verdicts[id]); card.setAttribute("data-verdict", verdicts[id] || ""); }
                });
              });
          }
          return true;
        })
        .catch(function (err) {
          var pending = { kind: "single", verdict: verdict, target: idOf(item), current: idOf(item), ids: selected() };
          if (recover(err, pending)) { return false; }
          banner("error", "review-error", "Could not record the verdict on sketch " + idOf(item) + ": " + err.message);
          return false;
        });
    }

    items.forEach(function (item, i) {
      // focusin also fires when a button or checkbox inside the card gets focus.
      item.addEventListener("focusin", function () {
        current = i;
        items.forEach(function (el, k) { el.classList.toggle("current", k === i); });
      });
      item.querySelectorAll("button[formaction]").forEach(function (btn) {
        btn.addEventListener("click", function (e) {
          e.preventDefault();
          current = i;
          review(i, btn.value);
        });
      });
      var box = boxOf(item);
      if (box) {
        box.addEventListener("change", function () { item.classList.toggle("selected", box.checked); });
      }
    });

    var all = form.querySelector("[data-select-all]");
    if (all) {
      all.addEventListener("change", function () { items.forEach(function (item) { select(item, all.checked); }); });
    }

    // A bulk action is an ordinary form post; keep the selection in case the session turns out to be over.
    form.addEventListener("submit", function (e) {
      var verdict = e.submitter && e.submitter.name === "verdict" ? e.submitter.value : null;
      if (verdict) { savePending({ kind: "bulk", verdict: verdict, ids: selected(), current: current >= 0 ? idOf(items[current]) : null }); }
    });

    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || window.SW.typingInField(e)) { return; }
      var key = e.key;
      if (key === "j") { focusItem(current + 1); e.preventDefault(); }
      else if (key === "k") { focusItem(current < 0 ? 0 : current - 1); e.preventDefault(); }
      else if ((key === "a" || key === "c") && current >= 0) {
        var at = current;
        review(at, key === "a" ? "anomaly" : "cat").then(function (ok) { if (ok) { focusItem(at + 1); } });
        e.preventDefault();
      } else if (key === "x" && current >= 0) {
        var b = boxOf(items[current]);
        if (b) { select(items[current], !b.checked); }
        e.preventDefault();
      } else if (key === "Enter" && current >= 0 && e.target === items[current]) {
        window.location.href = items[current].getAttribute("data-detail-url");
      }
    });

    var p = takePending();
    if (p) {
      (p.ids || []).forEach(function (id) {
        var item = form.querySelector('[data-review-item][data-id="' + id + '"]');
        if (item) { select(item, true); }
      });
      var at = items.findIndex(function (it) { return idOf(it) === String(p.current || p.target); });
      if (at >= 0) { focusItem(at); }
      if (p.kind === "bulk") {
        var n = (p.ids || []).length;
        offerPending(p, WORDS[p.verdict] + " on " + n + " selected sketch" + (n === 1 ? "" : "es"), function () {
          var btn = form.querySelector('button[name="verdict"][value="' + p.verdict + '"]:not([formaction])');
          if (btn) { form.requestSubmit(btn); }
        });
      } else if (p.kind === "single") {
        var target = items.findIndex(function (it) { return idOf(it) === String(p.target); });
        offerPending(p, WORDS[p.verdict] + " on sketch " + p.target, function () {
          if (target >= 0) { review(target, p.verdict).then(function (ok) { if (ok) { focusItem(target + 1); } }); }
        });
      }
    }
  }

  function initSingle(panel) {
    var form = panel.querySelector("form");
    var sketch = panel.getAttribute("data-sketch-id");
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || window.SW.typingInField(e)) { return; }
      var target = null;
      if (e.key === "a") { target = panel.querySelector('[data-testid="review-confirm"]'); }
      if (e.key === "c") { target = panel.querySelector('[data-testid="review-dismiss"]'); }
      if (e.key === "j") { target = document.querySelector('[data-testid="detail-next"]'); }
      if (e.key === "k") { target = document.querySelector('[data-testid="detail-prev"]'); }
      if (target) { e.preventDefault(); target.click(); }
    });
    if (form) {
      form.addEventListener("submit", function (e) {
        var verdict = e.submitter && e.submitter.name === "verdict" ? e.submitter.value : null;
        if (verdict) { savePending({ kind: "detail", verdict: verdict, target: sketch }); }
      });
    }
    var p = takePending();
    if (p && p.kind === "detail") {
      offerPending(p, WORDS[p.verdict] + " on sketch " + p.target, function () {
        var btn = panel.querySelector('button[name="verdict"][value="' + p.verdict + '"]');
        if (btn && form) { form.requestSubmit(btn); }
      });
    }
  }

  /* Checkboxes with data-remember keep their state across pages (auto-advance). */
  function initRemembered() {
    document.querySelectorAll("input[type=checkbox][data-remember]").forEach(function (box) {
      var key = box.getAttribute("data-remember");
      try { box.checked = window.localStorage.getItem(key) === "1"; } catch (e) { /* storage off */ }
      box.addEventListener("change", function () {
        try { window.localStorage.setItem(key, box.checked ? "1" : "0"); } catch (e) { /* storage off */ }
      });
    });
  }

  /* On a phone, long filter forms start folded unless a filter is in use. */
  function initCollapsible() {
    if (!window.matchMedia("(max-width: 640px)").matches) { return; }
    document.querySelectorAll('details[data-collapse-narrow="yes"]').forEach(function (d) { d.open = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initCollapsible();
    document.addEventListener("keydown", function (e) {
      if (e.key !== "u" || e.ctrlKey || e.metaKey || e.altKey || window.SW.typingInField(e)) { return; }
      var undo = document.querySelector('[data-testid="undo"]');
      if (undo && !undo.disabled) { e.preventDefault(); undo.click(); }
    });
    initRemembered();
    var form = document.querySelector("[data-review-queue]");
    if (form) { initQueue(form); }
    var panel = document.querySelector("[data-review-single]");
    if (panel) { initSingle(panel); }
  });
})();
