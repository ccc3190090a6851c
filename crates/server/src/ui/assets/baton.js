// baton's web UI: everything here is an addition; every page reads without it.
// - forms with data-confirm ask before they are sent;
// - an element with data-live-events and data-live-src is refreshed from data-live-src
//   (an HTML fragment) each time the server-sent event stream at data-live-events says
//   something changed.
"use strict";

function bindConfirms(root) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    if (form.dataset.confirmBound) continue;
    form.dataset.confirmBound = "1";
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

function live(element) {
  const events = element.dataset.liveEvents;
  const src = element.dataset.liveSrc;
  const state = document.querySelector("[data-live-state]");
  let fetching = false;
  let again = false;
  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const response = await fetch(src, { credentials: "same-origin", headers: { "accept": "text/html" } });
      if (response.ok) {
        element.innerHTML = await response.text();
        bindConfirms(element);
        element.dataset.liveVersion = String(Number(element.dataset.liveVersion || "0") + 1);
        element.dataset.liveAt = String(Date.now());
      }
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  }
  const source = new EventSource(events);
  source.addEventListener("change", refresh);
  source.addEventListener("open", () => { if (state) state.textContent = "Live"; });
  source.addEventListener("error", () => { if (state) state.textContent = "Reconnecting…"; });
}

document.addEventListener("DOMContentLoaded", () => {
  bindConfirms(document);
  for (const element of document.querySelectorAll("[data-live-events][data-live-src]")) live(element);
});
