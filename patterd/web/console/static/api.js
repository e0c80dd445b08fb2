// The admin API, with the token in an Authorization header (never in a URL), and the live
// events read as Server-Sent Events over fetch (EventSource cannot send a header).

const KEY = "patterd.console.token";
let token = sessionStorage.getItem(KEY) || "";
const listeners = new Set();

export class Unauthorized extends Error {}

export function hasToken() { return Boolean(token); }

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
}

export function currentToken() { return token; }

/** Called with no argument whenever the daemon answers 401 (the token is wrong or gone). */
export function onUnauthorized(fn) { listeners.add(fn); }

function headers(extra = {}) {
  return {...extra, Authorization: `Bearer ${token}`};
}

async function checked(resp) {
  if (resp.status === 401) {
    listeners.forEach((fn) => fn());
    throw new Unauthorized("the admin token was refused");
  }
  if (!resp.ok) {
    let reason = resp.statusText;
    try { reason = (await resp.json()).error || reason; } catch (_) { /* not JSON */ }
    throw new Error(`${resp.status}: ${reason}`);
  }
  return resp;
}

/** GET a JSON document. */
export async function getJson(path, params = {}) {
  const resp = await fetch(url(path, params), {headers: headers(), cache: "no-store",
                                               credentials: "omit"});
  return (await checked(resp)).json();
}

/** POST JSON. */
export async function postJson(path, body = {}) {
  const resp = await fetch(path, {method: "POST", headers: headers({"Content-Type": "application/json"}),
                                  body: JSON.stringify(body), credentials: "omit"});
  return (await checked(resp)).json();
}

/** GET a file as a Blob (an export, a recording). */
export async function getBlob(path, params = {}) {
  const resp = await fetch(url(path, params), {headers: headers(), cache: "no-store",
                                               credentials: "omit"});
  await checked(resp);
  const name = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
  return {blob: await resp.blob(), name: name ? name[1] : ""};
}

export function url(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * Follow /v1/events from the event id `after`: onEvent(name, data, id) for each event,
 * reconnecting (from the last id seen) until `signal` aborts. onReset() when the daemon says
 * events were missed (reload the state, then carry on from the id it gives).
 */
export async function follow({after, callId, signal, onEvent, onReset, onState}) {
  let cursor = after;
  while (!signal.aborted) {
    try {
      const resp = await fetch(url("/v1/events", {after: cursor, call_id: callId}),
                               {headers: headers(), cache: "no-store", signal,
                                credentials: "omit"});
      await checked(resp);
      onState?.("live");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const event = parse(block);
          if (!event) continue;
          if (event.id) cursor = event.id;
          if (event.name === "reset") onReset?.(event.data);
          else onEvent(event.name, event.data, event.id);
        }
      }
    } catch (err) {
      if (signal.aborted || err instanceof Unauthorized) return;
    }
    onState?.("reconnecting");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function parse(block) {
  let name = "message", id = "", data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try { return {name, id, data: JSON.parse(data.join("\n"))}; } catch (_) { return null; }
}
