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
  const url = new URL(`/api/v1${path}`, location.origin);
  // An array value repeats the parameter (`metric=a&metric=b`).
  for (const [k, v] of Object.entries(params || {})) {
    for (const item of Array.isArray(v) ? v : [v]) if (item !== undefined && item !== null && item !== "") url.searchParams.append(k, item);
  }
  const response = await fetch(url, {
    method,
    headers: { Authorization: `Bearer ${session.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}
