// The keybus console's own script (served from /console/static/console.js; the
// Content-Security-Policy allows no inline script and no eval).
//
// 1. CSRF: every htmx request carries the session's token in `X-Keybus-Csrf` (read from
//    <meta name="keybus-csrf">); the broker refuses a POST without it.
// 2. Live counts: an element with `data-live="<url>"` opens a server-sent event stream; each
//    `counts` event is a JSON list of rows `{k, active, dead_letter, scheduled, deferred,
//    size, in_rate, out_rate}` and updates the cells marked `data-k="<k>" data-f="<field>"`. No polling loop.
(function () {
  "use strict";
  function csrf() {
    var m = document.querySelector('meta[name="keybus-csrf"]');
    return m ? m.getAttribute("content") : "";
  }
  document.addEventListener("htmx:configRequest", function (e) {
    e.detail.headers["X-Keybus-Csrf"] = csrf() || "signin";
  });
  function live(el) {
    var url = el.getAttribute("data-live");
    if (!url || !window.EventSource) { return; }
    var es = new EventSource(url);
    es.addEventListener("counts", function (ev) {
      var rows;
      try { rows = JSON.parse(ev.data); } catch (_) { return; }
      rows.forEach(function (row) {
        ["active", "dead_letter", "scheduled", "deferred", "size", "in_rate", "out_rate"].forEach(function (f) {
          var sel = 'td[data-k="' + CSS.escape(row.k) + '"][data-f="' + f + '"]';
          var cell = el.querySelector(sel);
          if (cell && cell.textContent !== String(row[f])) { cell.textContent = String(row[f]); }
        });
      });
      el.setAttribute("data-updated", String(Date.now()));
    });
  }
  function start() {
    document.querySelectorAll("[data-live]").forEach(live);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
