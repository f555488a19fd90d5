// Rules (read-only, with active alerts), silences and the notification log.

import { api, session } from "../api.js";
import { h, clear, severityBadge, formatTime, toast } from "../dom.js";

function table(columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing here.")))));
}

export async function rulesPage(main) {
  clear(main, h("h1", {}, "Rules"), h("p", { class: "muted" }, "Loading…"));
  let reply;
  try { reply = await api("/rules"); } catch (err) { clear(main, h("h1", {}, "Rules"), h("p", { role: "alert" }, err.message)); return; }
  const rules = reply.rules || [];
  clear(main, h("h1", {}, "Rules"), table(["rule", "kind", "severity", "condition", "active alerts"], rules.map((r) =>
    h("tr", {}, h("td", {}, r.name), h("td", {}, r.kind || "threshold"), h("td", {}, severityBadge(r.severity)),
      h("td", {}, [r.metric, r.aggregate, r.condition, r.for ? `for ${r.for}s` : ""].filter(Boolean).join(" ")),
      h("td", {}, (r.alerts || r.active || []).length)))));
}

export async function silencesPage(main) {
  const load = async () => {
    const { silences } = await api("/silences");
    clear(list, table(["matchers", "until", "author", "comment", session.canAct() ? "" : null].filter((c) => c !== null), silences.map((s) =>
      h("tr", {}, h("td", {}, Object.entries(s.matchers || {}).map(([k, v]) => `${k}=${v}`).join(", ")), h("td", {}, formatTime(s.ends_at)),
        h("td", {}, s.author || ""), h("td", {}, s.comment || ""),
        session.canAct() ? h("td", {}, h("button", { type: "button", onclick: async () => { await api(`/silences/${encodeURIComponent(s.id)}`, { method: "DELETE" }); toast("silence expired"); load(); } }, "Expire")) : null))));
  };
  const list = h("div", {});
  const form = session.canAct() ? h("form", { class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    const matchers = {};
    for (const part of String(data.get("matchers")).split(",")) { const [k, v] = part.split("="); if (k && v) matchers[k.trim()] = v.trim(); }
    await api("/silences", { method: "POST", body: { matchers, ends_at: Date.now() / 1000 + Number(data.get("hours")) * 3600, comment: data.get("comment") } });
    toast("silence created");
    load();
  } }, h("label", {}, "matchers", h("input", { name: "matchers", placeholder: "host=web-1, rule=HighCPU", required: true })),
    h("label", {}, "hours", h("input", { name: "hours", type: "number", min: "0.25", step: "0.25", value: "1" })),
    h("label", {}, "comment", h("input", { name: "comment" })),
    h("button", { type: "submit", class: "primary" }, "Create silence")) : null;
  clear(main, h("h1", {}, "Silences"), form, list);
  await load();
}

export async function notificationsPage(main) {
  const { notifications } = await api("/notifications", { params: { limit: 200 } });
  clear(main, h("h1", {}, "Notification log"), table(["time", "channel", "status", "alert", "attempt", "error"], notifications.map((n) =>
    h("tr", {}, h("td", {}, formatTime(n.time)), h("td", {}, n.channel), h("td", {}, n.status),
      h("td", {}, h("a", { href: `#/alerts/${encodeURIComponent(n.alert_id)}` }, n.rule || n.alert_id)), h("td", {}, n.attempt), h("td", {}, n.error || "")))));
}
