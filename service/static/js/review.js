/* Review queue: j/k to move, a = confirm anomaly, c = it's a cat, x = select, Enter = open. */
(function () {
  "use strict";

  var LABELS = { anomaly: "anomaly", cat: "cat" };

  function setBadge(item, verdict) {
    var badge = item.querySelector('[data-testid="verdict"]');
    if (!badge) { return; }
    badge.className = "badge badge-" + verdict;
    badge.textContent = LABELS[verdict] || verdict;
  }

  function initQueue(form) {
    var items = Array.prototype.slice.call(form.querySelectorAll('[data-testid="flagged-item"]'));
    var current = -1;

    function focusItem(i) {
      if (!items.length) { return; }
      current = Math.max(0, Math.min(items.length - 1, i));
      items.forEach(function (el, k) { el.classList.toggle("current", k === current); });
      items[current].focus({ preventScroll: true });
      items[current].scrollIntoView({ block: "nearest" });
    }

    function review(i, verdict) {
      var item = items[i];
      if (!item) { return Promise.resolve(); }
      return window.SW.postForm(item.getAttribute("data-review-url"), { verdict: verdict })
        .then(function (body) {
          setBadge(item, body.verdict);
          item.classList.remove("reviewed-now");
          void item.offsetWidth; // restart the highlight animation
          item.classList.add("reviewed-now");
          item.setAttribute("data-verdict", body.verdict);
        })
        .catch(function (err) { window.alert("Could not record the verdict: " + err.message); });
    }

    items.forEach(function (item, i) {
      // focusin also fires when a button or checkbox inside the card gets focus.
      item.addEventListener("focusin", function () {
        current = i;
        items.forEach(function (el, k) { el.classList.toggle("current", k === i); });
      });
      item.querySelectorAll('button[formaction]').forEach(function (btn) {
        btn.addEventListener("click", function (e) {
          e.preventDefault();
          current = i;
          review(i, btn.value);
        });
      });
      var box = item.querySelector('input[name="ids"]');
      if (box) {
        box.addEventListener("change", function () { item.classList.toggle("selected", box.checked); });
      }
    });

    var all = form.querySelector("[data-select-all]");
    if (all) {
      all.addEventListener("change", function () {
        items.forEach(function (item) {
          var box = item.querySelector('input[name="ids"]');
          if (box) { box.checked = all.checked; item.classList.toggle("selected", all.checked); }
        });
      });
    }

    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || window.SW.typingInField(e)) { return; }
      var key = e.key;
      if (key === "j") { focusItem(current + 1); e.preventDefault(); }
      else if (key === "k") { focusItem(current < 0 ? 0 : current - 1); e.preventDefault(); }
      else if ((key === "a" || key === "c") && current >= 0) {
        var at = current;
        review(at, key === "a" ? "anomaly" : "cat").then(function () { focusItem(at + 1); });
        e.preventDefault();
      } else if (key === "x" && current >= 0) {
        var box = items[current].querySelector('input[name="ids"]');
        if (box) { box.checked = !box.checked; items[current].classList.toggle("selected", box.checked); }
        e.preventDefault();
      } else if (key === "Enter" && current >= 0 && e.target === items[current]) {
        window.location.href = items[current].getAttribute("data-detail-url");
      }
    });
  }

  function initSingle(panel) {
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || window.SW.typingInField(e)) { return; }
      var target = null;
      if (e.key === "a") { target = panel.querySelector('[data-testid="review-confirm"]'); }
      if (e.key === "c") { target = panel.querySelector('[data-testid="review-dismiss"]'); }
      if (target) { e.preventDefault(); target.click(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.querySelector("[data-review-queue]");
    if (form) { initQueue(form); }
    var panel = document.querySelector("[data-review-single]");
    if (panel) { initSingle(panel); }
  });
})();
