// Fleet console: keeps the element #live up to date by fetching its data-src (the same page,
// server-rendered, partial=1) every data-refresh milliseconds. Written for this console; no
// library needed. While a request is out, no other starts. A 503 carries what is down (Redis,
// the control plane): it is shown in place and the page is marked "outage"; any other failure
// marks it stale. A form with data-confirm asks first, and says so to the server (confirm=1).
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var form = e.target, question = form.getAttribute && form.getAttribute("data-confirm");
    if (!question) { return; }
    if (!window.confirm(question)) { e.preventDefault(); return; }
    var yes = document.createElement("input");
    yes.type = "hidden"; yes.name = "confirm"; yes.value = "1";
    form.appendChild(yes);
  }, true);
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  var every = parseInt(document.body.getAttribute("data-refresh"), 10) || 2000;
  if (!live) { if (state) { state.hidden = true; } return; }
  var busy = false;
  function mark(text) { if (state) { state.textContent = text; state.className = text === "live" ? "live" : "live stale"; } }
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(live.getAttribute("data-src"), {headers: {"Accept": "text/html"}, credentials: "same-origin"})
      .then(function (r) {
        if (!r.ok && r.status !== 503) { throw new Error(r.status); }
        return r.text().then(function (html) { live.innerHTML = html; mark(r.ok ? "live" : "outage"); });
      })
      .catch(function () { mark("stale"); })
      .finally(function () { busy = false; });
  }
  setInterval(tick, every);
})();
