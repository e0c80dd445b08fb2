// The console's shell: the token prompt, the navigation and the pages (one module each).
import {getJson, hasToken, onUnauthorized, setToken, Unauthorized} from "./api.js";
import {fill, h} from "./dom.js";
import {livePage} from "./live.js";
import {callsPage} from "./calls.js";
import {callPage} from "./call.js";
import {overviewPage} from "./overview.js";
import {testCallPage} from "./testcall.js";

const $ = (id) => document.getElementById(id);
let stopPage = null;          // what the current page must stop (a stream, a timer, a call)

function showSignIn(message = "") {
  leave();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  fill($("page"));
  $("sign-in").hidden = false;
  $("token-error").textContent = message;
  $("token").focus();
}

function leave() {
  if (stopPage) {
    try { stopPage(); } catch (_) { /* the page is gone anyway */ }
  }
  stopPage = null;
}

async function route() {
  if (!hasToken()) return showSignIn();
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  leave();
  const [, page = "live", arg = ""] = location.hash.split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  const root = fill($("page"));
  const pages = {live: livePage, calls: arg ? callPage : callsPage, overview: overviewPage,
                 "test-call": testCallPage};
  const open = pages[page] || livePage;
  try {
    stopPage = await open(root, decodeURIComponent(arg), setStatus) || null;
    performance.mark("console-rendered");        // the page shows its data (for timing)
  } catch (err) {
    if (!(err instanceof Unauthorized)) {
      root.append(h("p", {class: "error", role: "alert"}, String(err.message || err)));
    }
  }
}

export function setStatus(text) { $("status").textContent = text; }

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  setToken(value);
  try {
    await getJson("/v1/live");
  } catch (err) {
    setToken("");
    return showSignIn(err instanceof Unauthorized ? "That token was refused." : String(err));
  }
  $("token").value = "";
  route();
});

$("sign-out").addEventListener("click", () => { setToken(""); showSignIn(); });
onUnauthorized(() => { setToken(""); showSignIn("The token was refused; type it again."); });
window.addEventListener("hashchange", route);
route();
