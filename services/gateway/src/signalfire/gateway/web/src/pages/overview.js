// Overview: the whole fleet in one dense table. Every host is loaded (`GET /fleet`: one
// answer, worst first, as columns), so the totals and "worst first" cover the fleet, not a
// first page. Only the rows in view exist in the page (10,000 hosts are about 40 rows of
// markup). The stream's metric frames never reach this thread: the stream's worker folds them
// into one digest of the hosts that reported every 250 ms (stream.js, onDigest()); digests
// and other frames are taken within a time budget, and patch only the rows in view, in an
// animation frame asked for when something on screen changed.

import { api, ApiError, session } from "../api.js";
import { h, clear, severityBadge, statusBadge, ago, formatValue, reported } from "../dom.js";
import { onFrame, onDigest, subscribe } from "../stream.js";
import { lineChart, sparkline, drawSparkline } from "../charts.js";
import { noNotifierWarning } from "./lists.js";
import { packer, unpacker, SEVERITIES, USAGE as KEY_METRICS } from "../fleetpack.js";

// The host of Signalfire's own alerts (signalfire.subjects.SELF_HOST).
const SELF_HOST = "signalfire";

// Fleet-wide charts over the last hour: the series with the highest newest values, refreshed
// every 30 s (the table above updates live).
const FLEET = [["Fleet CPU, last hour", "cpu.usage_percent"], ["Fleet memory, last hour", "mem.used_percent"]];
const FLEET_HOSTS = 10;
// The CPU samples a row's trend shows, newest last.
const TREND = 60;
// Every row is this tall (style.css, `.fleet tbody tr`), so a scroll offset maps to a row by
// division and the rows out of view are two spacers of known height.
const ROW = 36;
// Rows built above and below the visible ones, so a quick scroll or Tab lands on markup.
const OVERSCAN = 10;
// Work done in one go before the page yields to the browser (a frame is 16 ms; a task over
// 50 ms is a stall a user feels, and a loaded machine stretches every millisecond).
const BUDGET_MS = 8;
// The hosts a frame names are fetched again together after this pause (a burst of alerts
// is one request, not one per alert).
const PATCH_DELAY_MS = 250;
// A host that stops reporting turns "down" by the gateway's clock, not by a frame, and its
// health follows its newest values: the whole fleet is read again this often.
const RELOAD_MS = 30000;
// How often the page asks whether a notifier runs (GET /notifiers: one NATS request).
const NOTIFIERS_MS = 10000;
// An empty answer is asked again this much later, and the warning shown only when that one is
// empty too: a notifier reconnecting (a NATS node died) misses one question, not two.
const NOTIFIERS_CONFIRM_MS = 3000;
// Sorted by a live value (CPU, memory, disk), rows move at most this often, not with every sample.
const RESORT_MS = 5000;
// The rows in view get their new values at most this often: a host reports every few seconds,
// and every rewrite is a layout and a paint (40 rows rewritten one by one were 40 of each).
const PATCH_MS = 1000;
// A round of rewrites (every row in view with a new value) is spread over animation frames,
// this many rows each: the rendering of 37 rows at once (style, paint, layerize, commit) was
// 10–20 ms, which a loaded machine stretched past 50 ms (2026-12-02 traces at load 3–4).
const ROWS_PER_FRAME = 8;
// The stream's metric frames (a few thousand a second at 10,000 hosts) come folded into one
// digest this often, and its alert and host frames are taken in batches this often: a batch
// is a millisecond or two of work, and asks for an animation frame only when something on
// screen changes, not once per message.
const DRAIN_MS = 250;

// Worst first: the lowest health; between equal scores (every down host scores 0) the host
// with more alerts of the higher severity. One number per host, so 10,000 sort in a few ms.
const badness = (host) => host.health * 1e12
  - SEVERITIES.reduce((sum, s, i) => sum + Math.min((host.alerts || {})[s] || 0, 999) * 1000 ** (3 - i), 0);

// The fleet's reader: `GET /fleet` fetched, parsed and packed by a worker (fleetworker.js),
// started with the page, before sign-in: the 0.66 MB JSON.parse of 10,000 hosts was one long
// task of the page's thread (at the first view and every reload), its objects garbage for this
// thread's collector, and the first reload received 10,000 names. Answers [packed, table]
// (fleetpack.js): the worker numbers a host once, so only the first answer carries the names.
// Where no worker can run (or it failed), the fleet is read here, by a packer of this thread.
const readFleet = (() => {
  const local = packer();
  const localTable = unpacker();
  const readHere = () => api("/fleet").then((reply) => [local(reply)[0], localTable]);
  const table = unpacker();
  const waiting = new Map();
  let asked = 0;
  let worker = null;
  try {
    worker = new Worker(new URL("../fleetworker.js", import.meta.url), { type: "module" });
  } catch {
    return readHere;
  }
  worker.onmessage = ({ data }) => {
    const done = waiting.get(data.seq);
    waiting.delete(data.seq);
    if (!done) return;
    if (data.packed) done.resolve([data.packed, table]);
    else if (data.failed !== undefined) done.reject(new Error(data.failed));
    else done.reject(new ApiError(data.status, data.body));
  };
  worker.onerror = (event) => {
    event.preventDefault();
    // A worker that cannot run (or failed): what it was asked for, and all from now on, is read here.
    worker.terminate();
    worker = null;
    for (const done of waiting.values()) readHere().then(done.resolve, done.reject);
    waiting.clear();
  };
  return () => {
    if (!worker) return readHere();
    const seq = ++asked;
    return new Promise((resolve, reject) => {
      waiting.set(seq, { resolve, reject });
      worker.postMessage({ token: session.token, seq });
    });
  };
})();

// The fleet's answer, asked for by the router before it has checked the token (the two
// requests travel together: the first view waits for one round trip, not two).
let early = null;
export function prefetchOverview() {
  early = readFleet();
  early.catch(() => {});
}

function takeFleet() {
  const reply = early || readFleet();
  early = null;
  return reply;
}

// Lets the browser paint and handle input; not throttled like a timer in a background tab.
const yieldToBrowser = () => (globalThis.scheduler && scheduler.yield
  ? scheduler.yield() : new Promise((resolve) => setTimeout(resolve, 0)));

export async function overviewPage(main) {
  const state = {
    // `streamedDisk`: a host's fullest disk over the mounts the stream reported (the worker
    // keeps them), as the health score counts it.
    hosts: new Map(), usage: new Map(), streamedDisk: new Map(), history: new Map(),
    filter: "", sort: "health", group: "", rows: [], groupKeys: [],
    // The fleet worst first as the gateway ordered it, while no host has moved since.
    worst: null,
  };
  const value = (host, metric) => (state.usage.get(host.host) || {})[metric];
  const NO_TREND = { values: [], total: 0 };
  const trendOf = (host) => state.history.get(host.host) || NO_TREND;
  const highest = (metric) => (host) => -(value(host, metric) ?? -1);
  // key: [option text, the number rows are sorted by (ascending; ties by name), or null for the
  // name]; the live-value sorts are the ones re-applied every RESORT_MS.
  const SORTS = {
    health: ["health (worst first)", badness],
    name: ["name", null],
    cpu: ["CPU (highest first)", highest("cpu.usage_percent")],
    mem: ["memory (highest first)", highest("mem.used_percent")],
    disk: ["disk, fullest (highest first)", highest("disk.used_percent")],
    seen: ["last seen (oldest first)", (host) => host.last_seen],
  };
  const LIVE_SORTS = new Set(["cpu", "mem", "disk", "seen"]);
  const DESCENDING = new Set(["cpu", "mem", "disk"]);
  // [header, sort key or null, cell content, and for content that is not text, a string of
  // what it shows, and a function that redraws that content in place]: a cell is rewritten
  // only when that changes (every rewrite is layout and paint).
  const COLUMNS = [
    ["status", null, (host) => statusBadge(host.status), (host) => host.status],
    ["health", "health", (host) => `${Math.round(host.health)} / 100`],
    ["CPU", "cpu", (host) => formatValue(value(host, "cpu.usage_percent"), "cpu.usage_percent")],
    ["memory", "mem", (host) => formatValue(value(host, "mem.used_percent"), "mem.used_percent")],
    ["disk", "disk", (host) => formatValue(value(host, "disk.used_percent"), "disk.used_percent")],
    ["last seen", "seen", (host) => ago(host.last_seen)],
    ["alerts", null, alertCell, (host) => SEVERITIES.map((sev) => (host.alerts || {})[sev] || 0).join(",")],
    ["CPU trend", null, (host) => sparkline(trendOf(host), `CPU trend of ${host.host}`, 80, 20),
      (host) => trendOf(host).total, (svg, host) => drawSparkline(svg, trendOf(host))],
  ];

  const counts = h("div", { class: "counts", "aria-label": "Active alerts by severity" });
  // Signalfire's own alerts (the notifier's EvaluationStopped: no evaluator judges some hosts,
  // so nothing about them alerts) belong to no host row and count in no host's totals: each
  // is a banner above them, while it fires.
  const own = h("div", { id: "own-alerts" });
  // No notifier answering (none runs, or all hang): alerts fire and nobody is told. Said above
  // everything, looked for every NOTIFIERS_MS.
  const nobody = h("div", { id: "no-notifier" });
  const summary = h("p", { id: "fleet-summary", class: "fleet-summary", "aria-live": "polite" }, "Loading the hosts…");
  // One slot per chart, so a chart is replaced in its place.
  const slots = FLEET.map(() => h("div"));
  const fleet = h("div", { class: "charts", id: "fleet" }, slots);
  const fleetCharts = FLEET.map(() => null);
  const filter = h("input", { type: "search", id: "host-filter", placeholder: "web-* env=prod",
    oninput: (e) => { state.filter = e.target.value; fromTheTop(); } });
  const sort = h("select", { id: "host-sort", onchange: (e) => { state.sort = e.target.value; fromTheTop(); } },
    Object.entries(SORTS).map(([key, [text]]) => h("option", { value: key }, text)));
  const group = h("select", { id: "host-group", onchange: (e) => { state.group = e.target.value; fromTheTop(); } });
  const headCells = new Map();
  const head = h("tr", {},
    h("th", { scope: "col" }, sortButton("host", "name")),
    COLUMNS.map(([title, key]) => h("th", { scope: "col" }, key ? sortButton(title, key) : title)));
  const body = h("tbody");
  const topSpacer = spacer();
  const bottomSpacer = spacer();
  body.append(topSpacer, bottomSpacer);
  const scroller = h("div", { class: "fleet", id: "hosts", tabindex: "0", role: "region", "aria-label": "Hosts" },
    h("table", {}, h("caption", { class: "sr-only" }, "Hosts, one row each; only the rows in view are shown"),
      h("thead", {}, head), body));
  const empty = h("p", { class: "muted", hidden: true }, "No hosts yet: start an agent (`signalfire agent`).");
  clear(main,
    h("h1", {}, "Overview"),
    nobody,
    own,
    summary,
    counts,
    h("div", { class: "filters" },
      h("label", {}, "Filter hosts", filter),
      h("label", {}, "Sort by", sort),
      h("label", {}, "Group by", group)),
    scroller,
    empty,
    h("section", { "aria-label": "Fleet charts" }, fleet));
  updateGroupOptions();

  async function loadOwn() {
    const reply = await api("/alerts", { params: { status: "firing", host: SELF_HOST } });
    clear(own, reply.alerts.map((alert) => h("p", { class: `sev sev-${alert.severity} own-alert`, role: "alert" },
      severityBadge(alert.severity), " ", h("strong", {}, alert.rule), `: ${alert.annotations.summary || "Signalfire itself"} `,
      h("a", { href: "#/alerts" }, "Alerts"))));
  }

  let confirmTimer = null;
  async function loadNotifiers(confirming = false) {
    // A 503 (the gateway has no NATS: the live indicator says so) tells nothing about notifiers.
    const reply = await api("/notifiers").catch((err) => {
      if (err instanceof ApiError && err.status === 503) return null;
      throw err;
    });
    if (reply === null || !nobody.isConnected) return;  // no NATS, or the page was left
    const none = reply.notifiers.length === 0;
    if (none && !confirming && !nobody.firstChild) {
      clearTimeout(confirmTimer);
      confirmTimer = setTimeout(() => loadNotifiers(true).catch(reported("Asking for the notifiers", null)),
        NOTIFIERS_CONFIRM_MS);
      return;
    }
    clear(nobody, none ? noNotifierWarning("sev sev-critical own-alert") : []);
  }

  function spacer() {
    return h("tr", { class: "spacer", "aria-hidden": "true" }, h("td", { colspan: COLUMNS.length + 1 }));
  }

  function sortButton(title, key) {
    const button = h("button", { type: "button", class: "sort", onclick: () => { state.sort = key; sort.value = key; fromTheTop(); } }, title);
    headCells.set(key, button);
    return button;
  }

  function alertCell(host) {
    const active = SEVERITIES.filter((sev) => (host.alerts || {})[sev] > 0);
    return active.length ? active.map((sev) => [severityBadge(sev), ` ${host.alerts[sev]} `]) : "none";
  }

  // --- loading: the whole fleet in one answer, and the named hosts again when a frame says they changed

  // A host's record is made once and updated in place: the order and the rows hold it, and
  // 10,000 new objects every reload would be garbage for the collector to stall on.
  function record(name) {
    let host = state.hosts.get(name);
    if (!host) host = { host: name, status: "up", health: 100, last_seen: 0, labels: {}, alerts: {} };
    return host;
  }

  // The fleet from `GET /fleet` (columns, worst first), packed (fleetpack.js) and named by
  // `table`; answers the names of the hosts whose place in the order may have changed (new, or
  // another health, status or alert count), or null when hosts have gone. Yields to the
  // browser whenever a slice passes BUDGET_MS.
  let generation = 0;
  // Two arrays for the gateway's order, in turn: the one in use stays whole while the other
  // is filled over several slices (a new 10,000-entry array per reload is garbage to collect).
  const worstBuffers = [[], []];
  async function applyFleet(packed, table) {
    table.take(packed);
    const { n, id, health, lastSeen, status, labels, alerts, usage } = packed;
    const gen = ++generation;
    const changed = new Set();
    const worst = state.worst === worstBuffers[0] ? worstBuffers[1] : worstBuffers[0];
    worst.length = n;
    let began = performance.now();
    for (let i = 0; i < n; i++) {
      if ((i & 31) === 31 && performance.now() - began > BUDGET_MS) {
        await yieldToBrowser();
        began = performance.now();
      }
      const name = table.names[id[i]];
      let host = state.hosts.get(name);
      const known = host !== undefined;
      if (!known) state.hosts.set(name, (host = record(name)));
      const hostStatus = table.statuses[status[i]];
      let moved = !known || host.health !== health[i] || host.status !== hostStatus;
      for (let s = 0; s < 4; s++) {
        const count = alerts[i * 4 + s];
        if (host.alerts[SEVERITIES[s]] !== count) { moved = true; host.alerts[SEVERITIES[s]] = count; }
      }
      if (moved) changed.add(name);
      host.status = hostStatus;
      host.health = health[i];
      // The stream may have told of a newer sample than the gateway had when it answered.
      if (lastSeen[i] > host.last_seen) host.last_seen = lastSeen[i];
      host.labels = labels[i] >= 0 ? table.labelSets[labels[i]] : {};
      host.gen = gen;
      let values = state.usage.get(name);
      if (!values) state.usage.set(name, (values = {}));
      for (let m = 0; m < 3; m++) {
        const v = usage[i * 3 + m];
        if (v === v) values[KEY_METRICS[m]] = v;
      }
      const disk = state.streamedDisk.get(name);
      if (disk !== undefined) values["disk.used_percent"] = disk;
      worst[i] = host;
    }
    // Hosts the answer no longer names are gone (and so are those the stream added meanwhile,
    // as before: the next frame of theirs fetches them again).
    const gone = state.hosts.size > n;
    if (gone) for (const [name, host] of state.hosts) if (host.gen !== gen) state.hosts.delete(name);
    state.worst = worst;
    return gone ? null : changed;
  }

  // The API's newest values, where the stream has not said more yet (a disk the stream
  // reported is the stream's: the API's fullest disk may be one the stream has not shown).
  function takeUsage(name, valueOf) {
    let usage = state.usage.get(name);
    if (!usage) state.usage.set(name, (usage = {}));
    for (const metric of KEY_METRICS) {
      const v = valueOf(metric);
      if (v !== undefined && v !== null) usage[metric] = v;
    }
    const disk = state.streamedDisk.get(name);
    if (disk !== undefined) usage["disk.used_percent"] = disk;
  }

  async function loadNamed(names) {
    // A URL carries a few hundred names comfortably; more go in several requests.
    for (let i = 0; i < names.length; i += 200) {
      const reply = await api("/hosts", { params: { host: names.slice(i, i + 200), limit: 5000 } });
      for (const fresh of reply.hosts) {
        const host = record(fresh.host);
        Object.assign(host, { status: fresh.status, health: fresh.health, labels: fresh.labels, alerts: fresh.alerts },
          { last_seen: Math.max(host.last_seen, fresh.last_seen) });
        state.hosts.set(fresh.host, host);
        takeUsage(fresh.host, (metric) => fresh.usage[metric]);
      }
    }
    // A host moved: the gateway's order is no longer the fleet's.
    if (names.length) state.worst = null;
  }

  // --- the rows: filter, group, sort; then only the window in view is built

  function matcher() {
    // Space-separated terms, all must match: `name=value` a label, anything else a glob on the name.
    const terms = state.filter.trim().split(/\s+/).filter(Boolean).map((term) => {
      const eq = term.indexOf("=");
      if (eq > 0) {
        const [k, v] = [term.slice(0, eq), term.slice(eq + 1)];
        return (host) => String((host.labels || {})[k] ?? "") === v;
      }
      const re = new RegExp(`^${term.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}`);
      return (host) => re.test(host.host);
    });
    return (host) => terms.every((t) => t(host));
  }

  // The hosts that match the filter as [sort key, host] pairs, in order.
  let sorted = [];
  const pairOrder = (a, b) => a[0] - b[0] || (a[1].host < b[1].host ? -1 : a[1].host > b[1].host ? 1 : 0);

  // `changed`: the names of the few hosts that changed since the last order (else all of them).
  function order(changed) {
    const key = SORTS[state.sort][1] || (() => 0);
    const match = matcher();
    if (!changed) {
      sorted = [];
      if (state.sort === "health" && state.worst) {
        // Already in this order: the gateway sorted the fleet worst first.
        for (const host of state.worst) if (match(host)) sorted.push([key(host), host]);
      } else {
        for (const host of state.hosts.values()) if (match(host)) sorted.push([key(host), host]);
        sorted.sort(pairOrder);
      }
      state.orderedAt = performance.now();
    } else {
      // Each changed host leaves its place and is put back where it now belongs (a binary
      // search): a burst of alerts does not sort the whole fleet again.
      // In place: a new array of 10,000 pairs every few seconds is garbage for the collector.
      let kept = 0;
      for (const pair of sorted) if (!changed.has(pair[1].host)) sorted[kept++] = pair;
      sorted.length = kept;
      for (const name of changed) {
        const host = state.hosts.get(name);
        if (!host || !match(host)) continue;
        const pair = [key(host), host];
        let lo = 0, hi = sorted.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (pairOrder(sorted[mid], pair) < 0) lo = mid + 1; else hi = mid;
        }
        sorted.splice(lo, 0, pair);
      }
    }
    const shown = sorted.map((pair) => pair[1]);
    if (!state.group) {
      state.rows = shown;
    } else {
      const groups = new Map();
      for (const host of shown) {
        const key = String((host.labels || {})[state.group] ?? "");
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(host);
      }
      // Worst first across groups too: the group holding the worst host comes first.
      const byKey = state.sort === "name" || state.sort === "seen";
      const keys = [...groups.keys()].sort((a, b) =>
        (byKey ? 0 : key(groups.get(a)[0]) - key(groups.get(b)[0])) || a.localeCompare(b));
      state.rows = [];
      for (const key of keys) {
        const members = groups.get(key);
        state.rows.push({ group: key, hosts: members, alerts: totalsOf(members).alerts });
        state.rows.push(...members);
      }
    }
    if (headCells.sortedBy !== state.sort) {
      headCells.sortedBy = state.sort;
      for (const [key, button] of headCells) {
        const direction = DESCENDING.has(key) ? "descending" : "ascending";
        button.closest("th").setAttribute("aria-sort", key === state.sort ? direction : "none");
      }
    }
    // Group rows carry counts: built afresh; host rows are kept and patched.
    for (const [key, tr] of rendered) if (key.startsWith("g:")) { tr.remove(); rendered.delete(key); }
    return shown.length;
  }

  // The text nodes of the alert totals' numbers, by SEVERITIES.
  const countText = [];

  // The alerts of `hosts` per severity (the names of SEVERITIES) and the hosts per status, in
  // one pass. Named properties, not `totals[severity]`: a keyed access per host and severity
  // made this pass over 10,000 hosts half of a reordering frame's script (a CPU profile at
  // load 5: 20–40 ms frames).
  function totalsOf(hosts) {
    let critical = 0, high = 0, medium = 0, low = 0, up = 0, down = 0, offline = 0;
    const other = {};
    for (const host of hosts) {
      const a = host.alerts;
      if (a) { critical += a.critical || 0; high += a.high || 0; medium += a.medium || 0; low += a.low || 0; }
      const s = host.status;
      if (s === "up") up++;
      else if (s === "down") down++;
      else if (s === "offline") offline++;
      else other[s] = (other[s] || 0) + 1;
    }
    return { alerts: { critical, high, medium, low }, status: { up, down, offline, ...other } };
  }

  function renderTotals(shown) {
    // Written only when they differ, into the text of the number: a rewrite of the links laid
    // out and painted the whole page (the charts too) every time an alert fired or resolved.
    const { alerts: totals, status } = totalsOf(state.hosts.values());
    if (!countText.length) {
      clear(counts, SEVERITIES.map((sev) => {
        const number = document.createTextNode("");
        countText.push(number);
        return h("a", { class: "panel", href: `#/alerts?severity=${sev}` }, severityBadge(sev), number);
      }));
    }
    SEVERITIES.forEach((sev, i) => {
      const text = `: ${totals[sev]}`;
      if (countText[i].data !== text) countText[i].data = text;
    });
    const n = state.hosts.size;
    const parts = Object.entries(status).map(([k, v]) => `${v.toLocaleString("en")} ${k}`).join(", ");
    const text = `${n.toLocaleString("en")} host${n === 1 ? "" : "s"}: ${parts}` +
      (shown === n ? "" : `; ${shown.toLocaleString("en")} match the filter`);
    if (summary.textContent !== text) summary.textContent = text;
    // Set only when it changes: writing `hidden`, even the same value, restyles the element
    // and lays out the page around it.
    if (empty.hidden !== n > 0) empty.hidden = n > 0;
    if (scroller.hidden !== (n === 0)) scroller.hidden = n === 0;
  }

  function updateGroupOptions() {
    const keys = new Set(["env", "role"]);
    // Hosts with the same labels share one object (`label_sets` of /fleet): each is read once.
    const seen = new Set();
    for (const host of state.hosts.values()) {
      if (seen.has(host.labels)) continue;
      seen.add(host.labels);
      for (const k of Object.keys(host.labels || {})) keys.add(k);
    }
    const sorted = [...keys].sort();
    if (sorted.join("\u0000") === state.groupKeys.join("\u0000")) return;
    state.groupKeys = sorted;
    clear(group, h("option", { value: "" }, "nothing"), sorted.map((k) => h("option", { value: k }, k)));
    group.value = state.group;
  }

  // Row key -> its <tr>, for the rows in the window. A kept row is never moved while the
  // window scrolls, so a focused link in it keeps the focus.
  const rendered = new Map();
  // The names of the hosts whose rows are in `rendered`: a frame asks here (no key string
  // made per frame, thousands a second).
  const inView = new Set();
  const keyOf = (row) => (row.group !== undefined ? `g:${row.group}` : `h:${row.host}`);

  // The scroll position and height, read when they change (scroll, resize): reading them after
  // the rows were patched would force a layout in the middle of every frame.
  const view = { top: 0, height: 0, head: 0 };
  function measure() {
    view.top = scroller.scrollTop;
    // Before its rows exist the region is as short as its header: the window's height bounds it.
    view.height = Math.max(scroller.clientHeight, window.innerHeight);
    view.head = scroller.querySelector("thead").offsetHeight;
  }

  // The region's height is set here, not left to its rows: it is `contain: strict`
  // (style.css), so a patched row lays out and paints the region only, not the whole page.
  let regionHeight = "";
  function sizeRegion() {
    const height = `min(70vh, ${view.head + state.rows.length * ROW + 2}px)`;
    if (height !== regionHeight) scroller.style.height = regionHeight = height;
  }

  // Written only when they differ: setting a style, even to the same value, dirties it.
  function setSpacer(tr, rows) {
    const height = `${rows * ROW}px`;
    if (tr.firstChild.style.height !== height) tr.firstChild.style.height = height;
    if (tr.hidden !== (rows === 0)) tr.hidden = rows === 0;
  }

  function renderWindow() {
    const first = Math.max(0, Math.floor(view.top / ROW) - OVERSCAN);
    const last = Math.min(state.rows.length, Math.ceil((view.top + view.height) / ROW) + OVERSCAN);
    const wanted = state.rows.slice(first, last);
    const keys = new Set(wanted.map(keyOf));
    for (const [key, tr] of rendered) {
      if (!keys.has(key)) { tr.remove(); rendered.delete(key); if (key.startsWith("h:")) inView.delete(key.slice(2)); }
    }
    let at = topSpacer.nextSibling;
    for (const row of wanted) {
      const key = keyOf(row);
      let tr = rendered.get(key);
      if (!tr) {
        tr = row.group !== undefined ? groupRow(row) : hostRow(state.hosts.get(row.host) || row);
        rendered.set(key, tr);
        if (row.group === undefined) inView.add(row.host);
      }
      if (tr === at) at = at.nextSibling;
      else body.insertBefore(tr, at);
    }
    setSpacer(topSpacer, first);
    setSpacer(bottomSpacer, state.rows.length - last);
    sizeRegion();
  }

  function groupRow(row) {
    const active = SEVERITIES.filter((s) => row.alerts[s] > 0);
    const down = row.hosts.filter((x) => x.status !== "up").length;
    return h("tr", { class: "group", dataset: { group: row.group } },
      h("td", { colspan: COLUMNS.length + 1 },
        `${state.group} = ${row.group || "(none)"}: ${row.hosts.length.toLocaleString("en")} host${row.hosts.length === 1 ? "" : "s"}`,
        down ? `, ${down.toLocaleString("en")} not up` : "",
        active.length ? [", alerts ", active.map((s) => [severityBadge(s), ` ${row.alerts[s]} `])] : ""));
  }

  function hostRow(host) {
    const tr = h("tr", { class: "host", dataset: { host: host.host } },
      h("th", { scope: "row" }, h("a", { href: `#/hosts/${encodeURIComponent(host.host)}` }, host.host)),
      COLUMNS.map(() => h("td")));
    fill(tr, host);
    return tr;
  }

  // The first cell (the link) stays: a keyboard user's focus survives live updates.
  // Text is written into the cell's text node, a trend redrawn into its SVG: no element is
  // made for a value that changed.
  function fill(tr, host) {
    for (let i = 0; i < COLUMNS.length; i++) {
      const [, , cell, shows, redraw] = COLUMNS[i];
      const td = tr.cells[i + 1];
      const content = shows ? null : cell(host);
      const now = shows ? shows(host) : content;
      if (td.shown === now) continue;
      td.shown = now;
      const only = td.childNodes.length === 1 ? td.firstChild : null;
      if (redraw && only) redraw(only, host);
      else if (typeof content === "string" && only && only.nodeType === Node.TEXT_NODE) only.data = content;
      else clear(td, content ?? cell(host));
    }
  }

  // --- live: digests and frames are queued and taken in slices of at most BUDGET_MS; the
  // page is written once per animation frame, only when something on it changed

  // Handling the stream's messages as they arrived made one long task per message, and a
  // frame drawn per message. Digests ({digest, names}) and alert and host frames wait here
  // for drain(); `within` is how far into the digest at `inboxHead` drain() got.
  const inbox = [];
  let inboxHead = 0;
  let within = 0;
  let drainTimer = null;
  const dirty = new Set();
  const toFetch = new Set();
  // A full order (filter, sort, group or the whole fleet changed) or the hosts to move.
  let orderStale = false;
  const moved = new Set();
  let hostsChanged = false;
  let scheduled = false;
  let patchTimer = null;
  let patchedAt = 0;
  let patchLater = null;
  // The rows of a round of rewrites, and how many are done: ROWS_PER_FRAME an animation frame.
  const patching = [];
  let patchAt = 0;

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(flush);
  }

  function enqueue(item, delay) {
    inbox.push(item);
    if (!drainTimer) drainTimer = setTimeout(drain, delay);
  }

  // Entry `i` of a digest (streamcore.js, digester()): its hosts' newest values first, then
  // the CPU samples of the trends, in the order they came.
  function takeEntry({ n, ids, values, times, historyIds, historyValues }, names, i) {
    if (i >= n) {
      const name = names[historyIds[i - n]];
      let trend = state.history.get(name);
      if (!trend) state.history.set(name, (trend = { values: [], total: 0 }));
      trend.values.push(historyValues[i - n]);
      trend.total++;
      if (trend.values.length > TREND) trend.values.shift();
      return;
    }
    const name = names[ids[i]];
    let usage = state.usage.get(name);
    if (!usage) state.usage.set(name, (usage = {}));
    for (let m = 0; m < 3; m++) {
      const v = values[i * 3 + m];
      if (v === v) usage[KEY_METRICS[m]] = v;
    }
    const disk = values[i * 3 + 2];
    if (disk === disk) state.streamedDisk.set(name, disk);
    const host = state.hosts.get(name);
    if (!host) { fetchLater(name); return; }
    if (times[i] > host.last_seen) host.last_seen = times[i];
    // Only a row in view has anything to rewrite; the others are built from the record.
    if (inView.has(name)) dirty.add(name);
  }

  function drain() {
    drainTimer = null;
    const began = performance.now();
    let over = false;
    while (!over && inboxHead < inbox.length) {
      const item = inbox[inboxHead];
      if (item.digest) {
        const { digest, names } = item;
        const size = digest.n + digest.historyIds.length;
        while (within < size) {
          takeEntry(digest, names, within++);
          if ((within & 63) === 0 && performance.now() - began > BUDGET_MS) { over = true; break; }
        }
        if (within < size) break;
        within = 0;
      } else {
        fetchLater(item.host);
      }
      inbox[inboxHead++] = null;
    }
    if (inboxHead === inbox.length) { inbox.length = 0; inboxHead = 0; }
    // What did not fit is taken in a task of its own, after the browser had its turn.
    else drainTimer = setTimeout(drain, 0);
    if (dirty.size || moved.size || orderStale) schedule();
  }

  // The rows marked since the last round are rewritten at most every PATCH_MS, ROWS_PER_FRAME
  // an animation frame.
  function patchSome() {
    if (!patching.length && dirty.size && performance.now() - patchedAt >= PATCH_MS) {
      patchedAt = performance.now();
      for (const name of dirty) patching.push(name);
      dirty.clear();
    } else if (!patching.length && dirty.size && !patchLater) {
      patchLater = setTimeout(() => { patchLater = null; schedule(); }, PATCH_MS - (performance.now() - patchedAt));
    }
    if (patching.length) {
      const end = Math.min(patching.length, patchAt + ROWS_PER_FRAME);
      for (; patchAt < end; patchAt++) {
        const tr = rendered.get(`h:${patching[patchAt]}`);
        const host = state.hosts.get(patching[patchAt]);
        if (tr && host) fill(tr, host);
      }
      if (patchAt < patching.length) schedule();
      else {
        patching.length = patchAt = 0;
        if (dirty.size) schedule();
      }
    }
  }

  function flush() {
    scheduled = false;
    if (!orderStale && LIVE_SORTS.has(state.sort) && performance.now() - state.orderedAt > RESORT_MS) orderStale = true;
    const ordered = orderStale || moved.size > 0;
    if (ordered) {
      if (hostsChanged) { hostsChanged = false; updateGroupOptions(); }
      renderTotals(orderStale || moved.size > 500 ? order() : order(moved));
      orderStale = false;
      moved.clear();
    }
    if (ordered && (patching.length || dirty.size)) {
      // A new order (10,000 hosts counted, rows moved or built) is this frame's work: the
      // rewrites wait for the next frame rather than add their rendering to it.
      schedule();
    } else {
      patchSome();
    }
    renderWindow();
  }

  function reorder() {
    orderStale = true;
    schedule();
  }

  // Another filter, sort or grouping shows its first rows.
  function fromTheTop() {
    scroller.scrollTop = 0;
    view.top = 0;
    reorder();
  }

  function fetchLater(name) {
    toFetch.add(name);
    if (patchTimer) return;
    patchTimer = setTimeout(async () => {
      patchTimer = null;
      const names = [...toFetch];
      toFetch.clear();
      const known = state.hosts.size;
      await loadNamed(names).catch(reported("Loading the hosts", null));
      for (const name of names) { dirty.add(name); moved.add(name); }
      if (state.hosts.size !== known) hostsChanged = true;
      schedule();
    }, PATCH_DELAY_MS);
  }

  loadOwn().catch(reported("Loading Signalfire's own alerts", null));
  loadNotifiers().catch(reported("Asking for the notifiers", null));
  const notifiersTimer = setInterval(() => {
    if (!document.hidden) loadNotifiers().catch(reported("Asking for the notifiers", null));
  }, NOTIFIERS_MS);
  await applyFleet(...await takeFleet());
  updateGroupOptions();
  renderTotals(order());
  measure();
  renderWindow();

  let scrollPending = false;
  scroller.addEventListener("scroll", () => {
    if (scrollPending) return;
    scrollPending = true;
    requestAnimationFrame(() => { scrollPending = false; measure(); renderWindow(); });
  }, { passive: true });
  const resized = () => { measure(); schedule(); };
  window.addEventListener("resize", resized);

  subscribe({ hosts: [], metrics: KEY_METRICS, alerts: true });
  const offDigest = onDigest(
    { metrics: KEY_METRICS, fullest: { "disk.used_percent": "mount" }, history: "cpu.usage_percent", every: DRAIN_MS },
    (digest, names) => enqueue({ digest, names }, 0),
  );
  const off = onFrame((frame) => {
    if (frame.kind === "alert" && frame.host === SELF_HOST) loadOwn().catch(reported("Loading Signalfire's own alerts", null));
    else if ((frame.kind === "alert" || frame.kind === "host") && frame.host) enqueue(frame, DRAIN_MS);
  });
  // The 30 s reload, by the fleet's reader (readFleet: off this thread).
  let reloading = false;
  let reloadTimer = null;
  async function reload() {
    if (document.hidden || reloading) return;
    reloading = true;
    try {
      loadOwn().catch(reported("Loading Signalfire's own alerts", null));
      const changed = await applyFleet(...await readFleet());
      for (const name of rendered.keys()) if (name.startsWith("h:")) dirty.add(name.slice(2));
      hostsChanged = true;
      // The records were updated in place: the order holds them already (a few moved, or all again).
      if (changed === null || changed.size > 500) orderStale = true;
      else for (const name of changed) moved.add(name);
      schedule();
    } catch (err) {
      reported("Loading the hosts", null)(err);
    } finally {
      reloading = false;
    }
  }
  // Half a period after the fleet charts' refresh, so the two never share a frame.
  const reloadStart = setTimeout(() => { reloadTimer = setInterval(reload, RELOAD_MS); reload(); }, RELOAD_MS / 2);

  // The FLEET_HOSTS hosts with the highest newest value of `metric`, in one pass (no sort of the fleet).
  function busiest(metric) {
    const top = [];
    for (const host of state.hosts.values()) {
      const v = value(host, metric);
      if (v === undefined || (top.length === FLEET_HOSTS && v <= top[top.length - 1][0])) continue;
      top.push([v, host]);
      top.sort((a, b) => b[0] - a[0]);
      if (top.length > FLEET_HOSTS) top.pop();
    }
    return top.map((pair) => pair[1]);
  }

  // Set when the page is left: a fleet load still out then draws nothing (its charts would
  // stay subscribed to the crosshair sync of the next page).
  let left = false;
  async function loadFleet() {
    // The busiest hosts by the newest values the page holds; only their series are fetched
    // (the whole fleet's hour would be millions of points at 10,000 hosts).
    const replies = await Promise.all(FLEET.map(async ([, metric]) => {
      const asked = [];
      // One pass over the fleet per task (each reads 10,000 records).
      await yieldToBrowser();
      // One request started per task: twenty started at once were one long task.
      for (const x of busiest(metric)) {
        asked.push(api("/query", { params: { metric, host: x.host, from: "-1h", step: "30s", agg: "avg" } })
          .catch(reported(`Loading the fleet chart of ${metric}`, { series: [] })));
        await yieldToBrowser();
      }
      const answers = await Promise.all(asked);
      return { series: answers.flatMap((a) => a.series || []) };
    }));
    for (const [i, [title, metric]] of FLEET.entries()) {
      // One chart per animation frame: building a chart is mostly painting its canvas, and
      // two in one task made a long task (as on the Host page, charts.js).
      await new Promise((resolve) => requestAnimationFrame(resolve));
      if (left) return;
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
        for (const s of series) {
          if (state.history.has(s.host)) continue;
          const values = s.points.slice(-TREND).map((p) => p[1] ?? 0);
          state.history.set(s.host, { values, total: values.length });
        }
      }
      const drawn = series.map((s) => ({ label: name(s), points: s.points }));
      // A chart that is there is redrawn with the new series, not built again (charts.js, update()).
      if (fleetCharts[i] && series.length) {
        fleetCharts[i].update(drawn);
      } else {
        if (fleetCharts[i]) fleetCharts[i].destroy();
        fleetCharts[i] = null;
        slots[i].replaceChildren();
        if (series.length) fleetCharts[i] = lineChart(slots[i], title, metric, drawn);
      }
    }
  }

  // The charts come after the table: the fleet is on screen before their queries answer.
  loadFleet().catch(reported("Loading the fleet charts", null));
  const fleetTimer = setInterval(() => { if (!document.hidden) loadFleet().catch(reported("Loading the fleet charts", null)); }, RELOAD_MS);
  return () => {
    left = true;
    off();
    offDigest();
    clearTimeout(patchTimer);
    clearTimeout(patchLater);
    clearTimeout(drainTimer);
    clearInterval(fleetTimer);
    clearInterval(notifiersTimer);
    clearTimeout(confirmTimer);
    clearTimeout(reloadStart);
    clearInterval(reloadTimer);
    window.removeEventListener("resize", resized);
    for (const c of fleetCharts) if (c) c.destroy();
  };
}
