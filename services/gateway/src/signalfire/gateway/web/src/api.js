// The REST API client: one token (kept in this tab's localStorage), JSON errors surfaced.

const TOKEN_KEY = "signalfire.token";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.field = err.field;
  }
}

export const session = {
  get token() { return localStorage.getItem(TOKEN_KEY) || ""; },
  set token(value) { value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY); },
  role: "viewer",
  canAct() { return this.role === "operator" || this.role === "admin"; },
};

export async function api(path, { method = "GET", params, body } = {}) {
  // An array value repeats the parameter (`metric=a&metric=b`).
  const response = await fetch(apiUrl(path, params || {}), {
    method,
    headers: { Authorization: `Bearer ${session.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** The URL of an API path with its parameters (the query string the API reads). */
export function apiUrl(path, params = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(params)) {
    for (const item of Array.isArray(v) ? v : [v]) if (item !== undefined && item !== null && item !== "") url.searchParams.append(k, item);
  }
  return url;
}

/**
 * Download an API answer as a file. A link cannot carry the token (it travels in a header,
 * never in a URL), so the file is fetched here and handed to the browser as a blob.
 */
export async function download(path, params, filename) {
  const response = await fetch(apiUrl(path, params), { headers: { Authorization: `Bearer ${session.token}` } });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const href = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60000);
}
