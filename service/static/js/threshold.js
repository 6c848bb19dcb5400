/* Threshold page: value box and slider kept in sync, live preview, moving threshold line, and one error
   message for a bad value (the server's, from the preview endpoint, in the same place as after a submit). */
(function () {
  "use strict";

  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"; }
  function fmt(v) { return Number(v).toPrecision(4).replace(/\.?0+(e|$)/, "$1"); }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("threshold-form");
    if (!form) { return; }
    var input = document.getElementById("threshold-input");
    var logitInput = document.getElementById("threshold-logit-input");
    var slider = document.getElementById("threshold-slider");
    var error = document.getElementById("threshold-error");
    var previewUrl = form.getAttribute("data-preview-url");
    var svg = document.querySelector('svg[data-testid="histogram"]');
    var line = svg && svg.querySelector('[data-testid="threshold-line"]');
    var label = svg && svg.querySelector('[data-testid="threshold-label"]');
    var out = {
      count: document.querySelector('[data-testid="preview-count"]'),
      changes: document.querySelector('[data-testid="preview-changes"]'),
      precision: document.querySelector('[data-testid="preview-precision"]'),
      recall: document.querySelector('[data-testid="preview-recall"]'),
      reviewed: document.querySelector('[data-testid="preview-reviewed"]'),
      position: document.querySelector('[data-testid="preview-position"]')
    };
    var seq = 0;
    var timer = null;

    function moveLine(t) {
      if (!svg || !line) { return; }
      var lo = parseFloat(svg.getAttribute("data-lo"));
      var hi = parseFloat(svg.getAttribute("data-hi"));
      var left = parseFloat(svg.getAttribute("data-left"));
      var right = parseFloat(svg.getAttribute("data-right"));
      var clamped = Math.max(lo, Math.min(hi, t));
      var x = left + (right - left) * (clamped - lo) / (hi - lo);
      line.setAttribute("x", x - 1);
      line.setAttribute("data-value", t);
      if (label) {
        label.setAttribute("x", x);
        label.setAttribute("text-anchor", x > right - 90 ? "end" : (x < left + 90 ? "start" : "middle"));
        label.textContent = (t < lo ? "← " : "") + "threshold " + fmt(t) + (t > hi ? " →" : "");
      }
      svg.querySelectorAll("rect.bar").forEach(function (bar) {
        var x0 = parseFloat(bar.getAttribute("x"));
        bar.classList.toggle("bar-over", x0 >= x);
      });
    }

    /* The threshold's log-odds box follows the threshold (blank at 0 and 1, where there are none). */
    function syncLogit(t) {
      if (!logitInput) { return; }
      logitInput.value = isFinite(t) && t > 0 && t < 1 ? Math.log(t / (1 - t)).toFixed(4) : "";
    }

    /* The typed value as a number, or NaN; unlike parseFloat, "0.3abc" and "" are not numbers. */
    function typed() {
      var text = input.value.trim();
      return text === "" ? NaN : Number(text);
    }

    function setError(message) {
      error.textContent = message || "";
      error.hidden = !message;
      if (message) { input.setAttribute("aria-invalid", "true"); } else { input.removeAttribute("aria-invalid"); }
    }

    function show(p) {
      out.count.textContent = p.flagged.toLocaleString("en-US");
      if (out.changes && p.changes) { out.changes.textContent = p.changes.total.toLocaleString("en-US"); }
      out.precision.textContent = pct(p.precision);
      out.recall.textContent = pct(p.recall);
      out.reviewed.textContent = p.reviewed.toLocaleString("en-US");
      var text = "Among held-out cats: " + p.position.text;
      if (p.position.cat_flag_rate !== null && p.position.cat_flag_rate !== undefined) {
        text += "; about " + pct(p.position.cat_flag_rate) + " of normal cats would be flagged";
      }
      out.position.textContent = text + ".";
      if (p.estimate) { showEstimate(p.estimate); }
    }

    /* The audit sample's estimates at the previewed value: point and confidence interval per metric. */
    function showEstimate(e) {
      ["precision", "recall", "f1"].forEach(function (name) {
        var el = document.querySelector('[data-testid="estimate-' + name + '"]');
        if (!el) { return; }
        var m = e[name];
        el.setAttribute("data-value", m.value === null ? "" : m.value);
        el.setAttribute("data-low", m.low);
        el.setAttribute("data-high", m.high);
        el.querySelector(".n").textContent = m.value === null ? "–" : (m.value * 100).toFixed(0) + "%";
        el.querySelector(".ci").textContent = (m.low * 100).toFixed(0) + "–" + (m.high * 100).toFixed(0) + "%";
      });
    }

    function refresh() {
      var t = typed();
      if (isFinite(t)) { moveLine(t); }
      var mine = ++seq;
      form.setAttribute("data-preview-state", "loading");
      window.SW.getJSON(previewUrl + "?t=" + encodeURIComponent(input.value))
        .then(function (p) {
          if (mine !== seq) { return; } // a newer request is on its way; drop this one
          setError(null);
          show(p);
          form.setAttribute("data-preview-state", "ready");
          form.setAttribute("data-preview-t", String(p.threshold));
        })
        .catch(function (err) {
          if (mine !== seq) { return; }
          if (err.status === 400) {
            setError(err.message); // the same message the apply form would give
            form.setAttribute("data-preview-state", "invalid");
          } else {
            out.position.textContent = "Preview failed: " + err.message;
            form.setAttribute("data-preview-state", "error");
          }
        });
    }

    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 120);
    }

    input.addEventListener("input", function () {
      var t = typed();
      if (isFinite(t)) { slider.value = t; }
      syncLogit(t);
      schedule();
    });
    slider.addEventListener("input", function () {
      input.value = slider.value;
      syncLogit(Number(slider.value));
      schedule();
    });
    if (logitInput) {
      /* Log-odds typed: the threshold box gets the threshold they stand for (what is submitted and previewed). */
      logitInput.addEventListener("input", function () {
        var text = logitInput.value.trim();
        var l = text === "" ? NaN : Number(text);
        if (!isFinite(l)) { return; }
        var t = 1 / (1 + Math.exp(-l));
        input.value = String(t);
        slider.value = t;
        schedule();
      });
    }
    form.querySelectorAll("[data-suggest]").forEach(function (btn) {
      btn.addEventListener("click", function () {
        input.value = btn.getAttribute("data-suggest");
        slider.value = input.value;
        syncLogit(typed());
        refresh();
      });
    });
  });
})();
