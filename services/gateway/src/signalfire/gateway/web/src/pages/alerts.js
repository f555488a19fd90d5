// Alerts: active and history with filters, detail with timeline and deliveries, actions.

import { api, session } from "../api.js";
import { h, clear, severityBadge, statusBadge, formatTime, formatValue, toast, attempt } from "../dom.js";
import { createSilence } from "./lists.js";
import { onFrame, subscribe } from "../stream.js";

function alertStatus(a) {
  return a.status === "firing" && a.acknowledged_at ? "acknowledged" : a.status;
}

export async function alertsPage(main, alertId) {
  if (alertId) return alertDetail(main, alertId);
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = { status: query.get("status") || "firing", severity: query.get("severity") || "", host: query.get("host") || "", rule: query.get("rule") || "" };
  const body = h("tbody", { id: "alert-rows" });
  const select = (name, options) => h("label", {}, name,
    h("select", { name, onchange: (e) => { filters[name] = e.target.value; load(); } },
      options.map((o) => h("option", { value: o, selected: filters[name] === o }, o || "any"))));
  const text = (name) => h("label", {}, name, h("input", { name, value: filters[name], onchange: (e) => { filters[name] = e.target.value; load(); } }));
  const notify = h("label", {}, h("input", { type: "checkbox", id: "notify-me", onchange: async (e) => {
    if (e.target.checked && "Notification" in window && Notification.permission !== "granted") await Notification.requestPermission();
  } }), " browser notification and sound for new alerts");
  clear(main,
    h("h1", {}, "Alerts"),
    h("div", { class: "filters" }, select("status", ["firing", "resolved", ""]), select("severity", ["", "critical", "high", "medium", "low"]), text("host"), text("rule"), notify),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["severity", "alert", "host", "status", "value", "since", session.canAct() ? "actions" : null].filter(Boolean).map((c) => h("th", { scope: "col" }, c)))),
      body)));

  async function load() {
    const { alerts } = await api("/alerts", { params: { ...filters, limit: 200 } });
    clear(body, alerts.length ? alerts.map(row) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No alerts match.")));
  }

  function row(a) {
    return h("tr", { dataset: { alert: a.id } },
      h("td", {}, severityBadge(a.severity)),
      h("td", {}, h("a", { href: `#/alerts/${encodeURIComponent(a.id)}` }, a.rule), h("div", { class: "muted" }, (a.annotations || {}).summary || "")),
      h("td", {}, a.host),
      h("td", {}, statusBadge(alertStatus(a))),
      h("td", {}, formatValue(a.value)),
      h("td", {}, formatTime(a.starts_at)),
      session.canAct() ? h("td", {}, actionButtons(a, load)) : null);
  }

  await load();
  subscribe({ alerts: true });
  const off = onFrame((frame) => {
    if (frame.kind !== "alert") return;
    load();
    if (frame.status === "firing" && document.getElementById("notify-me")?.checked) announce(frame);
  });
  return off;
}

function announce(alert) {
  if ("Notification" in window && Notification.permission === "granted") new Notification(`${alert.severity}: ${alert.rule}`, { body: `${alert.host}` });
  try {
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    osc.connect(ctx.destination);
    osc.frequency.value = alert.severity === "critical" ? 880 : 660;
    osc.start();
    osc.stop(ctx.currentTime + 0.15);
  } catch { /* sound is optional */ }
}

export function actionButtons(a, after) {
  const words = { ack: "Acknowledge", unack: "Unacknowledge", resolve: "Resolve" };
  // The row's buttons wait while an action is on its way: the gateway answers once NATS took
  // it, which may take seconds while a NATS node dies (publish_wait), and a second click
  // would be a second action.
  const act = async (verb, button) => {
    const row = button.parentElement;
    const buttons = [...row.querySelectorAll("button")];
    for (const b of buttons) b.disabled = true;
    row.setAttribute("aria-busy", "true");
    try {
      await attempt(`${words[verb]} ${a.rule} on ${a.host}`, async () => {
        await api(`/alerts/${encodeURIComponent(a.id)}/${verb}`, { method: "POST", body: {} });
        toast(`${words[verb]} sent for ${a.rule} on ${a.host}`);
        after && after();
      });
    } finally {
      for (const b of buttons) b.disabled = false;
      row.removeAttribute("aria-busy");
    }
  };
  const acked = Boolean(a.acknowledged_at);
  return h("div", { class: "actions" },
    a.status === "firing" ? h("button", { type: "button", onclick: (e) => act(acked ? "unack" : "ack", e.currentTarget), "aria-label": `${acked ? "Unacknowledge" : "Acknowledge"} ${a.rule} on ${a.host}` }, acked ? "Unacknowledge" : "Acknowledge") : null,
    a.status === "firing" ? h("button", { type: "button", onclick: (e) => act("resolve", e.currentTarget), "aria-label": `Resolve ${a.rule} on ${a.host}` }, "Resolve") : null);
}

async function alertDetail(main, id) {
  const a = await api(`/alerts/${encodeURIComponent(id)}`);
  const note = h("textarea", { id: "note", rows: 3, "aria-label": "Note" });
  clear(main,
    h("p", {}, h("a", { href: "#/alerts" }, "\u2190 all alerts")),
    h("h1", {}, severityBadge(a.severity), " ", a.rule, " on ", a.host),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Alert"), h("dl", { class: "kv" },
        h("dt", {}, "status"), h("dd", {}, statusBadge(alertStatus(a))),
        h("dt", {}, "value"), h("dd", {}, formatValue(a.value)),
        h("dt", {}, "threshold"), h("dd", {}, formatValue(a.threshold)),
        h("dt", {}, "started"), h("dd", {}, formatTime(a.starts_at)),
        h("dt", {}, "ended"), h("dd", {}, formatTime(a.ends_at)),
        a.acknowledged_by ? [h("dt", {}, "acknowledged"), h("dd", {}, `${a.acknowledged_by}, ${formatTime(a.acknowledged_at)}`)] : null,
        Object.entries(a.labels || {}).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
        Object.entries(a.annotations || {}).map(([k, v]) => [h("dt", {}, k), h("dd", { class: `annotation-${k}` }, v)]))),
      h("section", { class: "panel" }, h("h2", {}, "Timeline"), h("ol", { class: "timeline", id: "timeline" }, (a.history || []).map(timelineEntry))),
      h("section", { class: "panel" }, h("h2", {}, "Deliveries"), (a.deliveries || []).length ? h("ul", { class: "deliveries", id: "deliveries" }, a.deliveries.map((d) =>
        h("li", {}, h("strong", {}, d.channel), " ", d.status, ` · ${d.transition || "firing"} · attempt ${d.attempt} · `, formatTime(d.time),
          d.error || d.reason ? h("p", { class: "delivery-error" }, d.error || d.reason) : null)))
        : h("p", { class: "muted" }, "None yet."))),
    session.canAct() ? h("section", { class: "panel act" },
      h("h2", {}, "Act"),
      actionButtons(a, () => alertDetail(main, id)),
      h("label", { for: "note" }, "Note"), note,
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => attempt("Adding the note", async () => {
          await api(`/alerts/${encodeURIComponent(id)}/notes`, { method: "POST", body: { note: note.value } });
          toast("note added");
          await alertDetail(main, id);
        }) }, "Add note"),
        h("button", { type: "button", onclick: () => attempt(`Silencing ${a.rule} on ${a.host}`, async () => {
          await createSilence([{ name: "rule", value: a.rule }, { name: "host", value: a.host }], "1h", `silenced from alert ${a.id}`);
          toast(`${a.rule} on ${a.host} silenced for 1 h (see Silences)`);
        }) }, "Silence 1 h"))) : null);
}

const EVENT_WORDS = { ack: "acknowledged", unack: "acknowledgement withdrawn", resolve: "resolved by hand", note: "note" };

/** One line of an alert's timeline: what happened, who did it, and their note. */
function timelineEntry(e) {
  const p = e.payload || {};
  return h("li", { class: `timeline-${e.event}` },
    formatTime(e.time), " ", h("strong", {}, EVENT_WORDS[e.event] || e.event),
    p.actor ? ` by ${p.actor}` : "",
    e.event === "firing" && p.value !== undefined && p.value !== null ? ` at ${formatValue(p.value)}` : "",
    p.note ? h("blockquote", { class: "timeline-note" }, p.note) : null);
}
