// The dashboard shell: sign-in with an API token, theme, hash routing to the pages.

import { api, session, ApiError } from "./api.js";
import { h, clear, toast, showError, describeError } from "./dom.js";
import { connect, disconnect, onFrame } from "./stream.js";
import { overviewPage, prefetchOverview } from "./pages/overview.js";
import { hostPage } from "./pages/host.js";
import { alertsPage } from "./pages/alerts.js";
import { rulesPage, silencesPage, notificationsPage } from "./pages/lists.js";
import { explorePage } from "./pages/explore.js";
import { eventsPage } from "./pages/events.js";
import { tokensPage } from "./pages/tokens.js";

const THEME_KEY = "signalfire.theme";
const main = document.getElementById("main");
let leave = null;

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

document.getElementById("theme").addEventListener("click", () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});
applyTheme(localStorage.getItem(THEME_KEY));

const errors = document.getElementById("errors");
function dismissErrors() {
  errors.hidden = true;
  errors.querySelector("ul").replaceChildren();
}
document.getElementById("errors-dismiss").addEventListener("click", dismissErrors);
// A safety net under attempt(): whatever a control's code forgot to catch is still shown.
window.addEventListener("unhandledrejection", (e) => showError(`Something failed: ${describeError(e.reason)}`));

document.getElementById("signout").addEventListener("click", () => {
  session.token = "";
  dismissErrors();
  disconnect();
  route();
});

function signIn(message) {
  document.getElementById("signout").hidden = true;
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const form = h(
    "form", { class: "panel signin", onsubmit: async (e) => { e.preventDefault(); session.token = input.value.trim(); route(); } },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    message ? h("p", { class: "sev sev-critical", role: "alert" }, message) : null,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    h("p", { class: "muted" }, "With `make up`, the admin token is in .signalfire/admin-token."),
  );
  clear(main, form);
  input.focus();
}

// [hash pattern, the page, and what the page will ask the API for first, asked for while the
// token is being checked (the page's first view then waits for one round trip, not two)].
const routes = [
  [/^#?\/?$/, () => overviewPage(main), prefetchOverview],
  [/^#\/hosts\/(.+)$/, (m) => hostPage(main, decodeURIComponent(m[1]))],
  [/^#\/alerts(?:\/([^?]+))?(?:\?.*)?$/, (m) => alertsPage(main, m[1] ? decodeURIComponent(m[1]) : null)],
  [/^#\/rules$/, () => rulesPage(main)],
  [/^#\/silences$/, () => silencesPage(main)],
  [/^#\/notifications$/, () => notificationsPage(main)],
  [/^#\/explore(?:\?.*)?$/, () => explorePage(main)],
  [/^#\/events(?:\?.*)?$/, () => eventsPage(main)],
  [/^#\/tokens$/, () => tokensPage(main)],
];

// A route that starts while the previous one is still loading (a hash set during sign-in, a
// stream reset, a quick second click) supersedes it: the older page is left as soon as it
// has loaded, so its stream listeners and timers do not keep drawing into a page no one sees.
let routing = 0;
async function route() {
  const mine = ++routing;
  if (leave) { leave(); leave = null; }
  if (!session.token) return signIn();
  const prefetch = routes.find(([pattern]) => pattern.test(location.hash))?.[2];
  if (prefetch) prefetch();
  try {
    const me = await api("/whoami");
    session.role = me.role;
  } catch (err) {
    if (mine !== routing) return;
    if (err instanceof ApiError && err.status === 401) { session.token = ""; return signIn("That token was not accepted."); }
    toast(`Cannot reach the gateway: ${err.message}`);
  }
  if (mine !== routing) return;
  document.getElementById("signout").hidden = false;
  document.body.dataset.role = session.role;
  for (const a of document.querySelectorAll("#nav a[data-role=admin]")) a.hidden = session.role !== "admin";
  for (const a of document.querySelectorAll("#nav a")) {
    const active = location.hash.startsWith(a.getAttribute("href")) && (a.getAttribute("href") !== "#/" || ["", "#/", "#"].includes(location.hash));
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  connect();
  for (const [pattern, page] of routes) {
    const m = location.hash.match(pattern);
    if (m) {
      try {
        const left = (await page(m)) || null;
        if (mine === routing) leave = left;
        else if (left) left();
      } catch (err) {
        if (mine === routing) clear(main, h("p", { role: "alert" }, `Could not load this page: ${err.message}`));
      }
      return;
    }
  }
  clear(main, h("h1", {}, "Not found"));
}

// The skip link moves focus to the content; its #main must not reach the hash router.
document.querySelector("a.skip").addEventListener("click", (e) => { e.preventDefault(); main.focus(); });
window.addEventListener("hashchange", route);
// The stream could not resume (the gateway restarted, or the tab was away too long): reload
// what the page shows, so nothing that arrived in between is missing.
onFrame((frame) => { if (frame.kind === "reset") route(); });
// The stream's token was revoked: route() asks the API, which refuses it, and shows sign-in.
window.addEventListener("signalfire:signed-out", route);
route();
