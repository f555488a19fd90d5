// The Overview's reload of the whole fleet, off the page's thread: fetch `GET /api/v1/fleet`,
// parse it and pack it (fleetpack.js), and hand the typed arrays over without a copy. A
// message {token, seq} asks for one reload; the answer is {seq, packed} or {seq, status, body}
// when the API refused (the page raises it as the API client would) or {seq, failed} when
// the request did not complete.

import { packer } from "./fleetpack.js";

const pack = packer();

self.onmessage = async ({ data: { token, seq } }) => {
  let response;
  try {
    response = await fetch("/api/v1/fleet", { headers: { Authorization: `Bearer ${token}` } });
  } catch (err) {
    self.postMessage({ seq, failed: String(err) });
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok || !body) {
    self.postMessage({ seq, status: response.status, body });
    return;
  }
  try {
    const [packed, transfer] = pack(body);
    self.postMessage({ seq, packed }, transfer);
  } catch (err) {
    self.postMessage({ seq, failed: String(err) });
  }
};
