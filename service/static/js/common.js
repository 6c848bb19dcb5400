/* Shared helpers: CSRF token for fetch(), JSON requests, auto-submitting filter forms. */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function request(url, options) {
    options = options || {};
    var headers = Object.assign(
      { "Accept": "application/json", "X-Requested-With": "fetch" },
      options.headers || {}
    );
    if (options.method && options.method !== "GET") {
      headers["X-CSRFToken"] = csrfToken();
    }
    return fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers: headers }))
      .then(function (resp) {
        return resp.json().catch(function () { return {}; }).then(function (body) {
          if (!resp.ok) {
            var msg = (body && body.error && body.error.message) || ("HTTP " + resp.status);
            var err = new Error(msg);
            err.status = resp.status;
            err.body = body;
            throw err;
          }
          return body;
        });
      });
  }

  function postJSON(url, body) {
    return request(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    });
  }

  function postForm(url, fields) {
    var data = new FormData();
    Object.keys(fields).forEach(function (k) { data.append(k, fields[k]); });
    return request(url, { method: "POST", body: data });
  }

  function getJSON(url) {
    return request(url, { method: "GET" });
  }

  /* True when a key press belongs to a text field, not to page shortcuts. */
  function typingInField(event) {
    var t = event.target;
    if (!t || !t.tagName) { return false; }
    var tag = t.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || t.isContentEditable) { return true; }
    if (tag === "input") {
      var type = (t.getAttribute("type") || "text").toLowerCase();
      return ["checkbox", "radio", "button", "submit"].indexOf(type) === -1;
    }
    return false;
  }

  document.addEventListener("DOMContentLoaded", function () {
    // On a phone the menu is one scrollable line: bring the current page's entry into view.
    var nav = document.querySelector(".mainnav");
    if (nav) {
      var here = nav.querySelector('[aria-current="page"]');
      if (here && nav.scrollWidth > nav.clientWidth) {
        nav.scrollLeft = here.offsetLeft - nav.clientWidth / 2 + here.offsetWidth / 2;
      }
      var edges = function () {
        nav.classList.toggle("more-left", nav.scrollLeft > 2);
        nav.classList.toggle("more-right", nav.scrollLeft + nav.clientWidth < nav.scrollWidth - 2);
      };
      nav.addEventListener("scroll", edges, { passive: true });
      window.addEventListener("resize", edges);
      edges();
    }
    // A preset time window and typed dates exclude each other: picking one clears the other.
    document.querySelectorAll("select[data-window-preset]").forEach(function (select) {
      var form = select.form;
      var dates = form.querySelectorAll('input[name="since"], input[name="until"]');
      select.addEventListener("change", function () {
        if (select.value !== "custom") { dates.forEach(function (d) { d.value = ""; }); }
      });
      dates.forEach(function (d) {
        d.addEventListener("change", function () { select.value = "custom"; });
      });
    });

    document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
      form.addEventListener("change", function (e) {
        var t = e.target;
        if (t.tagName === "SELECT" || t.type === "checkbox") { form.requestSubmit ? form.requestSubmit() : form.submit(); }
      });
    });
  });

  window.SW = { csrfToken: csrfToken, postJSON: postJSON, postForm: postForm, getJSON: getJSON, typingInField: typingInField };
})();
