// Host: live charts with a time-range picker, drag-to-zoom, host facts, checks and alerts.

import { api } from "../api.js";
import { h, clear, severityBadge, statusBadge, formatTime, formatValue, ago, reported } from "../dom.js";
import { onFrame, subscribe } from "../stream.js";
import { lineChart } from "../charts.js";

const CHARTS = [
  ["CPU total", "cpu.usage_percent"],
  ["CPU per core", "cpu.core.usage_percent"],
  ["CPU iowait", "cpu.iowait_percent"],
  ["Load", "load.1m"],
  ["Memory used", "mem.used_percent"],
  ["Memory available", "mem.available_bytes"],
  ["Swap used", "swap.used_percent"],
  ["Disk used", "disk.used_percent"],
  ["Disk read", "disk.read_bytes_per_second"],
  ["Disk write", "disk.write_bytes_per_second"],
  ["Disk busy", "disk.busy_percent"],
  ["Network received", "net.recv_bytes_per_second"],
  ["Network sent", "net.sent_bytes_per_second"],
  ["Network errors", "net.errors_per_second"],
  ["TCP sockets in use", "sockets.tcp_inuse"],
  ["Processes", "procs.total"],
];
// "live" is every sample of the last 15 minutes; the others are the last N in the API's
// buckets (about 500 a range). All of them follow the stream; a custom range or a zoom is fixed.
const RANGES = [["live", 900], ["15 min", 900], ["1 h", 3600], ["6 h", 21600], ["24 h", 86400], ["7 d", 604800]];

function label(series) {
  const extra = Object.entries(series.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  return extra || series.metric;
}

export async function hostPage(main, hostName) {
  let range = { name: "live", live: true, raw: true, seconds: 900, from: null, to: null };
  let charts = [];
  const chartBox = h("div", { class: "charts", id: "charts" });
  const picker = h("div", { class: "filters", role: "group", "aria-label": "Time range" },
    RANGES.map(([name, seconds]) => h("button", { type: "button", dataset: { range: name },
      onclick: () => { range = { name, live: true, raw: name === "live", seconds, from: null, to: null }; load(); } }, name)),
    h("label", {}, "from", h("input", { type: "datetime-local", id: "from" })),
    h("label", {}, "to", h("input", { type: "datetime-local", id: "to" })),
    h("button", { type: "button", onclick: () => {
      const from = Date.parse(document.getElementById("from").value) / 1000;
      const to = Date.parse(document.getElementById("to").value) / 1000;
      if (from && to && from < to) { range = { name: "", live: false, seconds: to - from, from, to }; load(); }
    } }, "apply"));
  const facts = h("dl", { class: "kv" });
  const alertsBox = h("div", {});
  const checksBox = h("div", {});
  clear(main,
    h("h1", {}, "Host ", h("span", { id: "host-name" }, hostName)),
    h("p", {}, h("a", { href: `#/explore?host=${encodeURIComponent(hostName)}` }, "Every metric of this host (custom ones too) in the explorer"),
      " · ", h("a", { href: `#/events?host=${encodeURIComponent(hostName)}` }, "its events")),
    picker,
    h("section", { "aria-label": "Charts" }, chartBox),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Facts"), facts),
      h("section", { class: "panel" }, h("h2", {}, "Checks"), checksBox),
      h("section", { class: "panel" }, h("h2", {}, "Alerts"), alertsBox)));

  // A host that sent only metrics through HTTP ingest may have no record yet (404): no facts.
  const host = await api(`/hosts/${encodeURIComponent(hostName)}`)
    .catch((err) => (err.status === 404 ? null : reported("Loading the host's facts", null)(err)));
  if (host) {
    clear(facts,
      h("dt", {}, "status"), h("dd", {}, statusBadge(host.status)),
      h("dt", {}, "health"), h("dd", {}, host.health === undefined ? "–" : `${Math.round(host.health)} / 100`),
      h("dt", {}, "last seen"), h("dd", {}, ago(host.last_seen)),
      Object.entries(host.facts || {}).map(([k, v]) => [h("dt", {}, k), h("dd", {}, k === "boot_time" ? formatTime(v) : String(v))]),
      Object.entries(host.labels || {}).map(([k, v]) => [h("dt", {}, `label ${k}`), h("dd", {}, v)]));
  }
  api("/alerts", { params: { host: hostName, limit: 20 } }).then(({ alerts }) => clear(alertsBox,
    alerts.length ? h("ul", {}, alerts.map((a) => h("li", {}, severityBadge(a.severity), " ", h("a", { href: `#/alerts/${encodeURIComponent(a.id)}` }, a.rule), " ", statusBadge(a.status))))
      : h("p", { class: "muted" }, "No alerts."))).catch(reported("Loading the host's alerts"));
  api("/latest", { params: { host: hostName, metric: "check.*" } }).then(({ samples }) => clear(checksBox,
    samples.length ? h("table", {}, h("tbody", {}, samples.map((s) => h("tr", {}, h("td", {}, s.metric), h("td", {}, Object.values(s.labels || {}).join(" ")), h("td", {}, formatValue(s.value, s.metric))))))
      : h("p", { class: "muted" }, "No checks configured."))).catch(reported("Loading the host's checks"));

  // Frames that arrive while the charts load from the REST API are held and applied after,
  // so a value stored between the query and the first frame is not lost.
  let loading = true;
  let held = [];
  // A value for a chart (or a series: a new disk, a new core) that is not drawn yet: reload
  // the charts once, a moment later, so it appears without the user reloading the page.
  // (Once per series: one the REST API does not return is not asked for again and again.)
  let reload = null;
  const reloadedFor = new Set();
  const reloadSoon = (frame) => {
    const key = `${frame.metric} ${JSON.stringify(frame.labels || {})}`;
    if (reloadedFor.has(key)) return;
    reloadedFor.add(key);
    if (!reload) reload = setTimeout(() => { reload = null; load(); }, 1000);
  };
  const apply = (frame, live = true) => {
    const target = charts.find((c) => c.metric === frame.metric);
    if (!target) { if (live) reloadSoon(frame); return; }
    const i = target.keys.indexOf(JSON.stringify(frame.labels || {}));
    if (i >= 0) target.chart.push(i, frame.time, frame.value, range.seconds);
    else if (live) reloadSoon(frame);
  };
  subscribe({ hosts: [hostName], metrics: CHARTS.map(([, m]) => m), alerts: true });
  const off = onFrame((frame) => {
    if (!range.live || frame.kind !== "metric" || frame.host !== hostName) return;
    if (loading) held.push(frame);
    else apply(frame);
  });

  // A range picked while the previous one is still loading (or a reload for a new series
  // meeting a click) must not add a second set of charts: only the newest load draws.
  let generation = 0;
  async function load() {
    const mine = ++generation;
    loading = true;
    held = [];
    for (const b of picker.querySelectorAll("button[data-range]")) b.setAttribute("aria-pressed", String(b.dataset.range === range.name));
    for (const c of charts) c.chart.destroy();
    charts = [];
    chartBox.replaceChildren();
    const to = range.to ?? Date.now() / 1000;
    const from = range.from ?? to - range.seconds;
    const raw = range.live && range.raw;
    const results = await Promise.all(CHARTS.map(([, metric]) =>
      api("/query", { params: { host: hostName, metric, from, to, step: raw ? "raw" : "auto", agg: "avg" } })
        .catch(reported(`Loading the chart of ${metric}`, { series: [] }))));
    if (mine !== generation) return;
    const open = [];
    CHARTS.forEach(([title, metric], i) => {
      const series = results[i].series || [];
      if (!series.length) return;
      const step = raw ? 0 : results[i].step || 0;
      // Live, the newest bucket is still filling: it is built from its raw samples below
      // and then from the stream, so it never mixes the API's partial mean with live samples.
      const cut = range.live && step ? Math.floor(to / step) * step : Infinity;
      if (cut !== Infinity) open.push([metric, cut]);
      const chart = lineChart(chartBox, title, metric,
        series.map((s) => ({ label: label(s), points: s.points.filter((p) => p[0] < cut) })), {
          step,
          liveFrom: cut,
          onZoom: (a, b) => { range = { name: "", live: false, seconds: b - a, from: a, to: b }; load(); },
        });
      charts.push({ metric, keys: series.map((s) => JSON.stringify(s.labels || {})), chart });
    });
    if (open.length) {
      const cuts = new Map(open);
      const seed = await api("/query", { params: { host: hostName, metric: open.map(([m]) => m), from: Math.min(...cuts.values()), step: "raw" } })
        .catch(reported("Loading the newest samples", { series: [] }));
      if (mine !== generation) return;
      for (const s of seed.series || []) {
        for (const [t, v] of s.points) {
          if (v !== null && t >= cuts.get(s.metric)) apply({ metric: s.metric, labels: s.labels, time: t, value: v }, false);
        }
      }
    }
    if (!charts.length) chartBox.append(h("p", { class: "muted" }, "No data in this range."));
    loading = false;
    for (const frame of held) apply(frame);
    held = [];
  }

  await load();
  return () => { generation++; off(); clearTimeout(reload); for (const c of charts) c.chart.destroy(); };
}
