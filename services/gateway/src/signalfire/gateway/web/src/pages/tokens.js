// API tokens (admin): list, create (the value is shown once) and revoke.

import { api, session } from "../api.js";
import { h, clear, formatTime, toast, attempt } from "../dom.js";

const ROLES = ["viewer", "operator", "admin"];

export async function tokensPage(main) {
  if (session.role !== "admin") {
    clear(main, h("h1", {}, "API tokens"), h("p", { class: "muted" }, "Only an admin token may list, create and revoke tokens."));
    return;
  }
  const list = h("div", { id: "tokens" });
  const created = h("div", { id: "new-token", "aria-live": "polite" });
  const load = async () => {
    const { tokens } = await api("/tokens");
    clear(list, h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["name", "role", "created by", "created", "revoked", "actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, tokens.map((t) => h("tr", { dataset: { token: t.id } },
        h("td", {}, t.name), h("td", {}, t.role), h("td", {}, t.created_by || ""), h("td", {}, formatTime(t.created_at)),
        h("td", {}, t.revoked_at ? formatTime(t.revoked_at) : "–"),
        h("td", {}, t.revoked_at ? null : h("button", { type: "button", "aria-label": `Revoke token ${t.name}`,
          onclick: () => attempt(`Revoking token ${t.name}`, async () => {
            await api(`/tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" });
            toast(`token ${t.name} revoked`);
            await load();
          }) }, "Revoke"))))))));
  };
  const form = h("form", { class: "filters", id: "token-form", onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    return attempt("Creating the token", async () => {
      const token = await api("/tokens", { method: "POST", body: { name: String(data.get("name")), role: String(data.get("role")) } });
      clear(created, h("section", { class: "panel" },
        h("h2", {}, `New ${token.role} token “${token.name}”`),
        h("p", {}, "Copy it now: it is shown this once and stored only as a hash."),
        h("code", { id: "new-token-value", class: "export-url" }, token.token)));
      e.target.reset();
      await load();
    });
  } },
  h("label", {}, "name", h("input", { name: "name", required: true, placeholder: "alice" })),
  h("label", {}, "role", h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r }, r)))),
  h("button", { type: "submit", class: "primary" }, "Create token"));
  clear(main, h("h1", {}, "API tokens"), form, created, list);
  await load();
}
