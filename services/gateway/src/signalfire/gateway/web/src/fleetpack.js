// `GET /fleet`'s answer (columns of JSON) as typed arrays, for the Overview. The 30 s reload
// reads and packs it in a worker (fleetworker.js): the 0.66 MB JSON.parse of 10,000 hosts and
// the arrays it makes stay off the page's thread, and what crosses over is a few typed arrays
// (transferred, not copied) and only the names and label sets the page has not been sent yet.
//
// A packer numbers every host name and label set it meets once, for good; a pack names the
// hosts by those numbers. The page keeps a table per packer (unpack side: `names[id]`,
// `labelSets[id]`), appended to from each pack's `newNames` and `newLabelSets`.

export const SEVERITIES = ["critical", "high", "medium", "low"];
export const USAGE = ["cpu.usage_percent", "mem.used_percent", "disk.used_percent"];

export function packer() {
  const ids = new Map();
  const labelIds = new Map();
  const statuses = new Map();
  /**
   * `reply.hosts` (the columns) as {n, id, health, lastSeen, status, labels, alerts, usage,
   * newNames, newLabelSets, newStatuses}, and the buffers to transfer. `alerts` holds the
   * counts of SEVERITIES for host i at 4 i…4 i + 3, `usage` the values of USAGE at 3 i…3 i + 2
   * (NaN: none).
   */
  return (reply) => {
    const cols = reply.hosts;
    const n = cols.host.length;
    const id = new Int32Array(n);
    const health = new Float64Array(n);
    const lastSeen = new Float64Array(n);
    const status = new Uint8Array(n);
    const labels = new Int32Array(n);
    const alerts = new Int32Array(n * SEVERITIES.length);
    const usage = new Float64Array(n * USAGE.length);
    const newNames = [];
    const newLabelSets = [];
    const newStatuses = [];
    const newKeys = [];
    try {
      return pack(cols, n, { id, health, lastSeen, status, labels, alerts, usage, newNames, newLabelSets, newStatuses, newKeys });
    } catch (err) {
      // Numbers given out here were never sent: taken back, so that the page's table stays whole.
      for (const name of newNames) ids.delete(name);
      for (const key of newKeys) labelIds.delete(key);
      for (const s of newStatuses) statuses.delete(s);
      throw err;
    }
  };

  function pack(cols, n, { id, health, lastSeen, status, labels, alerts, usage, newNames, newLabelSets, newStatuses, newKeys }) {
    // A label set is numbered by its content: the answer's `label_sets` are numbered per answer.
    const setIds = (cols.label_sets || []).map((set) => {
      const key = JSON.stringify(set);
      let k = labelIds.get(key);
      if (k === undefined) { labelIds.set(key, (k = labelIds.size)); newLabelSets.push(set); newKeys.push(key); }
      return k;
    });
    const severity = SEVERITIES.map((s) => (cols.alerts || {})[s] || []);
    const used = USAGE.map((m) => (cols.usage || {})[m] || []);
    for (let i = 0; i < n; i++) {
      const name = cols.host[i];
      let k = ids.get(name);
      if (k === undefined) { ids.set(name, (k = ids.size)); newNames.push(name); }
      id[i] = k;
      health[i] = cols.health[i];
      lastSeen[i] = cols.last_seen[i];
      let code = statuses.get(cols.status[i]);
      if (code === undefined) { statuses.set(cols.status[i], (code = statuses.size)); newStatuses.push(cols.status[i]); }
      status[i] = code;
      labels[i] = setIds[cols.labels[i]] ?? -1;
      for (let s = 0; s < SEVERITIES.length; s++) alerts[i * SEVERITIES.length + s] = severity[s][i] || 0;
      for (let m = 0; m < USAGE.length; m++) {
        const v = used[m][i];
        usage[i * USAGE.length + m] = v === null || v === undefined ? NaN : v;
      }
    }
    // The new names as one string where they can be: 10,000 strings in a message were one
    // long task of the page's thread to receive (one string and a split are a millisecond).
    const joined = newNames.some((name) => name.includes("\n")) ? newNames : newNames.join("\n");
    const packed = { n, id, health, lastSeen, status, labels, alerts, usage, newNames: joined, newLabelSets, newStatuses };
    return [packed, [id.buffer, health.buffer, lastSeen.buffer, status.buffer, labels.buffer, alerts.buffer, usage.buffer]];
  }
}

/** The page's side of a packer: what its numbers name. */
export function unpacker() {
  const table = { names: [], labelSets: [], statuses: [] };
  table.take = (packed) => {
    const names = typeof packed.newNames === "string"
      ? (packed.newNames ? packed.newNames.split("\n") : []) : packed.newNames;
    for (const name of names) table.names.push(name);
    for (const set of packed.newLabelSets) table.labelSets.push(set);
    for (const s of packed.newStatuses) table.statuses.push(s);
  };
  return table;
}
