// keyrelay pool page: polls GET state (one JSON document, see api/ui/state.py) every
// `poll_interval_s`, renders it, ticks the countdowns every second against the server's clock,
// and sends the page's three actions. No framework and no build step: these modules are what
// the browser runs (dom.js: building and formatting; cells.js: what each part shows;
// server.js: requests).

import { actionsCell, holdersCell, keyCell, limitsCell, renderAudit, renderProviders, stateCell } from "./cells.js";
import { $, el, updateCountdowns } from "./dom.js";
import { call, detailOf, retryAfterS } from "./server.js";

const FALLBACK_POLL_S = 2;
const RETRY_AFTER_ERROR_S = 5;

let clockOffsetMs = 0; // the server's clock minus the browser's
let pollTimer = null;
let pollInterval = FALLBACK_POLL_S;
let lastUpdate = null; // browser time of the last good poll
let staleReason = "";
let polling = false;
let pollAgain = false; // a poll was asked for while one was in flight
const pending = new Map(); // key id -> the action in flight ("reset" | "disable" | "enable")
let focusAfterRender = null; // {keyId, role}: give focus back to a rebuilt button
const rows = new Map(); // key id -> <tr>

// -- polling -----------------------------------------------------------------------------------
function schedule(seconds) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, seconds * 1000);
}

async function poll() {
  clearTimeout(pollTimer);
  if (document.hidden) return; // resumed by visibilitychange: a hidden tab spends no budget
  if (polling) {
    pollAgain = true; // the answer in flight may predate what the caller just changed
    return;
  }
  polling = true;
  let next = pollInterval;
  try {
    const sent = Date.now();
    const { response, data } = await call("GET", "state");
    if (response.status === 200) {
      clockOffsetMs = Date.parse(data.now) - (sent + Date.now()) / 2;
      pollInterval = data.poll_interval_s || FALLBACK_POLL_S;
      next = pollInterval;
      lastUpdate = Date.now();
      staleReason = "";
      showPool();
      render(data);
    } else if (response.status === 401) {
      showLogin(detailOf(data, 401));
      return; // polling starts again after a login
    } else if (response.status === 429) {
      next = retryAfterS(response, 30);
      staleReason =
        `Paused for ${next} s: ${detailOf(data, 429)} ` +
        "(is the page open in another tab from this address?)";
    } else {
      next = RETRY_AFTER_ERROR_S;
      staleReason = `The server answered ${response.status}: ${detailOf(data, response.status)}`;
    }
  } catch {
    next = RETRY_AFTER_ERROR_S;
    staleReason = "Lost contact with the server; retrying.";
  } finally {
    polling = false;
  }
  tick();
  if (pollAgain) {
    pollAgain = false;
    next = 0;
  }
  schedule(next);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && !$("pool").hidden) poll();
});

function tick() {
  updateCountdowns(Date.now() + clockOffsetMs);
  const freshness = $("freshness");
  if (lastUpdate === null) {
    if (staleReason) freshness.textContent = staleReason; // refused before the first render
    freshness.classList.toggle("stale", staleReason !== "");
    return;
  }
  const ago = Math.round((Date.now() - lastUpdate) / 1000);
  freshness.classList.toggle("stale", staleReason !== "" || ago > pollInterval * 3);
  freshness.textContent =
    (staleReason ? `${staleReason} ` : "") + `Updated ${ago <= 1 ? "just now" : `${ago} s ago`}`;
}

setInterval(tick, 1000);

// -- login -------------------------------------------------------------------------------------
function showLogin(why) {
  clearTimeout(pollTimer);
  $("pool").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("freshness").textContent = "Not logged in";
  $("freshness").classList.remove("stale");
  const expired = why && !why.startsWith("log in");
  $("login-error").textContent = expired ? why : "";
  $("token").focus();
}

function showPool() {
  if (!$("pool").hidden) return;
  $("login").hidden = true;
  $("pool").hidden = false;
  $("logout").hidden = false;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("token");
  const button = event.target.querySelector("button");
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    const { response, data } = await call("POST", "login", { token: input.value });
    if (response.status === 204) {
      input.value = "";
      await poll();
    } else {
      $("login-error").textContent = `Login refused: ${detailOf(data, response.status)}`;
      input.select();
    }
  } catch {
    $("login-error").textContent = "Could not reach the server.";
  } finally {
    button.disabled = false;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await call("POST", "logout");
  } finally {
    showLogin("");
  }
});

// -- messages ----------------------------------------------------------------------------------
function showError(text) {
  $("alert-text").textContent = text;
  $("alert").hidden = false;
}

$("alert-dismiss").addEventListener("click", () => {
  $("alert").hidden = true;
});

function showNotice(text) {
  $("notice").textContent = text;
}

// -- rendering ---------------------------------------------------------------------------------
function render(state) {
  renderProviders(state.providers);
  renderKeys(state.keys, state.leases);
  renderAudit(state.audit, state.keys);
  tick();
}

const COLUMNS = ["Key", "State", "Priority", "Leases", "Limits", "Held by", "Actions"];

function renderKeys(keys, leases) {
  const body = $("keys").querySelector("tbody");
  $("no-keys").hidden = keys.length > 0;
  const byKey = new Map();
  for (const lease of leases) {
    if (!byKey.has(lease.key_id)) byKey.set(lease.key_id, []);
    byKey.get(lease.key_id).push(lease);
  }
  const seen = new Set();
  for (const key of keys) {
    seen.add(key.id);
    let row = rows.get(key.id);
    if (!row) {
      row = el("tr", { "data-key-id": key.id });
      for (const label of COLUMNS) row.append(el("td", { "data-label": label }));
      row.cells[2].className = "num";
      row.cells[3].className = "num";
      rows.set(key.id, row);
    }
    const held = byKey.get(key.id) || [];
    const busy = pending.get(key.id);
    const [name, state, priority, slots, limits, holders, actions] = row.cells;
    updateCell(name, [key.name, key.provider, key.group, key.masked], () => keyCell(key));
    updateCell(
      state,
      [key.state, key.enabled, key.active_leases, key.cooling_until, key.cooling_reason],
      () => stateCell(key),
    );
    updateCell(priority, [key.priority], () => [String(key.priority)]);
    updateCell(slots, [key.active_leases, key.max_concurrency], () => [
      `${key.active_leases} / ${key.max_concurrency}`,
    ]);
    updateCell(limits, [key.limits], () =>
      limitsCell(key),
    );
    updateCell(holders, held, () => holdersCell(held));
    updateCell(actions, [key.state, key.enabled, key.name, busy], () =>
      actionsCell(key, busy, act),
    );
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  // Reorder only when the order changed: moving a row would take focus from its buttons.
  const wanted = keys.map((k) => rows.get(k.id));
  const current = Array.from(body.rows);
  if (wanted.length !== current.length || wanted.some((row, i) => row !== current[i])) {
    body.replaceChildren(...wanted);
  }
  if (focusAfterRender) {
    const row = rows.get(focusAfterRender.keyId);
    const target = row && row.querySelector(`[data-role="${focusAfterRender.role}"]`);
    if (target) target.focus();
    focusAfterRender = null;
  }
}

// Rebuild a cell only when what it shows changed, so a focused button survives a poll.
function updateCell(cell, signature, build) {
  const sig = JSON.stringify(signature);
  if (cell.dataset.sig === sig) return;
  cell.dataset.sig = sig;
  cell.replaceChildren(...build());
}

// -- actions: the API's rules, through the page's routes ---------------------------------------
async function act(key, action) {
  if (pending.has(key.id)) return;
  pending.set(key.id, action);
  const row = rows.get(key.id);
  for (const button of row ? row.querySelectorAll("button") : []) {
    button.setAttribute("aria-busy", "true");
  }
  const [method, path, body, done] = {
    reset: [
      "POST",
      `keys/${key.id}/reset`,
      undefined,
      `${key.state === "cooling" ? "cooling reset" : "marked usable"}; it can be leased again`,
    ],
    disable: ["PATCH", `keys/${key.id}`, { enabled: false }, "disabled; leases out finish, no new ones"],
    enable: ["PATCH", `keys/${key.id}`, { enabled: true }, "enabled; back in the pool"],
  }[action];
  try {
    const { response, data } = await call(method, path, body);
    if (response.ok) {
      $("alert").hidden = true;
      showNotice(`${key.name}: ${done}.`);
    } else if (response.status === 401) {
      showLogin(detailOf(data, 401));
      return;
    } else {
      showError(`Could not ${action} ${key.name}: ${detailOf(data, response.status)}`);
    }
  } catch {
    showError(`Could not ${action} ${key.name}: the server could not be reached.`);
  } finally {
    pending.delete(key.id);
  }
  // The button pressed is rebuilt (a reset removes it; a toggle changes its label): keep the
  // keyboard focus in the row, on the toggle.
  focusAfterRender = { keyId: key.id, role: "toggle" };
  await poll();
}

poll();
