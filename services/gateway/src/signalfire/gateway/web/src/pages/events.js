// Events: the agents' and applications' events (logins, deploys, restarts…), filtered by host
// and type, with a chart of how many of each type arrived over time. The filter is kept in
// the URL (#/events?host=…&type=…).

import { api } from "../api.js";
import { h, clear, formatTime, formatValue, attempt } from "../dom.js";
import { lineChart } from "../charts.js";

const RANGES = [["1 h", 3600], ["6 h", 21600], ["24 h", 86400], ["7 d", 604800]];
const PAGE = 100;

/** Buckets without events are absent from the API's answer; a count chart shows them as 0. */
function filled(points, from, to, step) {
  const counts = new Map(points.map(([t, n]) => [t, n]));
  const out = [];
  for (let t = Math.floor(from / step) * step; t <= to; t += step) out.push([t, counts.get(t) || 0]);
  return out;
}

export async function eventsPage(main) {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const state = { host: query.get("host") || "", type: query.get("type") || "", range: query.get("range") || "24 h" };
  const hostInput = h("input", { id: "events-host", name: "host", value: state.host, placeholder: "any host" });
  const typeSelect = h("select", { id: "events-type", name: "type" });
  const rangeSelect = h("select", { id: "events-range", name: "range" }, RANGES.map(([name]) => h("option", { value: name, selected: name === state.range }, name)));
  const totals = h("div", { class: "counts", id: "event-totals", "aria-label": "Events by type" });
  const chartBox = h("div", { class: "wide-chart", id: "event-chart" });
  const rows = h("tbody", { id: "event-rows" });
  const more = h("div", { class: "actions" });
  let chart = null;

  const form = h("form", { class: "filters", id: "events-form", onsubmit: (e) => {
    e.preventDefault();
    Object.assign(state, { host: hostInput.value.trim(), type: typeSelect.value, range: rangeSelect.value });
    return attempt("Loading the events", load);
  } },
  h("label", {}, "host", hostInput),
  h("label", {}, "type", typeSelect),
  h("label", {}, "range", rangeSelect),
  h("button", { type: "submit", class: "primary" }, "Show"));
  clear(main,
    h("h1", {}, "Events"),
    form,
    totals,
    h("section", { "aria-label": "Events per type over time" }, chartBox),
    h("section", { "aria-label": "Event list" }, h("h2", {}, "Newest first"),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["time", "host", "type", "message", "labels", "value"].map((c) => h("th", { scope: "col" }, c)))),
        rows)),
      more));

  function row(e) {
    return h("tr", {},
      h("td", {}, formatTime(e.time)),
      h("td", {}, h("a", { href: `#/hosts/${encodeURIComponent(e.host)}` }, e.host)),
      h("td", {}, e.type),
      h("td", {}, e.message),
      h("td", {}, Object.entries(e.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
      h("td", {}, e.value === null || e.value === undefined ? "" : formatValue(e.value)));
  }

  // Only the newest of overlapping loads (a filter changed while one is out) fills the page.
  let generation = 0;
  async function page(cursor, mine = generation) {
    const seconds = (RANGES.find(([name]) => name === state.range) || RANGES[2])[1];
    const reply = await api("/events", { params: { host: state.host, type: state.type, from: `-${seconds}s`, limit: PAGE, cursor } });
    if (mine !== generation) return;
    rows.append(...reply.events.map(row));
    if (!cursor && !reply.events.length) rows.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No events match.")));
    more.replaceChildren(reply.next_cursor
      ? h("button", { type: "button", onclick: () => attempt("Loading more events", () => page(reply.next_cursor)) }, "Show older")
      : []);
  }

  async function load() {
    const mine = ++generation;
    history.replaceState(null, "", `#/events?${new URLSearchParams(Object.entries(state).filter(([, v]) => v))}`);
    const seconds = (RANGES.find(([name]) => name === state.range) || RANGES[2])[1];
    // The types offered are those of the range (for the chosen host), whatever type is chosen.
    const [all, counts] = await Promise.all([
      api("/events/counts", { params: { host: state.host, from: `-${seconds}s` } }),
      api("/events/counts", { params: { host: state.host, type: state.type, from: `-${seconds}s` } }),
    ]);
    if (mine !== generation) return;
    const types = all.types.map((t) => t.type);
    if (state.type && !types.includes(state.type)) types.push(state.type);
    clear(typeSelect, h("option", { value: "" }, "any type"), types.map((t) => h("option", { value: t, selected: t === state.type }, t)));
    clear(totals, counts.types.length
      ? counts.types.map((t) => h("span", { class: "panel", dataset: { type: t.type } }, h("strong", {}, t.type), `: ${t.total}`))
      : h("p", { class: "muted" }, "No events in this range."));
    if (chart) { chart.destroy(); chart = null; }
    chartBox.replaceChildren();
    if (counts.types.length) {
      chart = lineChart(chartBox, `Events per ${counts.step} s`, "events",
        counts.types.map((t) => ({ label: t.type, points: filled(t.points, counts.from, counts.to, counts.step) })), { step: counts.step });
    }
    rows.replaceChildren();
    await page(undefined, mine);
  }

  await load();
  return () => { generation++; if (chart) chart.destroy(); };
}
