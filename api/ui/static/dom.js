// Building the page from data: elements filled with text (never HTML parsed from a value, so a
// key's name cannot inject markup), number and duration formats, and live countdowns.

export const $ = (id) => document.getElementById(id);

// Whole seconds as 0:07, 12:34, 1:02:03 or 2d 3h.
export function duration(seconds) {
  const total = Math.max(0, seconds);
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (d > 0) return `${d}d ${h}h`;
  const mm = h > 0 ? String(m).padStart(2, "0") : String(m);
  const ss = String(s).padStart(2, "0");
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function percent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

export function number(value) {
  return Number.isInteger(value) ? value.toLocaleString("en") : String(value);
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A live countdown to `until` (ISO time); `tick()` keeps its text current.

// A live countdown to `until` (ISO time); `tick()` keeps its text current.
export function countdown(until, whenPast) {
  return el("span", { class: "countdown", "data-until": until, "data-past": whenPast });
}

// A live "time since" `since` (ISO time).

// A live "time since" `since` (ISO time).
export function age(since) {
  return el("span", { class: "countdown", "data-since": since });
}

// Bring every countdown and "time since" on the page up to `nowMs` (the server's clock).
export function updateCountdowns(nowMs) {
  for (const node of document.querySelectorAll("[data-until]")) {
    const left = Date.parse(node.dataset.until) - nowMs;
    // Rounded up: a countdown reads 0:01 until the moment itself, then says what happened.
    node.textContent = left > 0 ? duration(Math.ceil(left / 1000)) : node.dataset.past || "now";
  }
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = duration(Math.floor((nowMs - Date.parse(node.dataset.since)) / 1000));
  }
}
