// The live stream's connection: the WebSocket, its resume by sequence number, and the parse
// of its messages. It runs in a worker (streamworker.js) so that the page's thread never
// parses a message (at 10,000 hosts a few a second of up to ~1,200 frames each, and their
// objects garbage for the page's collector); where no worker can run, stream.js runs it in
// the page. It talks to the page by messages, in both cases:
//
// from the page: {connect: {url, token}}, {disconnect: true}, {subscribe: {...}},
//   {digest: {metrics, fullest, history, every}} or {digest: null};
// to the page: {status: [text, live]}, {signedOut: true}, {frames: [frame, ...]} (parsed, in
//   order) and, while a digest is asked for, {digest: {...}} (see digester()).

const CLOSE_TOKEN_REVOKED = 4401;

export function streamer(post) {
  let socket = null;
  // The page wants the stream open (signed in, tab visible): a closed socket reconnects.
  let wanted = false;
  let target = null;
  let lastSeq = null;
  let epoch = null;
  let retry = 500;
  let retryTimer = null;
  let subscription = { hosts: [], metrics: [], alerts: true, host_status: true };
  let digest = null;

  function open() {
    retryTimer = null;
    if (socket || !wanted) return;
    try {
      socket = new WebSocket(target.url, ["signalfire.v1", `signalfire.bearer.${target.token}`]);
    } catch {
      // Not a token a subprotocol can carry (a pasted typo): the REST API will refuse it too.
      post({ status: ["offline", false] });
      return;
    }
    socket.onopen = () => {
      retry = 500;
      post({ status: ["live", true] });
      socket.send(JSON.stringify({ subscribe: subscription, last_seq: lastSeq, epoch }));
    };
    socket.onmessage = (event) => {
      const parsed = JSON.parse(event.data);
      const frames = [];
      for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
        // Synced from the gateway's newest frame: a reconnect resumes from here even if no
        // frame came before it.
        if (frame.kind === "hello") { epoch = frame.epoch; if (lastSeq === null) lastSeq = frame.head; }
        else if (frame.kind === "reset") lastSeq = null;
        else if (frame.seq) lastSeq = frame.seq;
        if (!(digest && digest.take(frame))) frames.push(frame);
      }
      if (frames.length) post({ frames });
    };
    socket.onclose = (event) => {
      socket = null;
      if (event.code === CLOSE_TOKEN_REVOKED) {
        wanted = false;
        post({ status: ["signed out", false], signedOut: true });
        return;
      }
      post({ status: ["reconnecting…", false] });
      if (wanted) retryTimer = setTimeout(open, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  function close() {
    wanted = false;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
  }

  return (message) => {
    if (message.connect) {
      target = message.connect;
      wanted = true;
      if (!socket && !retryTimer) open();
    } else if (message.disconnect) {
      close();
    } else if (message.subscribe) {
      subscription = message.subscribe;
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ subscribe: subscription }));
    } else if ("digest" in message) {
      if (digest) digest.stop();
      digest = message.digest ? digester(message.digest, post) : null;
    }
  };
}

/**
 * The metric frames of `metrics` folded, per host, into one message every `every` ms:
 * {gen, n, ids, values, times, historyIds, historyValues, newNames} (`gen` as asked). Host i of the digest is
 * `ids[i]` (numbered once, for good: `newNames` are the names of the numbers given out since
 * the last digest, as one string joined by "\n" where they can be); `values[i * M + m]` its
 * newest value of metrics[m] (NaN: none since the last digest), where a metric named in
 * `fullest` ({metric: label}) is the highest of its newest values over that label's values
 * (the fullest disk of a host, over its mounts, for good); `times[i]` its newest sample's
 * time. `historyIds`/`historyValues`: every sample of the `history` metric, in the order
 * they came. The arrays are transferred, not copied.
 */
function digester({ metrics, fullest = {}, history = null, every = 250, gen }, post) {
  const M = metrics.length;
  const index = new Map(metrics.map((m, i) => [m, i]));
  const ids = new Map();
  let newNames = [];
  // Per host number, the newest value by label value of the `fullest` metrics.
  const spread = metrics.map((m) => (m in fullest ? new Map() : null));
  // This digest's hosts (number -> slot), their values and times, and the history samples.
  const slots = new Map();
  let values = [];
  let times = [];
  let historyIds = [];
  let historyValues = [];
  let timer = null;

  function send() {
    timer = null;
    const n = slots.size;
    const digest = {
      gen,
      n,
      ids: Int32Array.from(slots.keys()),
      values: Float64Array.from(values),
      times: Float64Array.from(times),
      historyIds: Int32Array.from(historyIds),
      historyValues: Float64Array.from(historyValues),
      newNames: newNames.some((name) => name.includes("\n")) ? newNames : newNames.join("\n"),
    };
    slots.clear();
    values = [];
    times = [];
    historyIds = [];
    historyValues = [];
    newNames = [];
    post({ digest }, [digest.ids.buffer, digest.values.buffer, digest.times.buffer,
      digest.historyIds.buffer, digest.historyValues.buffer]);
  }

  return {
    /** Folds `frame` in and answers true, or answers false: not a frame of the digest. */
    take(frame) {
      if (frame.kind !== "metric") return false;
      const m = index.get(frame.metric);
      if (m === undefined) return false;
      let id = ids.get(frame.host);
      if (id === undefined) { ids.set(frame.host, (id = ids.size)); newNames.push(frame.host); }
      let slot = slots.get(id);
      if (slot === undefined) {
        slots.set(id, (slot = slots.size));
        for (let k = 0; k < M; k++) values.push(NaN);
        times.push(-Infinity);
      }
      let v = frame.value;
      if (spread[m]) {
        let by = spread[m].get(id);
        if (!by) spread[m].set(id, (by = new Map()));
        by.set((frame.labels || {})[fullest[frame.metric]] || "", v);
        for (const other of by.values()) if (other > v) v = other;
      }
      values[slot * M + m] = v;
      if (frame.time > times[slot]) times[slot] = frame.time;
      if (frame.metric === history) { historyIds.push(id); historyValues.push(frame.value); }
      if (!timer) timer = setTimeout(send, every);
      return true;
    },
    stop() { clearTimeout(timer); },
  };
}
