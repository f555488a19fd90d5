// The live stream: one WebSocket per tab, resumed with the last sequence number after any
// disconnect, paused while the tab is hidden. The gateway names its sequence numbers with an
// epoch (sent in the first, "hello" frame); when it cannot resume — it restarted, or the tab
// was away longer than its ring buffer — it sends a "reset" frame and the page reloads its
// data through the REST API, so a chart never shows a silent gap. The token travels as a
// WebSocket subprotocol, never in the URL (URLs end up in logs). A stream whose token is
// revoked is closed with code 4401: the tab goes back to sign-in instead of reconnecting.

import { session } from "./api.js";

const CLOSE_TOKEN_REVOKED = 4401;

const listeners = new Set();
let socket = null;
let lastSeq = null;
let epoch = null;
let retry = 500;
let subscription = { hosts: [], metrics: [], alerts: true, host_status: true };
let statusEl = null;

export function onFrame(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function subscribe(next) {
  subscription = { ...subscription, ...next };
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ subscribe: subscription }));
}

function setStatus(text, on) {
  statusEl = statusEl || document.getElementById("live");
  if (!statusEl) return;
  statusEl.textContent = text;
  statusEl.classList.toggle("on", on);
}

export function connect() {
  if (socket || document.hidden || !session.token) return;
  const url = new URL("/api/v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  try {
    socket = new WebSocket(url, ["signalfire.v1", `signalfire.bearer.${session.token}`]);
  } catch {
    // Not a token a subprotocol can carry (a pasted typo): the REST API will refuse it too.
    setStatus("offline", false);
    return;
  }
  socket.onopen = () => {
    retry = 500;
    setStatus("live", true);
    socket.send(JSON.stringify({ subscribe: subscription, last_seq: lastSeq, epoch }));
  };
  socket.onmessage = (event) => {
    const frames = JSON.parse(event.data);
    for (const frame of Array.isArray(frames) ? frames : [frames]) {
      // Synced from the gateway's newest frame: a reconnect resumes from here even if no
      // frame came before it.
      if (frame.kind === "hello") { epoch = frame.epoch; if (lastSeq === null) lastSeq = frame.head; }
      else if (frame.kind === "reset") lastSeq = null;
      else if (frame.seq) lastSeq = frame.seq;
      for (const fn of listeners) fn(frame);
    }
  };
  socket.onclose = (event) => {
    socket = null;
    if (event.code === CLOSE_TOKEN_REVOKED) {
      setStatus("signed out", false);
      window.dispatchEvent(new CustomEvent("signalfire:signed-out"));
      return;
    }
    setStatus("reconnecting…", false);
    if (!document.hidden) setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
}

export function disconnect() {
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  setStatus("paused", false);
}

document.addEventListener("visibilitychange", () => (document.hidden ? disconnect() : connect()));
