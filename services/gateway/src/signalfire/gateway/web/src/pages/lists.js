// Rules (read-only, with active alerts, and which evaluator replica judges what), silences, and
// the notification log with the notifier replicas that deliver.

import { api, session } from "../api.js";
import { h, clear, severityBadge, formatTime, toast, attempt } from "../dom.js";

function table(columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing here.")))));
}

// How often the Rules page asks again: who judges what changes when an evaluator replica
// dies, joins or leaves (the gateway merges every replica's answer; a dead one's partitions
// show as judged by no one until another takes them over).
const RULES_RELOAD_MS = 10_000;

/** Which evaluator replica judges which host partitions, and those no replica judges now. */
function evaluatorsSection(evaluators) {
  if (!evaluators) return null;  // one evaluator without partitions judges every host
  const total = evaluators.partitions + 1;  // the host partitions and `fleet`
  const unjudged = evaluators.unjudged || [];
  return h("section", { id: "evaluators", "aria-labelledby": "evaluators-title" },
    h("h2", { id: "evaluators-title" }, "Evaluators"),
    unjudged.length ? h("p", { class: "sev sev-critical", role: "alert" },
      `Judged by no evaluator right now: ${unjudged.join(" ")}. The alerts of their hosts wait until a replica takes them over ` +
      "(within failover_after, 10 s by default); if this stays, start an evaluator.") : null,
    table(["replica", "judges", "partitions"], evaluators.replicas.map((r) =>
      h("tr", { dataset: { replica: r.id } }, h("td", {}, r.id), h("td", {}, `${r.judged.length} of ${total}`),
        h("td", {}, r.judged.join(" "))))));
}

export async function rulesPage(main) {
  clear(main, h("h1", {}, "Rules"), h("p", { class: "muted" }, "Loading…"));
  let left = false;
  let timer = null;
  const load = async () => {
    let reply;
    try { reply = await api("/rules"); } catch (err) {
      if (!left) clear(main, h("h1", {}, "Rules"), h("p", { role: "alert" }, err.message));
      return;
    }
    if (left) return;
    const rules = reply.rules || [];
    clear(main, h("h1", {}, "Rules"), evaluatorsSection(reply.evaluators),
      h("h2", {}, "Rules"), table(["rule", "kind", "severity", "condition", "active alerts"], rules.map((r) =>
        h("tr", {}, h("td", {}, r.name), h("td", {}, r.kind || "threshold"), h("td", {}, severityBadge(r.severity)),
          h("td", {}, [r.metric, r.aggregate, r.condition, r.for ? `for ${r.for}s` : ""].filter(Boolean).join(" ")),
          h("td", {}, (r.alerts || r.active || []).length)))));
  };
  const again = async () => {
    if (!document.hidden) await load();
    if (!left) timer = setTimeout(again, RULES_RELOAD_MS);
  };
  await load();
  if (!left) timer = setTimeout(again, RULES_RELOAD_MS);
  return () => { left = true; clearTimeout(timer); };
}

/** A silence's matchers as text: `host=web-1, rule=~High.*` (the same syntax the form takes). */
export function formatMatchers(matchers) {
  // `op` is omitted when it is "=" (docs/matchers.md).
  const op = (m) => m.op || "=";
  return (matchers || []).map((m) => `${m.name}${op(m)}${m.value}`).join(", ");
}

/**
 * The matchers typed in the form: comma-separated `name=value`, `name!=value`, `name=~regex`
 * or `name!~regex`. Throws an Error naming the part it cannot read.
 */
export function parseMatchers(text) {
  const matchers = [];
  for (const part of String(text).split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = part.match(/^([^=!~\s]+)\s*(=~|!~|!=|=)\s*(.*)$/);
    if (!m) throw new Error(`"${part}" is not name=value (or name!=value, name=~regex, name!~regex)`);
    const [, name, op, value] = m;
    matchers.push({ name, op, value: value.trim() });
  }
  if (!matchers.length) throw new Error("give at least one matcher, e.g. host=web-1");
  return matchers;
}

/** Create a silence; `duration` is seconds or a duration like `1h`. Answers the API's silence. */
export function createSilence(matchers, duration, comment = "") {
  return api("/silences", { method: "POST", body: { matchers, duration, comment } });
}

export async function silencesPage(main) {
  const list = h("div", { id: "silences" });
  const load = async () => {
    const { silences } = await api("/silences");
    clear(list, table(["matchers", "state", "from", "until", "author", "comment", session.canAct() ? "actions" : null].filter(Boolean), silences.map((s) =>
      h("tr", { dataset: { silence: s.id } }, h("td", {}, formatMatchers(s.matchers)), h("td", {}, s.state),
        h("td", {}, formatTime(s.starts_at)), h("td", {}, formatTime(s.ends_at)),
        h("td", {}, s.author || ""), h("td", {}, s.comment || ""),
        session.canAct() ? h("td", {}, s.state === "expired" ? null : h("button", { type: "button", "aria-label": `Expire silence ${formatMatchers(s.matchers)}`,
          onclick: () => attempt("Expiring the silence", async () => {
            await api(`/silences/${encodeURIComponent(s.id)}`, { method: "DELETE" });
            toast("silence expired");
            await load();
          }) }, "Expire")) : null))));
  };
  const form = session.canAct() ? h("form", { class: "filters", id: "silence-form", onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    return attempt("Creating the silence", async () => {
      const matchers = parseMatchers(data.get("matchers"));
      await createSilence(matchers, Number(data.get("hours")) * 3600, String(data.get("comment") || ""));
      toast("silence created");
      e.target.reset();
      await load();
    });
  } }, h("label", {}, "matchers", h("input", { name: "matchers", placeholder: "host=web-1, rule=HighCPU", required: true })),
    h("label", {}, "hours", h("input", { name: "hours", type: "number", min: "0.25", step: "0.25", value: "1" })),
    h("label", {}, "comment", h("input", { name: "comment" })),
    h("button", { type: "submit", class: "primary" }, "Create silence"),
    h("p", { class: "muted" }, "Matchers: name=value, name!=value, name=~regex, name!~regex; comma-separated. Labels: host, rule, severity and the alert's own.")) : null;
  clear(main, h("h1", {}, "Silences"), form, list);
  await load();
}

/** The warning that no notifier answers (GET /notifiers is empty): alerts reach nobody. */
export function noNotifierWarning(className = "sev sev-critical") {
  return h("p", { class: className, role: "alert" }, severityBadge("critical"), " ",
    h("strong", {}, "No notifier is running"), ": alerts fire, but nobody is notified. Start ",
    h("code", {}, "signalfire notifier"), " (docs/notifications.md).");
}

/** The notifier replicas running (GET /notifiers), or a warning that none is. */
function notifiersSection(reply) {
  const title = h("h2", { id: "notifiers-title" }, "Notifiers");
  if (reply === null) return h("section", { id: "notifiers", "aria-labelledby": "notifiers-title" }, title,
    h("p", { class: "muted" }, "The notifiers cannot be asked: the gateway is not connected to NATS."));
  const beat = (n) => (n.heartbeat_every
    ? `every ${n.heartbeat_every}s, last ${n.heartbeat_last || "–"}${n.heartbeat_trouble ? `: ${n.heartbeat_trouble}` : ""}`
    : "off");
  return h("section", { id: "notifiers", "aria-labelledby": "notifiers-title" }, title,
    reply.notifiers.length ? null : noNotifierWarning(),
    table(["replica", "host", "started", "channels", "in flight", "heartbeat"], reply.notifiers.map((n) =>
      h("tr", { dataset: { replica: n.replica } }, h("td", {}, n.replica), h("td", {}, n.hostname),
        h("td", {}, formatTime(n.started)),
        h("td", {}, Object.entries(n.channels).map(([name, type]) => `${name} (${type})`).join(", ") || "none"),
        h("td", {}, n.in_flight), h("td", {}, beat(n))))));
}

export async function notificationsPage(main) {
  const [{ notifications }, notifiers] = await Promise.all([
    api("/notifications", { params: { limit: 200 } }),
    api("/notifiers").catch((err) => { if (err.status === 503) return null; throw err; }),
  ]);
  clear(main, h("h1", {}, "Notification log"), notifiersSection(notifiers),
    h("h2", {}, "Deliveries"), table(["time", "channel", "status", "alert", "attempt", "error"], notifications.map((n) =>
    h("tr", {}, h("td", {}, formatTime(n.time)), h("td", {}, n.channel), h("td", {}, n.status),
      h("td", {}, h("a", { href: `#/alerts/${encodeURIComponent(n.alert_id)}` }, n.rule || n.alert_id)), h("td", {}, n.attempt), h("td", {}, n.error || "")))));
}
