// Overview: every host as a tile, active alerts by severity, filter and sort.

import { api } from "../api.js";
import { h, clear, severityBadge, statusBadge, ago, formatValue, reported } from "../dom.js";
import { onFrame, subscribe } from "../stream.js";
import { lineChart, sparkline } from "../charts.js";

const KEY_METRICS = ["cpu.usage_percent", "mem.used_percent", "disk.used_percent"];
// Fleet-wide charts over the last hour: the hosts with the highest newest values, refreshed
// every 30 s (the tiles above update live).
const FLEET = [["Fleet CPU, last hour", "cpu.usage_percent"], ["Fleet memory, last hour", "mem.used_percent"]];
const FLEET_HOSTS = 10;

export async function overviewPage(main) {
  const state = { hosts: [], latest: new Map(), history: new Map(), filter: "", sort: "health" };
  const counts = h("div", { class: "counts", "aria-label": "Active alerts by severity" });
  const grid = h("div", { class: "grid", id: "hosts" });
  const fleet = h("div", { class: "charts", id: "fleet" });
  let fleetCharts = [];
  const filter = h("input", { type: "search", id: "host-filter", placeholder: "web-*", oninput: (e) => { state.filter = e.target.value; render(); } });
  const sort = h("select", { id: "host-sort", onchange: (e) => { state.sort = e.target.value; render(); } },
    h("option", { value: "health" }, "health (worst first)"), h("option", { value: "name" }, "name"), h("option", { value: "cpu" }, "CPU (highest first)"));
  clear(main,
    h("h1", {}, "Overview"),
    counts,
    h("div", { class: "filters" }, h("label", {}, "Filter hosts", filter), h("label", {}, "Sort by", sort)),
    grid,
    h("section", { "aria-label": "Fleet charts" }, fleet));

  const [hostsReply, latestReply] = await Promise.all([api("/hosts"), api("/latest", { params: { metric: KEY_METRICS.join(",") } }).catch(reported("Loading the newest values", { samples: [] }))]);
  state.hosts = hostsReply.hosts;
  for (const s of latestReply.samples || []) remember(s.host, s.metric, s.value, s.labels);

  function remember(host, metric, value, labels = {}) {
    if (!KEY_METRICS.includes(metric)) return;
    if (metric === "disk.used_percent" && labels.mount && labels.mount !== "/") return;
    state.latest.set(`${host}\u0000${metric}`, value);
    if (metric === "cpu.usage_percent") {
      const hist = state.history.get(host) || [];
      hist.push(value);
      if (hist.length > 60) hist.shift();
      state.history.set(host, hist);
    }
  }

  function render() {
    const totals = { critical: 0, high: 0, medium: 0, low: 0 };
    for (const host of state.hosts) for (const k of Object.keys(totals)) totals[k] += (host.alerts || {})[k] || 0;
    clear(counts, Object.entries(totals).map(([sev, n]) => h("a", { class: "panel", href: `#/alerts?severity=${sev}` }, severityBadge(sev), `: ${n}`)));
    const pattern = state.filter.trim();
    const re = pattern ? new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}`) : null;
    const cpu = (host) => state.latest.get(`${host.host}\u0000cpu.usage_percent`) ?? -1;
    const hosts = state.hosts.filter((host) => !re || re.test(host.host)).sort((a, b) =>
      state.sort === "name" ? a.host.localeCompare(b.host) : state.sort === "cpu" ? cpu(b) - cpu(a) : (a.health ?? 100) - (b.health ?? 100));
    clear(grid, hosts.length ? hosts.map(tile) : h("p", { class: "muted" }, "No hosts yet: start an agent (`signalfire agent`)."));
  }

  function tile(host) {
    const active = Object.entries(host.alerts || {}).filter(([, n]) => n > 0);
    return h("a", { class: "panel tile", href: `#/hosts/${encodeURIComponent(host.host)}`, dataset: { host: host.host } },
      h("h3", {}, host.host),
      h("dl", { class: "kv" },
        h("dt", {}, "status"), h("dd", {}, statusBadge(host.status)),
        h("dt", {}, "health"), h("dd", {}, host.health === undefined ? "–" : `${Math.round(host.health)} / 100`),
        KEY_METRICS.map((m) => [h("dt", {}, m.split(".")[0]), h("dd", {}, formatValue(state.latest.get(`${host.host}\u0000${m}`), m))]),
        h("dt", {}, "last seen"), h("dd", {}, ago(host.last_seen)),
        h("dt", {}, "alerts"), h("dd", {}, active.length ? active.map(([sev, n]) => [severityBadge(sev), ` ${n} `]) : "none")),
      sparkline(state.history.get(host.host) || [], `CPU trend of ${host.host}`));
  }

  async function loadFleet() {
    const replies = await Promise.all(FLEET.map(([, metric]) =>
      api("/query", { params: { metric, from: "-1h", step: "auto", agg: "avg" } }).catch(reported(`Loading the fleet chart of ${metric}`, { series: [] }))));
    for (const c of fleetCharts) c.destroy();
    fleetCharts = [];
    fleet.replaceChildren();
    FLEET.forEach(([title, metric], i) => {
      const newest = (s) => (s.points.length ? s.points[s.points.length - 1][1] ?? 0 : 0);
      // Series may carry labels (an agent's `labels: {env: dev}` are on every sample): each is
      // drawn, named by its host, and by its labels too where a host has several series.
      const series = (replies[i].series || []).filter((s) => s.points.length)
        .sort((a, b) => newest(b) - newest(a)).slice(0, FLEET_HOSTS);
      const perHost = new Map();
      for (const s of series) perHost.set(s.host, (perHost.get(s.host) || 0) + 1);
      const name = (s) => {
        const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
        return perHost.get(s.host) > 1 && labels ? `${s.host} (${labels})` : s.host;
      };
      if (metric === "cpu.usage_percent") {
        for (const s of series) if (!state.history.has(s.host)) state.history.set(s.host, s.points.slice(-60).map((p) => p[1] ?? 0));
      }
      if (series.length) fleetCharts.push(lineChart(fleet, title, metric, series.map((s) => ({ label: name(s), points: s.points }))));
    });
  }

  await loadFleet();
  render();
  const fleetTimer = setInterval(() => { if (!document.hidden) loadFleet(); }, 30000);
  subscribe({ hosts: [], metrics: KEY_METRICS, alerts: true });
  let refresh = null;
  const off = onFrame((frame) => {
    if (frame.kind === "metric") remember(frame.host, frame.metric, frame.value, frame.labels);
    if (frame.kind === "metric" && !state.hosts.some((x) => x.host === frame.host)) scheduleRefresh();
    if (frame.kind === "alert" || frame.kind === "host") scheduleRefresh();
    if (!render.pending) { render.pending = true; requestAnimationFrame(() => { render.pending = false; render(); }); }
  });
  function scheduleRefresh() {
    if (refresh) return;
    refresh = setTimeout(async () => {
      refresh = null;
      const reply = await api("/hosts").catch(reported("Loading the hosts", null));
      if (reply) { state.hosts = reply.hosts; render(); }
    }, 500);
  }
  return () => { off(); clearTimeout(refresh); clearInterval(fleetTimer); for (const c of fleetCharts) c.destroy(); };
}
