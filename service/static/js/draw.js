/* Drawing page: pointer-event canvas -> raw strokes [[x..],[y..],[t..]] -> intake -> poll status. */
(function () {
  "use strict";

  var LINE_WIDTH = 8;

  document.addEventListener("DOMContentLoaded", function () {
    var app = document.getElementById("draw-app");
    if (!app) { return; }
    var canvas = document.getElementById("draw-canvas");
    var ctx = canvas.getContext("2d");
    var submitBtn = document.getElementById("draw-submit");
    var undoBtn = document.getElementById("draw-undo");
    var clearBtn = document.getElementById("draw-clear");
    var result = document.getElementById("draw-result");
    var pollInterval = parseInt(app.getAttribute("data-poll-interval"), 10) || 500;
    var pollTimeout = parseInt(app.getAttribute("data-poll-timeout"), 10) || 120000;
    var strokes = [];
    var active = null;
    var t0 = null;

    function point(e) {
      var r = canvas.getBoundingClientRect();
      return {
        x: (e.clientX - r.left) * canvas.width / r.width,
        y: (e.clientY - r.top) * canvas.height / r.height,
        t: t0 === null ? 0 : Math.round(performance.now() - t0)
      };
    }

    function redraw() {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.lineWidth = LINE_WIDTH;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.strokeStyle = "#1d2330";
      strokes.forEach(function (s) {
        ctx.beginPath();
        ctx.moveTo(s[0][0], s[1][0]);
        for (var i = 1; i < s[0].length; i++) { ctx.lineTo(s[0][i], s[1][i]); }
        if (s[0].length === 1) { ctx.lineTo(s[0][0] + 0.1, s[1][0]); }
        ctx.stroke();
      });
      var empty = strokes.length === 0;
      submitBtn.disabled = empty;
      undoBtn.disabled = empty;
      clearBtn.disabled = empty;
    }

    canvas.addEventListener("pointerdown", function (e) {
      if (e.button !== undefined && e.button > 0) { return; }
      e.preventDefault();
      canvas.setPointerCapture(e.pointerId);
      if (t0 === null) { t0 = performance.now(); }
      var p = point(e);
      active = [[p.x], [p.y], [p.t]];
      strokes.push(active);
      redraw();
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!active) { return; }
      e.preventDefault();
      var p = point(e);
      var n = active[0].length - 1;
      if (Math.abs(p.x - active[0][n]) + Math.abs(p.y - active[1][n]) < 1) { return; }
      active[0].push(p.x); active[1].push(p.y); active[2].push(p.t);
      redraw();
    });
    function end() { active = null; }
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);

    undoBtn.addEventListener("click", function () { strokes.pop(); if (!strokes.length) { t0 = null; } redraw(); });
    clearBtn.addEventListener("click", function () { strokes = []; t0 = null; redraw(); setState("idle", "Your result appears here."); });

    function setState(state, text) {
      result.setAttribute("data-state", state);
      result.textContent = "";
      if (text) {
        var p = document.createElement("p");
        p.textContent = text;
        result.appendChild(p);
      }
    }

    function img(src, alt) {
      var el = document.createElement("img");
      el.src = src; el.alt = alt; el.width = 168; el.height = 168;
      return el;
    }

    function showScored(s) {
      setState("scored", null);
      var p = document.createElement("p");
      var score = document.createElement("span");
      score.className = "big";
      score.setAttribute("data-testid", "draw-score");
      score.textContent = Number(s.score).toFixed(4);
      var flag = document.createElement("span");
      flag.setAttribute("data-testid", "draw-flag");
      flag.className = s.flagged ? "flag-yes" : "flag-no";
      flag.textContent = s.flagged ? " flagged as anomalous" : " looks like a cat";
      var odds = s.score_logit === null || s.score_logit === undefined ? "" : ", log-odds " + Number(s.score_logit).toFixed(2);
      p.append("Score ", score, flag, " (threshold " + Number(s.threshold).toPrecision(4) + odds + ")");
      result.appendChild(p);
      var figs = document.createElement("p");
      figs.append(img(s.input_url, "your drawing, 28x28"), img(s.reconstruction_url, "reconstruction"), img(s.diff_url, "difference"));
      figs.querySelectorAll("img")[1].setAttribute("data-testid", "draw-reconstruction");
      result.appendChild(figs);
      var link = document.createElement("a");
      link.href = s.detail_url;
      link.textContent = "Open sketch " + s.id;
      result.appendChild(link);
    }

    function poll(url, started) {
      window.SW.getJSON(url).then(function (s) {
        if (s.status === "scored") { showScored(s); submitBtn.disabled = false; return; }
        if (s.status === "failed") { setState("failed", "Scoring failed: " + (s.error || "unknown error")); submitBtn.disabled = false; return; }
        if (performance.now() - started > pollTimeout) {
          setState("timeout", "Still queued; the worker may be busy. Check the sketch page later.");
          submitBtn.disabled = false;
          return;
        }
        setTimeout(function () { poll(url, started); }, pollInterval);
      }).catch(function (err) {
        setState("error", "Status check failed: " + err.message);
        submitBtn.disabled = false;
      });
    }

    submitBtn.addEventListener("click", function () {
      if (!strokes.length) { return; }
      submitBtn.disabled = true;
      setState("submitting", "Submitting…");
      var drawing = strokes.map(function (s) {
        return [s[0].map(function (v) { return Math.round(v * 100) / 100; }),
                s[1].map(function (v) { return Math.round(v * 100) / 100; }),
                s[2].slice()];
      });
      window.SW.postJSON(app.getAttribute("data-submit-url"), { drawing: drawing })
        .then(function (r) {
          setState("queued", "Queued as sketch " + r.id + "; waiting for the worker…");
          result.setAttribute("data-sketch-id", r.id);
          poll(r.status_url, performance.now());
        })
        .catch(function (err) {
          setState("error", "Submission failed: " + err.message);
          submitBtn.disabled = false;
        });
    });

    redraw();
  });
})();
