/* Models page: while a training run or a re-scoring is under way, poll its progress and update the numbers;
   reload the page once it ends (new versions, new comparison). */
(function () {
  "use strict";
  var POLL_MS = 3000;
  var LIVE = { queued: true, running: true };

  function setText(testid, text) {
    var el = document.querySelector('[data-testid="' + testid + '"]');
    if (el) { el.textContent = text; }
  }

  function start() {
    var box = document.querySelector('[data-testid="training-progress"]');
    var rescore = document.querySelector('[data-testid="rescore-progress"]');
    var training = box && LIVE[box.getAttribute("data-status")];
    var rescoring = rescore && LIVE[rescore.getAttribute("data-status")];
    if (!box || !(training || rescoring)) { return; }
    var url = box.getAttribute("data-progress-url");
    var timer = setInterval(function () {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (resp) { return resp.ok ? resp.json() : null; })
        .then(function (body) {
          if (!body) { return; }
          var run = body.training;
          if (run) {
            setText("training-status", run.status);
            setText("training-epoch", String(run.epoch || 0));
            setText("training-loss", run.loss == null ? "–" : Number(run.loss).toFixed(5));
            setText("training-eta", run.eta_s == null ? "–" : Math.round(run.eta_s) + " s");
            var bar = box.querySelector("progress");
            if (bar && run.epochs) { bar.max = run.epochs; bar.value = run.epoch || 0; }
          }
          if (body.rescore) { setText("rescore-done", Number(body.rescore.done || 0).toLocaleString()); }
          var still = (run && LIVE[run.status]) || (body.rescore && LIVE[body.rescore.status]);
          if (!still) { clearInterval(timer); window.location.reload(); }
        })
        .catch(function () { /* a missed poll: the next one tries again */ });
    }, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
