// The live stream: one WebSocket per tab, resumed with the last sequence number after any
// disconnect, paused while the tab is hidden. The gateway names its sequence numbers with an
// epoch (sent in the first, "hello" frame); when it cannot resume — it restarted, or the tab
// was away longer than its ring buffer — it sends a "reset" frame and the page reloads its
// data through the REST API, so a chart never shows a silent gap. The token travels as a
// WebSocket subprotocol, never in the URL (URLs end up in logs). A stream whose token is
// revoked is closed with code 4401: the tab goes back to sign-in instead of reconnecting.
//
// The socket and the parse of its messages run in a worker, started with the page
// (streamworker.js, streamcore.js); where no worker can run, in the page.

import { session } from "./api.js";
import { streamer } from "./streamcore.js";

const listeners = new Set();
let subscription = { hosts: [], metrics: [], alerts: true, host_status: true };
let connected = false;
let statusEl = null;
// The one page that asked for a digest: {config, fn, names}; digests of an earlier ask are dropped.
let digestOf = null;
let digests = 0;

function receive(message) {
  if (message.status) setStatus(...message.status);
  if (message.frames) for (const frame of message.frames) for (const fn of listeners) fn(frame);
  if (message.digest && digestOf && message.digest.gen === digestOf.config.gen) {
    const { newNames } = message.digest;
    const names = typeof newNames === "string" ? (newNames ? newNames.split("\n") : []) : newNames;
    for (const name of names) digestOf.names.push(name);
    digestOf.fn(message.digest, digestOf.names);
  }
  if (message.signedOut) {
    connected = false;
    window.dispatchEvent(new CustomEvent("signalfire:signed-out"));
  }
}

let send;
function inPage() {
  send = streamer(receive);
}
try {
  const worker = new Worker(new URL("./streamworker.js", import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => receive(data);
  worker.onerror = (event) => {
    event.preventDefault();
    // A worker that cannot run (or failed): the stream runs in the page from now on, asked
    // again for what the page wants (a digest numbers its hosts afresh).
    worker.terminate();
    inPage();
    send({ subscribe: subscription });
    if (digestOf) {
      digestOf.config = { ...digestOf.config, gen: ++digests };
      digestOf.names = [];
      send({ digest: digestOf.config });
    }
    if (connected) connect();
  };
  send = (message) => worker.postMessage(message);
} catch {
  inPage();
}

export function onFrame(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/**
 * The metric frames of `config.metrics` folded per host, every `config.every` ms, in the
 * worker (streamcore.js, digester()): `fn(digest, names)` with `names[id]` the name of host
 * number `id`. These frames no longer reach onFrame() listeners. One page at a time; the
 * function returned stops it.
 */
export function onDigest(config, fn) {
  const mine = { config: { ...config, gen: ++digests }, fn, names: [] };
  digestOf = mine;
  send({ digest: mine.config });
  return () => {
    if (digestOf !== mine) return;
    digestOf = null;
    send({ digest: null });
  };
}

export function subscribe(next) {
  subscription = { ...subscription, ...next };
  send({ subscribe: subscription });
}

function setStatus(text, on) {
  statusEl = statusEl || document.getElementById("live");
  if (!statusEl) return;
  statusEl.textContent = text;
  statusEl.classList.toggle("on", on);
}

// Asked on every route: a stream already open (or waiting to reconnect) stays as it is.
export function connect() {
  if (document.hidden || !session.token) return;
  connected = true;
  const url = new URL("/api/v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  send({ connect: { url: url.href, token: session.token } });
}

export function disconnect() {
  connected = false;
  send({ disconnect: true });
  setStatus("paused", false);
}

document.addEventListener("visibilitychange", () => (document.hidden ? disconnect() : connect()));
