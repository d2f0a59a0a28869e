// keyrelay pool page: polls GET state (one JSON document, see api/ui/state.py) every
// `poll_interval_s`, renders it, ticks the countdowns every second against the server's clock,
// and sends the page's three actions. No framework and no build step: this file is what runs.
// Every value from the server is put in the page as text (textContent), never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
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

  const serverNow = () => Date.now() + clockOffsetMs;

  // -- talking to the server -------------------------------------------------------------------
  async function call(method, path, body) {
    const init = {
      method,
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { detail: text.slice(0, 300) };
      }
    }
    return { response, data };
  }

  function detailOf(data, status) {
    if (!data || data.detail === undefined) return `the server answered HTTP ${status}`;
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) {
      return data.detail.map((p) => `${(p.loc || []).join(".")}: ${p.msg}`).join("; ");
    }
    return JSON.stringify(data.detail);
  }

  function retryAfterS(response, fallback) {
    const value = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(value) && value > 0 ? value : fallback;
  }

  // -- polling ---------------------------------------------------------------------------------
  function schedule(seconds) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, seconds * 1000);
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (document.hidden) return; // resumed by visibilitychange: a hidden tab spends no budget
    if (polling) {
      pollAgain = true; // its answer may predate what the caller just changed
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

  // -- login -----------------------------------------------------------------------------------
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

  // -- messages --------------------------------------------------------------------------------
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

  // -- formatting ------------------------------------------------------------------------------
  // Whole seconds as 0:07, 12:34, 1:02:03 or 2d 3h.
  function duration(seconds) {
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

  function percent(fraction) {
    return `${Math.round(fraction * 100)}%`;
  }

  function number(value) {
    return Number.isInteger(value) ? value.toLocaleString("en") : String(value);
  }

  function el(tag, attrs, ...children) {
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
  function countdown(until, whenPast) {
    return el("span", { class: "countdown", "data-until": until, "data-past": whenPast });
  }

  // A live "time since" `since` (ISO time).
  function age(since) {
    return el("span", { class: "countdown", "data-since": since });
  }

  function tick() {
    const now = serverNow();
    for (const node of document.querySelectorAll("[data-until]")) {
      const left = Date.parse(node.dataset.until) - now;
      // Rounded up: a countdown reads 0:01 until the moment itself, then says what happened.
      node.textContent = left > 0 ? duration(Math.ceil(left / 1000)) : node.dataset.past || "now";
    }
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = duration(Math.floor((now - Date.parse(node.dataset.since)) / 1000));
    }
    const freshness = $("freshness");
    if (lastUpdate === null) return;
    const ago = Math.round((Date.now() - lastUpdate) / 1000);
    const stale = staleReason !== "" || ago > pollInterval * 3;
    freshness.classList.toggle("stale", stale);
    freshness.textContent =
      (staleReason ? `${staleReason} ` : "") + `Updated ${ago <= 1 ? "just now" : `${ago} s ago`}`;
  }

  setInterval(tick, 1000);

  // -- rendering -------------------------------------------------------------------------------
  function render(state) {
    renderProviders(state.providers);
    renderKeys(state.keys, state.leases);
    renderAudit(state.audit, state.keys);
  }

  function renderProviders(providers) {
    const list = $("providers");
    const items = [];
    for (const [provider, s] of Object.entries(providers)) {
      if (!s.total) continue;
      const parts = [
        `${s.available} available`,
        `${s.busy} busy`,
        `${s.cooling} cooling`,
        `${s.disabled} disabled`,
      ];
      const item = el("li", {}, el("strong", { text: provider }), parts.join(" · "));
      if (s.earliest_reset) {
        item.append(" · next reset in ", countdown(s.earliest_reset, "now"));
      }
      items.push(item);
    }
    list.replaceChildren(...items);
  }

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
        for (const label of ["Key", "State", "Priority", "Leases", "Limits", "Held by", "Actions"]) {
          row.append(el("td", { "data-label": label }));
        }
        rows.set(key.id, row);
      }
      const held = byKey.get(key.id) || [];
      updateCell(row.cells[0], [key.name, key.provider, key.group, key.masked], () => keyCell(key));
      updateCell(
        row.cells[1],
        [key.state, key.enabled, key.active_leases, key.cooling_until, key.cooling_reason],
        () => stateCell(key),
      );
      updateCell(row.cells[2], [key.priority], () => [String(key.priority)]);
      row.cells[2].className = "num";
      updateCell(row.cells[3], [key.active_leases, key.max_concurrency], () => [
        `${key.active_leases} / ${key.max_concurrency}`,
      ]);
      row.cells[3].className = "num";
      updateCell(row.cells[4], [key.limits, key.utilization, key.cooling_until, key.state], () =>
        limitsCell(key),
      );
      updateCell(row.cells[5], held, () => holdersCell(held));
      updateCell(row.cells[6], [key.state, key.enabled, key.name, pending.get(key.id)], () =>
        actionsCell(key),
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
    tick();
  }

  // Rebuild a cell only when what it shows changed, so a focused button survives a poll.
  function updateCell(cell, signature, build) {
    const sig = JSON.stringify(signature);
    if (cell.dataset.sig === sig) return;
    cell.dataset.sig = sig;
    cell.replaceChildren(...build());
  }

  function keyCell(key) {
    return [
      el("div", { class: "key-name", text: key.name }),
      el("div", { class: "small", text: key.group ? `${key.provider} · group ${key.group}` : key.provider }),
      el("code", { class: "masked", title: "masked: the secret is never shown", text: key.masked }),
    ];
  }

  function stateCell(key) {
    const out = [];
    if (!key.enabled && key.active_leases > 0) {
      const n = key.active_leases;
      out.push(
        el("span", {
          class: "badge draining",
          text: `draining (${n} ${n === 1 ? "lease" : "leases"} finishing)`,
        }),
        el("div", { class: "small", text: "disabled: no new leases" }),
      );
      return out;
    }
    out.push(el("span", { class: `badge ${key.state}`, text: key.state }));
    if (key.state === "cooling" && key.cooling_until) {
      out.push(
        el("div", {}, "resets in ", countdown(key.cooling_until, "now (updating…)")),
      );
    }
    if ((key.state === "cooling" || key.state === "unusable") && key.cooling_reason) {
      out.push(el("div", { class: "small reason", text: key.cooling_reason }));
    }
    return out;
  }

  function usedFraction(limit) {
    if (typeof limit.utilization === "number") return limit.utilization;
    if (typeof limit.limit === "number" && limit.limit > 0 && typeof limit.remaining === "number") {
      return 1 - limit.remaining / limit.limit;
    }
    return null;
  }

  // Per-window limit state when the keystore reports it (`limits`), else the key's single
  // utilization and cooling deadline.
  function limitsCell(key) {
    let windows;
    if (Array.isArray(key.limits) && key.limits.length > 0) {
      windows = key.limits.map((l) => ({
        label: l.bucket,
        used: usedFraction(l),
        remaining: l.remaining,
        limit: l.limit,
        resetAt: l.reset_at,
      }));
    } else if (typeof key.utilization === "number") {
      windows = [{
        label: "utilization",
        used: key.utilization,
        resetAt: key.state === "cooling" ? key.cooling_until : null,
      }];
    } else {
      return [el("span", { class: "small", text: "no limits reported yet" })];
    }
    const list = el("ul", { class: "limits" });
    for (const w of windows) {
      const used = typeof w.used === "number" ? Math.min(1, Math.max(0, w.used)) : null;
      const facts = [];
      if (used !== null) facts.push(`${percent(w.used)} used`);
      if (typeof w.remaining === "number") {
        facts.push(
          typeof w.limit === "number"
            ? `${number(w.remaining)} of ${number(w.limit)} left`
            : `${number(w.remaining)} left`,
        );
      }
      const head = el("div", { class: "limit-head" }, el("span", { text: w.label }), el("span", { text: facts.join(" · ") }));
      const item = el("li", {}, head);
      if (used !== null) {
        const fill = el("div", { class: `fill${used >= 0.95 ? " full" : used >= 0.8 ? " warn" : ""}` });
        fill.style.width = percent(used);
        item.append(
          el(
            "div",
            {
              class: "meter",
              role: "progressbar",
              "aria-label": `${w.label} used`,
              "aria-valuemin": 0,
              "aria-valuemax": 100,
              "aria-valuenow": Math.round(used * 100),
            },
            fill,
          ),
        );
      }
      if (w.resetAt) {
        item.append(el("div", { class: "small" }, "resets in ", countdown(w.resetAt, "reset")));
      }
      list.append(item);
    }
    return [list];
  }

  function holdersCell(held) {
    if (held.length === 0) return [el("span", { class: "small", text: "—" })];
    const list = el("ul", { class: "holders" });
    for (const lease of held) {
      let who;
      if (lease.flow_run_id) {
        const label = `flow run ${lease.flow_run_id.slice(0, 8)} · turn ${lease.turn}`;
        who = lease.flow_run_url
          ? el("a", {
              href: lease.flow_run_url,
              target: "_blank",
              rel: "noopener noreferrer",
              title: lease.holder,
              "aria-label": `Prefect flow run ${lease.flow_run_id}, turn ${lease.turn} (opens in a new tab)`,
              text: label,
            })
          : el("span", { title: `${lease.holder} (set PREFECT_UI_URL for a link)`, text: label });
      } else {
        who = el("code", { text: lease.holder || "(no holder)" });
      }
      const times = el("div", { class: "small" });
      if (lease.acquired_at) times.append("held ", age(lease.acquired_at), " · ");
      times.append("expires in ", countdown(lease.expires_at, "now"));
      list.append(el("li", {}, who, times));
    }
    return [list];
  }

  function actionsCell(key) {
    const busy = pending.get(key.id);
    const box = el("div", { class: "actions" });
    if (key.state === "cooling" || key.state === "unusable") {
      const cooling = key.state === "cooling";
      const button = el("button", {
        type: "button",
        "data-role": "reset",
        "aria-label": cooling ? `Reset cooling of ${key.name}` : `Mark ${key.name} usable again`,
        title: "Clear the cooling and unusable marks: the key can be leased again at once",
        text: busy === "reset" ? "Resetting…" : cooling ? "Reset cooling" : "Mark usable",
      });
      if (busy) button.setAttribute("aria-busy", "true");
      button.addEventListener("click", () => act(key, "reset"));
      box.append(button);
    }
    const disable = key.enabled;
    const toggle = el("button", {
      type: "button",
      class: disable ? "danger" : "secondary",
      "data-role": "toggle",
      "aria-label": `${disable ? "Disable" : "Enable"} ${key.name}`,
      title: disable
        ? "Drain: leases already out finish; no new ones are taken"
        : "Put the key back in the pool",
      text:
        busy === "disable" ? "Disabling…" : busy === "enable" ? "Enabling…" : disable ? "Disable" : "Enable",
    });
    if (busy) toggle.setAttribute("aria-busy", "true");
    toggle.addEventListener("click", () => act(key, disable ? "disable" : "enable"));
    box.append(toggle);
    return [box];
  }

  function detailsText(details) {
    return Object.entries(details || {})
      .map(([name, value]) => {
        let text = typeof value === "string" ? value : JSON.stringify(value);
        if (text.length > 80) text = `${text.slice(0, 79)}…`;
        return `${name}=${text}`;
      })
      .join(" ");
  }

  function renderAudit(events, keys) {
    const body = $("audit").querySelector("tbody");
    const sig = JSON.stringify([events.map((e) => e.id), keys.map((k) => [k.id, k.name])]);
    if (body.dataset.sig === sig) return;
    body.dataset.sig = sig;
    const names = new Map(keys.map((k) => [k.id, k.name]));
    const lines = events.map((event) => {
      const at = new Date(event.at);
      const key =
        event.key_id === null ? "" : names.has(event.key_id) ? `${names.get(event.key_id)} (#${event.key_id})` : `#${event.key_id}`;
      return el(
        "tr",
        {},
        el("td", {}, el("time", { datetime: event.at, title: event.at, text: at.toLocaleTimeString([], { hour12: false }) })),
        el("td", {}, el("code", { text: event.type })),
        el("td", { text: key }),
        el("td", { class: "small", text: event.run_id || "" }),
        el("td", { class: "details", text: detailsText(event.details) }),
      );
    });
    if (lines.length === 0) {
      lines.push(el("tr", {}, el("td", { colspan: 5, class: "small", text: "No events yet." })));
    }
    body.replaceChildren(...lines);
  }

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
})();
