// Building DOM without innerHTML: every text from users (host names, labels, annotations)
// becomes a text node, so markup in it is shown, never run.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * A severity badge: a mark + the word, never colour alone. The mark is a shape drawn by CSS
 * in the badge's colour (style.css, `.mark`), one shape per severity, hidden from screen
 * readers (they read the word). Colour emoji were the marks before; they depend on the
 * viewer's emoji font (a box where none is installed) and differ from one platform to the
 * next. (Traced, they were not slower to paint: docs/benchmarks.md.)
 */
export function severityBadge(severity) {
  return h("span", { class: `sev sev-${severity}` }, h("span", { class: "mark", "aria-hidden": "true" }), ` ${severity}`);
}

/** A status badge (a host's or an alert's): a mark drawn by CSS, as severityBadge(), + the word. */
export function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, h("span", { class: "mark", "aria-hidden": "true" }), ` ${status}`);
}

export function formatTime(t) {
  if (t === null || t === undefined) return "–";
  return new Date(t * 1000).toLocaleString();
}

export function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/**
 * ``v`` for a person, in ``metric``'s unit. ``digits``: decimals for a percentage or a plain
 * number when the default's are too few (a chart axis whose ticks are closer than them).
 */
export function formatValue(v, metric = "", digits = null) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (metric.endsWith("_bytes") || metric.endsWith("bytes_per_second")) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let x = Math.abs(v);
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return `${(Math.sign(v) * x).toFixed(x < 10 ? 1 : 0)} ${units[i]}${metric.endsWith("per_second") ? "/s" : ""}`;
  }
  if (metric.endsWith("percent")) return `${v.toFixed(digits ?? 1)} %`;
  // Counts: whole numbers only (an axis tick at 0.5 events would read as "1").
  if (metric === "events") return Number.isInteger(v) ? String(v) : "";
  return v.toFixed(digits ?? (Math.abs(v) >= 100 ? 0 : 2));
}

/** What an error says to a person: the API's message, and the field it names. */
export function describeError(err) {
  const message = (err && err.message) || String(err);
  return err && err.field && !message.includes(err.field) ? `${message} (field: ${err.field})` : message;
}

/**
 * Show an error until the person dismisses it (unlike a toast, it does not fade: a refused
 * action must not go unnoticed). Newest first; the last few are kept.
 */
export function showError(message) {
  const box = document.getElementById("errors");
  if (!box) return;
  const list = box.querySelector("ul");
  list.prepend(h("li", {}, message));
  while (list.children.length > 3) list.lastElementChild.remove();
  box.hidden = false;
}

/**
 * Run a control's action (`fn`, async); if it fails, the error is shown with what was tried
 * (`what`) and the API's reason. Returns fn's result, or undefined after a failure. Every
 * button and form of the dashboard goes through here, so no refusal is swallowed.
 */
export async function attempt(what, fn) {
  try {
    return await fn();
  } catch (err) {
    showError(`${what} failed: ${describeError(err)}`);
    return undefined;
  }
}

/** A `.catch()` handler for a page's loads: shows the error and answers `fallback`, so the
 * rest of the page still renders. */
export function reported(what, fallback) {
  return (err) => {
    showError(`${what} failed: ${describeError(err)}`);
    return fallback;
  };
}

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 4000);
}
