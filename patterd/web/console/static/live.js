// Live calls: the snapshot of /v1/live, then /v1/events from its cursor — lines appear as
// they are spoken, calls leave the list when they end.
import {follow, getJson} from "./api.js";
import {badge, clock, fill, h, mask} from "./dom.js";

export function transcriptList(lines, {start = null, limit = 0} = {}) {
  const shown = limit ? lines.slice(-limit) : lines;
  return h("ol", {class: "transcript"}, shown.map((ln) => line(ln, start)));
}

export function line(ln, start) {
  const who = ln.role === "agent" ? "Agent" : "Caller";
  const at = typeof start === "number" && typeof ln.at === "number"
    ? h("time", {class: "at"}, clock(ln.at - start)) : null;
  const text = ln.dtmf ? h("span", {class: "keys"}, `pressed ${ln.dtmf}`)
                       : h("span", {class: "text"}, ln.text ?? "");
  return h("li", {class: `line ${ln.role === "agent" ? "agent" : "caller"}`,
                  dataset: {index: String(ln.index ?? "")}},
           at, h("span", {class: "who"}, who), text,
           ln.interrupted ? badge("interrupted", "warn") : null,
           ln.playing ? badge("speaking", "info") : null);
}

export async function livePage(root, _arg, setStatus) {
  const calls = new Map();
  const list = h("div", {class: "live-list", id: "live-list"});
  const empty = h("p", {class: "muted", id: "live-empty"}, "No call in progress.");
  root.append(h("h1", {}, "Live calls"), empty, list);
  const abort = new AbortController();

  function card(call) {
    const el = h("article", {class: "card live-call", dataset: {callId: call.call_id}},
      h("header", {},
        h("a", {href: `#/calls/${encodeURIComponent(call.call_id)}`, class: "call-id"},
          call.call_id),
        badge(call.carrier), badge(call.direction),
        h("span", {class: "numbers"}, `${mask(call.from)} → ${mask(call.to)}`),
        h("span", {class: "state"}, call.status),
        h("time", {class: "duration", dataset: {since: String(call.created_at)}},
          clock(Date.now() / 1000 - call.created_at))),
      transcriptList(call.lines, {start: call.created_at, limit: 12}));
    return el;
  }

  function render(call) {
    const old = list.querySelector(`article[data-call-id="${CSS.escape(call.call_id)}"]`);
    const fresh = card(call);
    if (old) old.replaceWith(fresh); else list.prepend(fresh);
    empty.hidden = calls.size > 0;
  }

  function load(snapshot) {
    calls.clear();
    fill(list);
    for (const c of snapshot.calls) {
      calls.set(c.call_id, {...c, lines: c.transcript || []});
      render(calls.get(c.call_id));
    }
    empty.hidden = calls.size > 0;
  }

  function onEvent(name, data) {
    const call = calls.get(data.call_id);
    if (name === "call_start") {
      calls.set(data.call_id, {...data, lines: []});
      return render(calls.get(data.call_id));
    }
    if (!call) return;
    if (name === "call_status") call.status = data.status;
    else if (name === "turn_complete" || name === "transcript_partial") {
      call.lines[data.index] = data;
      for (let i = 0; i < call.lines.length; i++) call.lines[i] ||= {role: "", text: ""};
    } else if (name === "call_end") {
      calls.delete(data.call_id);
      list.querySelector(`article[data-call-id="${CSS.escape(data.call_id)}"]`)?.remove();
      empty.hidden = calls.size > 0;
      return;
    } else return;
    render(call);
  }

  async function start() {
    const snapshot = await getJson("/v1/live");
    load(snapshot);
    follow({after: snapshot.last_event_id, signal: abort.signal, onEvent,
            onState: (s) => setStatus(s === "live" ? "● live" : "reconnecting…"),
            onReset: async () => load(await getJson("/v1/live"))});
  }
  await start();
  const ticker = setInterval(() => {
    for (const t of list.querySelectorAll("time.duration")) {
      t.textContent = clock(Date.now() / 1000 - Number(t.dataset.since));
    }
  }, 1000);
  return () => { abort.abort(); clearInterval(ticker); setStatus(""); };
}
