// One call: summary, recording, status history, transcript, keys, events, the per-turn
// latency waterfall and the cost breakdown. A live call follows its events.
import {follow, getBlob, getJson} from "./api.js";
import {badge, clock, fill, h, mask, ms, usd, when} from "./dom.js";
import {waterfall} from "./charts.js";
import {transcriptList} from "./live.js";

function section(title, ...content) {
  return h("section", {class: "card"}, h("h2", {}, title), ...content);
}

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
           h("tbody", {}, rows));
}

function details(event) {
  const rest = Object.entries(event).filter(([k]) => k !== "type" && k !== "at");
  return rest.map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
             .join(", ");
}

export async function callPage(root, callId) {
  const abort = new AbortController();
  const holder = h("div", {id: "call"});
  root.append(h("p", {}, h("a", {href: "#/calls"}, "← Calls")), holder);
  let audioUrl = "";

  async function render() {
    const rec = await getJson(`/v1/calls/${encodeURIComponent(callId)}`);
    const live = !rec.ended_at;
    const duration = (rec.ended_at || Date.now() / 1000) - rec.created_at;
    const summary = section("Call",
      h("dl", {class: "facts"},
        h("dt", {}, "Id"), h("dd", {class: "mono"}, rec.call_id),
        h("dt", {}, "Carrier"), h("dd", {}, rec.carrier),
        h("dt", {}, "Direction"), h("dd", {}, rec.direction),
        h("dt", {}, "From"), h("dd", {}, mask(rec.from)),
        h("dt", {}, "To"), h("dd", {}, mask(rec.to)),
        h("dt", {}, "Started"), h("dd", {}, when(rec.created_at)),
        h("dt", {}, "Duration"), h("dd", {}, clock(duration)),
        h("dt", {}, "Status"), h("dd", {}, rec.status),
        h("dt", {}, "Outcome"), h("dd", {id: "outcome"},
          rec.outcome ? badge(rec.outcome) : badge("live", "info"))));
    const recording = (rec.events || []).find((e) => e.type === "recording" && e.source === "local");
    const player = recording ? section("Recording",
      h("audio", {controls: true, id: "recording", preload: "auto"}),
      h("p", {class: "muted"}, `${recording.duration ?? "?"} s — caller left, agent right`))
      : null;
    const history = section("Status history", table(["Time", "Status", "Sequence"],
      (rec.status_history || []).map((st) => h("tr", {},
        h("td", {}, when(st.at)), h("td", {}, st.status), h("td", {}, st.sequence ?? "")))));
    const transcript = section("Transcript",
      rec.transcript?.length ? transcriptList(rec.transcript.map((ln, i) => ({...ln, index: i})),
                                             {start: rec.created_at})
                             : h("p", {class: "muted"}, live ? "Nothing said yet." : "No transcript."));
    const keys = rec.dtmf ? section("Keys", h("p", {class: "mono", id: "keys"}, rec.dtmf)) : null;
    const events = section("Events", (rec.events || []).length
      ? table(["Time", "Type", "Details"], rec.events.map((e) => h("tr", {},
          h("td", {}, when(e.at)), h("td", {}, e.type ?? ""), h("td", {}, details(e)))))
      : h("p", {class: "muted"}, "No events."));
    const turns = (rec.turns || []).filter((t) => typeof t.response === "number");
    const latency = section("Turn latency",
      turns.length ? h("div", {id: "waterfalls"}, turns.map((t, i) => h("figure", {class: "turn"},
        h("figcaption", {}, `Turn ${i + 1}` + (t.at ? ` · ${clock(t.at - rec.created_at)}` : "")
          + ` · response ${ms(t.response)}`),
        waterfall(t))))
        : h("p", {class: "muted"}, "No answered turn."));
    const c = rec.cost;
    const cost = section("Cost", c ? table(["Component", "USD"], [
      ...["carrier", "stt", "llm", "tts"].map((k) => h("tr", {}, h("td", {}, k), h("td", {}, usd(c[k])))),
      h("tr", {class: "total"}, h("td", {}, "total"), h("td", {}, usd(c.total)))])
      : h("p", {class: "muted"}, live ? "Priced when the call ends." : "Not priced."));
    if (c && c.carrier_source) cost.append(h("p", {class: "muted"}, `carrier: ${c.carrier_source}`
                                             + (c.billed_seconds ? `, ${c.billed_seconds} s billed` : "")));
    fill(holder, summary, player, transcript, keys, latency, cost, history, events);
    if (recording) {
      const {blob} = await getBlob(`/v1/calls/${encodeURIComponent(callId)}/recording`);
      if (audioUrl) URL.revokeObjectURL(audioUrl);
      audioUrl = URL.createObjectURL(blob);
      holder.querySelector("#recording").src = audioUrl;
    }
    return rec;
  }

  const rec = await render();
  if (!rec.ended_at) {
    const live = await getJson("/v1/live");
    let pending = null;
    follow({after: live.last_event_id, callId, signal: abort.signal,
            onEvent: () => {          // redraw at most twice a second
              pending ||= setTimeout(() => { pending = null; render(); }, 500);
            }});
  }
  return () => { abort.abort(); if (audioUrl) URL.revokeObjectURL(audioUrl); };
}
