// The parts of the page that show one thing each: a provider's counts, a key's cells, the
// audit table. Each returns nodes; app.js decides when to put them in.

import { $, age, countdown, el, number, percent } from "./dom.js";

export function renderProviders(providers) {
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

export function keyCell(key) {
  return [
    el("div", { class: "key-name", text: key.name }),
    el("div", { class: "small", text: key.group ? `${key.provider} · group ${key.group}` : key.provider }),
    el("code", { class: "masked", title: "masked: the secret is never shown", text: key.masked }),
  ];
}

export function stateCell(key) {
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

// Each limit window the key's provider reported (`limits`, until its reset).
export function limitsCell(key) {
  if (!Array.isArray(key.limits) || key.limits.length === 0) {
    return [el("span", { class: "small", text: "no limits reported yet" })];
  }
  const windows = key.limits.map((l) => ({
    label: l.bucket,
    used: usedFraction(l),
    remaining: l.remaining,
    limit: l.limit,
    resetAt: l.reset_at,
  }));
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

export function holdersCell(held) {
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

export function actionsCell(key, busy, onAction) {
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
    button.addEventListener("click", () => onAction(key, "reset"));
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
  toggle.addEventListener("click", () => onAction(key, disable ? "disable" : "enable"));
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

export function renderAudit(events, keys) {
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
