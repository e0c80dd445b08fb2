// Call history: filters (time, outcome, direction, carrier), pages by cursor, CSV and JSON
// export of everything the filters select.
import {getBlob, getJson} from "./api.js";
import {badge, clock, fill, h, mask, when} from "./dom.js";

const OUTCOMES = ["", "completed", "transferred", "voicemail", "failed", "rejected", "busy",
                  "no_answer", "canceled", "silence", "max_duration", "drained", "expired"];
const PAGE = 25;

function select(name, options, label) {
  return h("label", {}, label, h("select", {name},
    options.map((o) => h("option", {value: o}, o || "any"))));
}

function toSeconds(local) {
  if (!local) return "";
  const t = new Date(local).getTime();
  return Number.isFinite(t) ? String(t / 1000) : "";
}

export async function callsPage(root) {
  const form = h("form", {class: "filters", id: "filters"},
    h("label", {}, "From", h("input", {type: "datetime-local", name: "since", step: "1"})),
    h("label", {}, "Until", h("input", {type: "datetime-local", name: "until", step: "1"})),
    select("outcome", OUTCOMES, "Outcome"),
    select("direction", ["", "inbound", "outbound"], "Direction"),
    select("carrier", ["", "twilio", "telnyx", "browser"], "Carrier"),
    h("button", {type: "submit"}, "Apply"),
    h("button", {type: "button", id: "export-csv"}, "Export CSV"),
    h("button", {type: "button", id: "export-json"}, "Export JSON"));
  const body = h("tbody");
  const table = h("table", {class: "calls", id: "calls-table"},
    h("thead", {}, h("tr", {}, ["Started", "Carrier", "Direction", "From", "To", "Duration",
                                "Outcome"].map((t) => h("th", {}, t)))), body);
  const prev = h("button", {type: "button", id: "prev"}, "← Newer");
  const next = h("button", {type: "button", id: "next"}, "Older →");
  const note = h("p", {class: "muted", id: "calls-note"});
  root.append(h("h1", {}, "Calls"), form, table, h("div", {class: "pager"}, prev, next), note);

  let cursors = [""];        // the cursor of each page shown so far
  let nextCursor = null;

  function filters() {
    const data = new FormData(form);
    return {since: toSeconds(data.get("since")), until: toSeconds(data.get("until")),
            outcome: data.get("outcome"), direction: data.get("direction"),
            carrier: data.get("carrier")};
  }

  async function show() {
    const cursor = cursors[cursors.length - 1];
    const page = await getJson("/v1/calls", {...filters(), limit: PAGE, cursor});
    nextCursor = page.next_cursor || null;
    fill(body, page.calls.map(row));
    prev.disabled = cursors.length <= 1;
    next.disabled = !nextCursor;
    note.textContent = page.calls.length ? `Page ${cursors.length}` : "No call matches.";
  }

  function row(c) {
    const duration = c.ended_at ? clock(c.ended_at - c.created_at) : "live";
    return h("tr", {dataset: {callId: c.call_id}},
      h("td", {}, h("a", {href: `#/calls/${encodeURIComponent(c.call_id)}`}, when(c.created_at))),
      h("td", {}, c.carrier), h("td", {}, c.direction), h("td", {}, mask(c.from)),
      h("td", {}, mask(c.to)), h("td", {}, duration),
      h("td", {}, c.outcome ? badge(c.outcome, c.outcome === "failed" ? "bad" : "") : c.status));
  }

  async function download(format) {
    const {blob, name} = await getBlob("/v1/export", {...filters(), format});
    const link = h("a", {href: URL.createObjectURL(blob), download: name || `calls.${format}`});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); cursors = [""]; show(); });
  next.addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); show(); } });
  prev.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); show(); } });
  form.querySelector("#export-csv").addEventListener("click", () => download("csv"));
  form.querySelector("#export-json").addEventListener("click", () => download("json"));
  await show();
}
