// uPlot charts with synchronised crosshairs, drag-to-zoom, live appends and a table fallback.

import uPlot from "/ui/vendor/uplot/uPlot.esm.js";
import { h, formatValue, formatTime } from "./dom.js";

const PALETTE = ["#d9480f", "#1c7ed6", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e64980", "#5c940d"];
const sync = uPlot.sync("signalfire");

// Charts waiting to redraw. A stream message updates many charts at once; redrawing them all
// in one animation frame makes that frame one long task — mostly painting the canvases,
// which the script's own timing does not see (16 charts: 60–150 ms here; two per frame still
// made a long task every 12 s in a 30-minute soak on a loaded machine). So each frame redraws
// CHARTS_PER_FRAME chart and leaves the rest to the next frames: all 16 within about 0.3 s.
const CHARTS_PER_FRAME = 1;
const dirty = new Set();
let scheduled = 0;
function redrawSome() {
  scheduled = 0;
  let drawn = 0;
  for (const redraw of dirty) {
    dirty.delete(redraw);
    redraw();
    if (++drawn >= CHARTS_PER_FRAME) break;
  }
  if (dirty.size) scheduled = requestAnimationFrame(redrawSome);
}
function scheduleRedraw(redraw) {
  dirty.add(redraw);
  if (!scheduled) scheduled = requestAnimationFrame(redrawSome);
}

/**
 * A chart of several series sharing one time axis. `series`: [{label, points: [[t, v], ...]}].
 *
 * `step` is the width of the points' buckets in seconds (what the query API answered), or 0
 * for raw samples. Live values given to push() are folded into the chart's own buckets — the
 * newest bucket shows the mean of the samples seen in it so far, as the API will once it is
 * complete — so a chart left open holds as many points as its range has buckets, and the same
 * ones a reload would draw. (Appending every 1 s sample to a 1 h chart of 10 s buckets grew it
 * tenfold in an hour; to a 7 d chart, without bound.)
 */
/**
 * A value axis's tick labels in ``metric``'s unit, with as many decimals as the ticks' spacing
 * ``incr`` needs: a CPU iowait around 0.05 % has ticks 0.02 % apart, which one decimal wrote
 * "0.0 %, 0.0 %, 0.1 %, 0.1 %".
 */
export function axisLabels(vals, incr, metric) {
  const labels = vals.map((v) => formatValue(v, metric));
  if (new Set(labels).size === labels.length || !(incr > 0)) return labels;
  const digits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(incr) - 1e-9)));
  return vals.map((v) => formatValue(v, metric, digits));
}

export function lineChart(container, title, metric, given, { height = 200, step = 0, liveFrom = -Infinity, onZoom } = {}) {
  // The chart's own list of series (labels), changed in place by update().
  const series = given.map((s) => ({ label: s.label }));
  // The chart's columns, changed in place by push(): live points are appended and expired
  // ones cut from the front, and the chart redraws once however many points arrived before
  // its turn (a stream message carries many) — no copy of the window per point.
  const data = [];
  // Per series, the buckets live samples are folded into — the newest two, by start time —
  // with the times already counted: samples of one series can arrive out of order (the
  // gateway commits rounds in parallel), and the stream can repeat what the first query read.
  const folds = [];
  // Per series, the newest sample seen live (a bucket's mean is not the newest value).
  const newest = [];
  const newestAt = [];
  // The columns of `points`, into `data` (and the live state reset), in place.
  const load = (points) => {
    const times = [...new Set(points.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    data.length = 0;
    data.push(times);
    for (const s of points) {
      const col = new Array(times.length).fill(null);
      for (const [t, v] of s.points) col[index.get(t)] = v;
      data.push(col);
    }
    folds.length = newest.length = newestAt.length = 0;
    for (let i = 0; i < points.length; i++) { folds.push(new Map()); newest.push(null); newestAt.push(-Infinity); }
  };
  load(given);
  const figure = h("figure", { class: "panel chart", "aria-label": title });
  const caption = h("figcaption", {}, h("strong", {}, title));
  const plotBox = h("div", { "aria-hidden": "true" });
  const table = tableFallback(series, metric, () => data);
  // The newest value of each series as text: for screen readers, and what a glance needs.
  const latest = h("p", { class: "latest muted" });
  const showLatest = () => {
    latest.textContent = series.map((s, i) => {
      if (newest[i] !== null) return `${s.label}: ${formatValue(newest[i], metric)}`;
      const col = data[i + 1];
      let j = col.length - 1;
      while (j >= 0 && (col[j] === null || col[j] === undefined)) j--;
      return j >= 0 ? `${s.label}: ${formatValue(col[j], metric)}` : null;
    }).filter(Boolean).join(" · ");
  };
  figure.append(caption, latest, plotBox, table);
  let plot = null;
  container.append(figure);
  const seriesOptions = (label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5,
    value: (u, v) => formatValue(v, metric) });
  const css = getComputedStyle(document.documentElement);
  const axis = { stroke: css.getPropertyValue("--muted"), grid: { stroke: css.getPropertyValue("--border") } };
  plot = new uPlot(
    {
      width: Math.max(280, figure.clientWidth - 24),
      height,
      cursor: { sync: { key: sync.key }, drag: { x: true, y: false } },
      // One time only (a range's first bucket, minutes after the first start): uPlot spans
      // 86,400,000 of our second-timestamps (1,000 days) for it; a bucket either side instead.
      scales: { x: { time: true, range: (u, min, max) => (u.data[0].length === 1 ? [min - (step || 60), min + (step || 60)] : [min, max]) } },
      // The value axis is wide enough for "100.0 %" or "1023 MiB/s".
      axes: [axis, { ...axis, size: 76, values: (u, vals, axisIdx, space, incr) => axisLabels(vals, incr, metric) }],
      series: [{}, ...series.map((s, i) => seriesOptions(s.label, i))],
      hooks: { setSelect: [(u) => {
        if (!onZoom || u.select.width < 5) return;
        onZoom(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
      }] },
    },
    data,
    plotBox,
  );
  // (uPlot subscribes the plot to the crosshair sync of `cursor.sync.key` itself, and
  // unsubscribes it in destroy(); subscribing here too listed every chart twice.)
  showLatest();
  const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(280, figure.clientWidth - 24), height }));
  resize.observe(figure);
  const redraw = () => {
    plot.setData(data);
    showLatest();
    table.refresh();
  };
  /** Set series `i`'s value at time `t`, adding the time to the axis if it is new. */
  const put = (i, t, v) => {
    const xs = data[0];
    let at = xs.length - 1;
    if (at < 0 || t > xs[at]) {
      xs.push(t);
      for (let s = 1; s < data.length; s++) data[s].push(null);
      at = xs.length - 1;
    } else if (t !== xs[at]) {
      at = xs.lastIndexOf(t);
      if (at < 0) {
        at = xs.findIndex((x) => x > t);
        xs.splice(at, 0, t);
        for (let s = 1; s < data.length; s++) data[s].splice(at, 0, null);
      }
    }
    data[i + 1][at] = v;
  };
  return {
    plot,
    step,
    /**
     * A live sample (t, value) of series `i`; points older than `windowSeconds` are dropped.
     * With buckets, a sample is ignored when it is already counted, when it is older than
     * `liveFrom` (the buckets the first query answered hold it), or when its bucket is older
     * than the two being folded (late data: a reload shows it).
     */
    push(i, t, v, windowSeconds) {
      // The database keeps microseconds; the stream sends the agent's time as it was. Rounded
      // the same way, a sample the REST API returned and the stream repeats is one point.
      t = Math.round(t * 1e6) / 1e6;
      if (!step) {
        put(i, t, v);
      } else {
        if (t < liveFrom) return;
        const at = Math.floor(t / step) * step;
        const mine = folds[i];
        let bucket = mine.get(at);
        if (!bucket) {
          if (mine.size && at < Math.max(...mine.keys())) return;
          bucket = { sum: 0, count: 0, times: new Set() };
          mine.set(at, bucket);
          if (mine.size > 2) mine.delete(Math.min(...mine.keys()));
        }
        if (bucket.times.has(t)) return;
        bucket.times.add(t);
        bucket.sum += v;
        bucket.count += 1;
        put(i, at, bucket.sum / bucket.count);
      }
      if (t >= newestAt[i]) { newestAt[i] = t; newest[i] = v; }
      const xs = data[0];
      const horizon = t - windowSeconds;
      let expired = 0;
      while (expired < xs.length && xs[expired] < horizon) expired++;
      if (expired) for (const col of data) col.splice(0, expired);
      scheduleRedraw(redraw);
    },
    /**
     * Other points (and series) in the same chart: the canvas, its legend and the table are
     * kept and redrawn, not built again (a new uPlot is DOM, style, layout and a first paint:
     * 7–80 ms a chart on a loaded machine, where a redraw is its paint alone). `series` as
     * for lineChart(); a series whose label changed is renamed in the legend, and series are
     * added or removed at the end when there are more or fewer.
     */
    update(next) {
      // The columns first: uPlot reads a column for every series it has.
      load(next);
      while (series.length > next.length) { series.pop(); plot.delSeries(series.length + 1); }
      const rows = () => plot.root.querySelectorAll(".u-legend tr.u-series");
      next.forEach((s, i) => {
        if (i >= series.length) {
          series.push({ label: s.label });
          plot.addSeries(seriesOptions(s.label, i));
        } else if (series[i].label !== s.label) {
          series[i].label = s.label;
          plot.series[i + 1].label = s.label;
          const all = rows();
          const text = all[all.length - series.length + i]?.querySelector(".u-label");
          if (text) text.textContent = s.label;
        }
      });
      scheduleRedraw(redraw);
    },
    destroy() { dirty.delete(redraw); resize.disconnect(); plot.destroy(); },
  };
}

/** The chart as a table: the newest 20 points of each series, kept current while open. */
function tableFallback(series, metric, data) {
  const body = h("tbody", {});
  const render = () => {
    const [times, ...cols] = data();
    const rows = [];
    series.forEach((s, i) => {
      const points = [];
      for (let j = times.length - 1; j >= 0 && points.length < 20; j--) {
        if (cols[i][j] !== null && cols[i][j] !== undefined) points.unshift([times[j], cols[i][j]]);
      }
      for (const [t, v] of points) rows.push(h("tr", {}, h("td", {}, s.label), h("td", {}, formatTime(t)), h("td", {}, formatValue(v, metric))));
    });
    body.replaceChildren(...rows);
  };
  const details = h("details", { ontoggle: () => { if (details.open) render(); } },
    h("summary", {}, "Show as table"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "series"), h("th", {}, "time"), h("th", {}, "value"))),
      body)));
  details.refresh = () => { if (details.open) render(); };
  return details;
}

/**
 * A small inline sparkline (SVG, no axes) of a trend, `{values, total}`: its newest values and
 * how many it has had in all (the Overview's CPU trends); drawSparkline() brings it up to date
 * in place.
 */
export function sparkline(trend, label, w = 120, hgt = 28) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 1 1");
  // The viewBox frames the values in their own units (drawSparkline()): stretched to the box,
  // the line keeps its width.
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "currentColor");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  drawSparkline(svg, trend);
  return svg;
}

/**
 * `trend` into a sparkline made by sparkline(). Its points are the values in their own units
 * (x: the value's number in the trend, y: minus the value), framed by the viewBox from the
 * lowest value (0 or below) to the highest (1 or above). A new sample is one point appended,
 * the oldest removed and the viewBox moved: a row's trend changes with every sample of its
 * host, and writing its 60 points again as a string was most of a rewritten row's script.
 */
export function drawSparkline(svg, { values, total }) {
  const points = svg.firstChild.points;
  const first = total - values.length;
  // The points drawn before that are still in the trend stay; a trend that is not the one
  // drawn (fewer values in all, or none in common) is drawn anew.
  let next = svg.drawnTotal ?? first;
  if (next > total || next < first) {
    points.clear();
    next = first;
  }
  while (points.numberOfItems && points.getItem(0).x < first) points.removeItem(0);
  for (; next < total; next++) {
    const point = svg.createSVGPoint();
    point.x = next;
    point.y = -values[next - first];
    points.appendItem(point);
  }
  svg.drawnTotal = total;
  let max = 1, min = 0;
  for (const v of values) { if (v > max) max = v; if (v < min) min = v; }
  const box = `${first} ${-max} ${Math.max(values.length - 1, 1)} ${max - min}`;
  if (svg.getAttribute("viewBox") !== box) svg.setAttribute("viewBox", box);
}
