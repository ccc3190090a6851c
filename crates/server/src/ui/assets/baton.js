// baton's web UI: everything here is an addition; every page reads without it.
// - forms with data-confirm ask before they are sent;
// - an element with data-live-events and data-live-src is refreshed from data-live-src
//   (an HTML fragment) each time the server-sent event stream at data-live-events says
//   something changed; what the person was doing in it (open <details>, text typed, the
//   focused control) survives the refresh;
// - a <details data-log-src> loads the log from that address when it is opened;
// - a link to #id of a closed <details> opens it.
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
        const text = await response.text();
        const kept = remember(element);
        element.innerHTML = text;
        restore(element, kept);
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

// <details> the person opened or closed, by id: a refresh keeps their choice, and the
// server's default (what needs a person starts open) holds for the rest.
const chosen = new Map();

// What a refresh would lose besides: what was typed, and what had focus.
function remember(element) {
  const typed = [];
  for (const field of element.querySelectorAll("form input:not([type=hidden]), form textarea")) {
    if (field.value) typed.push([field.form.getAttribute("action"), field.name, field.value]);
  }
  const active = document.activeElement;
  let focus = null;
  if (active && element.contains(active)) {
    if (active.id) focus = "#" + CSS.escape(active.id);
    else if (active.getAttribute("href")) focus = `a[href="${CSS.escape(active.getAttribute("href"))}"]`;
    else if (active.form) focus = `form[action="${CSS.escape(active.form.getAttribute("action"))}"] [name="${CSS.escape(active.name || "")}"]`;
  }
  return { typed, focus };
}

function restore(element, kept) {
  for (const [id, open] of chosen) {
    const details = document.getElementById(id);
    if (details && details.tagName === "DETAILS" && element.contains(details)) details.open = open;
  }
  for (const [action, name, value] of kept.typed) {
    const form = element.querySelector(`form[action="${CSS.escape(action)}"]`);
    const field = form && form.elements.namedItem(name);
    if (field && !field.value) field.value = value;
  }
  if (kept.focus) {
    const target = element.querySelector(kept.focus);
    if (target) target.focus({ preventScroll: true });
  }
}

async function loadLog(details) {
  const body = details.querySelector(".log-body");
  if (!body || details.dataset.logLoading) return;
  details.dataset.logLoading = "1";
  body.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(details.dataset.logSrc, { credentials: "same-origin", headers: { "accept": "text/html" } });
    if (response.ok) body.innerHTML = await response.text();
  } finally {
    body.removeAttribute("aria-busy");
    delete details.dataset.logLoading;
  }
}

function openTarget(hash) {
  if (!hash || hash.length < 2) return;
  const target = document.getElementById(decodeURIComponent(hash.slice(1)));
  if (target && target.tagName === "DETAILS") {
    target.open = true;
    chosen.set(target.id, true);
  }
}

// <details> do not bubble "toggle": listen while it goes down.
document.addEventListener("toggle", (event) => {
  const details = event.target;
  if (details instanceof HTMLDetailsElement && details.open && details.dataset.logSrc) loadLog(details);
}, true);

// Also when the address already ends in that #id, where no hashchange follows.
// A click on a summary (or Enter or Space on it) is the person's choice; it toggles after.
document.addEventListener("click", (event) => {
  if (!(event.target instanceof Element)) return;
  const link = event.target.closest("a[href^='#']");
  if (link) openTarget(link.getAttribute("href"));
  const summary = event.target.closest("summary");
  const details = summary && summary.parentElement;
  if (details && details.tagName === "DETAILS" && details.id) chosen.set(details.id, !details.open);
});
window.addEventListener("hashchange", () => openTarget(location.hash));

document.addEventListener("DOMContentLoaded", () => {
  openTarget(location.hash);
  bindConfirms(document);
  for (const element of document.querySelectorAll("[data-live-events][data-live-src]")) live(element);
});
