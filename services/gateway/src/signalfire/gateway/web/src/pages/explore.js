// Metric explorer: any host, metric (custom `app.*` ones too), label filter, aggregate and
// range -> a chart, a table per series and an export of the same samples. The choice is kept
// in the URL (#/explore?metric=…), so a view can be bookmarked or shared.

import { api, apiUrl, download } from "../api.js";
import { h, clear, formatValue, attempt } from "../dom.js";
import { lineChart } from "../charts.js";

const RANGES = [["15 min", 900], ["1 h", 3600], ["6 h", 21600], ["24 h", 86400], ["7 d", 604800]];
const AGGREGATES = ["avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99"];
// More lines than this make a chart unreadable; the table below still lists every series.
const MOST_LINES = 20;

/**
 * `mount=/, device=sda` as the query API's label matchers (`label.mount=/`). Throws an Error
 * naming the part it cannot read.
 */
export function labelParams(text) {
  const params = {};
  for (const part of String(text || "").split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at <= 0) throw new Error(`label filter "${part}" is not name=value`);
    params[`label.${part.slice(0, at).trim()}`] = part.slice(at + 1).trim();
  }
  return params;
}

function seriesName(s, manyHosts) {
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  if (!manyHosts) return labels || s.host;
  return labels ? `${s.host} (${labels})` : s.host;
}

export async function explorePage(main) {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const state = {
    host: query.get("host") || "",
    metric: query.get("metric") || "",
    labels: query.get("labels") || "",
    agg: query.get("agg") || "avg",
    range: query.get("range") || "1 h",
  };
  const hostSelect = h("select", { id: "explore-host", name: "host" });
  const metricSelect = h("select", { id: "explore-metric", name: "metric" });
  const labelsInput = h("input", { id: "explore-labels", name: "labels", value: state.labels, placeholder: "mount=/, env=dev", list: "explore-label-options" });
  // The label pairs the chosen metric's series carry, offered as the filter is typed.
  const labelOptions = h("datalist", { id: "explore-label-options" });
  const labelHint = h("span", { class: "muted", id: "explore-label-names" });
  const aggSelect = h("select", { id: "explore-agg", name: "agg" }, AGGREGATES.map((a) => h("option", { value: a, selected: a === state.agg }, a)));
  const rangeSelect = h("select", { id: "explore-range", name: "range" }, RANGES.map(([name]) => h("option", { value: name, selected: name === state.range }, name)));
  const chartBox = h("div", { class: "wide-chart", id: "explore-chart" });
  const tableBox = h("div", { id: "explore-table" });
  const exportBox = h("div", { class: "actions", id: "explore-export" });
  let chart = null;
  let metrics = [];

  const form = h("form", { class: "filters", id: "explore-form", onsubmit: (e) => {
    e.preventDefault();
    Object.assign(state, { host: hostSelect.value, metric: metricSelect.value, labels: labelsInput.value.trim(), agg: aggSelect.value, range: rangeSelect.value });
    return attempt("Loading the chart", show);
  } },
  h("label", {}, "host", hostSelect),
  h("label", {}, "metric", metricSelect),
  h("label", {}, "label filter", labelsInput, labelOptions),
  h("label", {}, "aggregate", aggSelect),
  h("label", {}, "range", rangeSelect),
  h("button", { type: "submit", class: "primary" }, "Show"),
  h("p", {}, labelHint));
  clear(main,
    h("h1", {}, "Explore metrics"),
    form,
    h("section", { "aria-label": "Chart" }, chartBox),
    h("section", { "aria-label": "Series" }, h("h2", {}, "Series"), tableBox, exportBox));

  async function loadMetrics() {
    const reply = await api("/metric-names", { params: { host: hostSelect.value } });
    metrics = reply.metrics || [];
    const names = metrics.map((m) => m.name);
    if (!names.includes(state.metric)) state.metric = names.includes("cpu.usage_percent") ? "cpu.usage_percent" : names[0] || "";
    clear(metricSelect, metrics.length
      ? metrics.map((m) => h("option", { value: m.name, selected: m.name === state.metric }, `${m.name} (${m.series} series)`))
      : h("option", { value: "" }, "no metrics yet"));
    hint();
  }
  function hint() {
    const m = metrics.find((x) => x.name === metricSelect.value);
    labelHint.textContent = m && m.label_names.length ? `Labels of ${m.name}: ${m.label_names.join(", ")}` : "";
    labelOptions.replaceChildren();
    if (!m || !m.label_names.length) return;
    attempt("Loading the label values", async () => {
      const { series } = await api("/series", { params: { metric: m.name, host: hostSelect.value, limit: 500 } });
      const pairs = new Set(series.flatMap((x) => Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`)));
      labelOptions.replaceChildren(...[...pairs].sort().map((p) => h("option", { value: p })));
    });
  }
  metricSelect.addEventListener("change", hint);
  hostSelect.addEventListener("change", () => attempt("Loading the metric names", loadMetrics));

  // Only the newest of overlapping shows (a range picked while a query is out) draws.
  let generation = 0;
  async function show() {
    const mine = ++generation;
    const seconds = (RANGES.find(([name]) => name === state.range) || RANGES[1])[1];
    const params = { metric: state.metric, host: state.host, from: `-${seconds}s`, step: "auto", agg: state.agg, ...labelParams(state.labels) };
    history.replaceState(null, "", `#/explore?${new URLSearchParams(Object.entries(state).filter(([, v]) => v))}`);
    if (chart) { chart.destroy(); chart = null; }
    chartBox.replaceChildren();
    exportBox.replaceChildren();
    if (!state.metric) { clear(tableBox, h("p", { class: "muted" }, "Choose a metric.")); return; }
    const reply = await api("/query", { params });
    if (mine !== generation) return;
    const series = (reply.series || []).filter((s) => s.points.length);
    const manyHosts = new Set(series.map((s) => s.host)).size > 1 || !state.host;
    if (!series.length) clear(tableBox, h("p", { class: "muted" }, "No samples match in this range."));
    else {
      chart = lineChart(chartBox, `${state.metric}, ${state.agg} per ${reply.step} s`, state.metric,
        series.slice(0, MOST_LINES).map((s) => ({ label: seriesName(s, manyHosts), points: s.points })), { step: reply.step });
      if (series.length > MOST_LINES) chartBox.append(h("p", { class: "muted" }, `The chart draws the first ${MOST_LINES} of ${series.length} series; the table lists all.`));
      clear(tableBox, h("div", { class: "table-wrap" }, h("table", { class: "summary" },
        h("thead", {}, h("tr", {}, ["host", "labels", "points", "min", "mean", "max", "newest"].map((c, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, c)))),
        h("tbody", {}, series.map((s) => {
          const values = s.points.map((p) => p[1]).filter((v) => v !== null);
          const cell = (v) => h("td", { class: "num" }, formatValue(v, state.metric));
          return h("tr", {},
            h("td", {}, h("a", { href: `#/hosts/${encodeURIComponent(s.host)}` }, s.host)),
            h("td", {}, Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–"),
            h("td", { class: "num" }, values.length),
            cell(Math.min(...values)), cell(values.reduce((a, b) => a + b, 0) / values.length), cell(Math.max(...values)),
            cell(values[values.length - 1]));
        })))));
    }
    // The export holds the raw samples behind the chart: same host, metric, labels and range.
    const exportParams = { kind: "samples", metric: state.metric, host: state.host, from: reply.from, to: reply.to, ...labelParams(state.labels) };
    const file = `signalfire-${state.metric}${state.host ? `-${state.host}` : ""}`;
    exportBox.append(
      h("button", { type: "button", onclick: () => attempt("The CSV export", () => download("/export", { ...exportParams, format: "csv" }, `${file}.csv`)) }, "Export CSV"),
      h("button", { type: "button", onclick: () => attempt("The JSON export", () => download("/export", { ...exportParams, format: "json" }, `${file}.json`)) }, "Export JSON"),
      h("details", {}, h("summary", {}, "Export URL (send the token in an Authorization header)"),
        h("code", { class: "export-url" }, String(apiUrl("/export", { ...exportParams, format: "csv" })))));
  }

  const hosts = (await api("/hosts", { params: { limit: 5000 } })).hosts || [];
  const known = hosts.map((x) => x.host);
  if (state.host && !known.includes(state.host)) known.unshift(state.host);
  clear(hostSelect, h("option", { value: "" }, "any host"), known.map((name) => h("option", { value: name, selected: name === state.host }, name)));
  await loadMetrics();
  await attempt("Loading the chart", show);
  return () => { generation++; if (chart) chart.destroy(); };
}
