// Fleet console: keeps the element #live up to date by fetching its data-src (the same page,
// server-rendered, partial=1) every data-refresh milliseconds. Written for this console; no
// library needed. While a request is out, no other starts; a failed one marks the page stale.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  var every = parseInt(document.body.getAttribute("data-refresh"), 10) || 2000;
  if (!live) { if (state) { state.hidden = true; } return; }
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(live.getAttribute("data-src"), {headers: {"Accept": "text/html"}, credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        live.innerHTML = html;
        if (state) { state.textContent = "live"; state.className = "live"; }
      })
      .catch(function () { if (state) { state.textContent = "stale"; state.className = "live stale"; } })
      .finally(function () { busy = false; });
  }
  setInterval(tick, every);
})();
