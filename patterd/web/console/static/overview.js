// Overview: calls and outcomes over time, response latency percentiles, cost by component.
import {getJson} from "./api.js";
import {fill, h, ms, usd, when} from "./dom.js";
import {hbars, PALETTE, stackedBars, STAGES} from "./charts.js";

const RANGES = {"1 hour": 3600, "24 hours": 86400, "7 days": 7 * 86400, "30 days": 30 * 86400};

export async function overviewPage(root) {
  const range = h("select", {id: "range"},
    Object.keys(RANGES).map((k) => h("option", {value: k, selected: k === "24 hours"}, k)));
  const body = h("div", {id: "overview"});
  root.append(h("h1", {}, "Overview"), h("label", {}, "Last ", range), body);

  async function show() {
    const until = Date.now() / 1000;
    const since = until - RANGES[range.value];
    const st = await getJson("/v1/stats", {since, until, buckets: 24});
    const outcomes = Object.keys(st.outcomes).sort((a, b) => st.outcomes[b] - st.outcomes[a]);
    const legend = h("ul", {class: "legend"}, outcomes.map((k, i) => h("li", {},
      h("span", {class: `swatch c${i % PALETTE.length}`}), `${k}: ${st.outcomes[k]}`)));
    const resp = st.latency.response;
    const latencyRows = STAGES.map((k) => h("tr", {dataset: {stage: k}},
      h("td", {}, k), h("td", {}, ms(st.latency[k].p50)), h("td", {}, ms(st.latency[k].p95)),
      h("td", {}, String(st.latency[k].n))));
    const costs = Object.fromEntries(["carrier", "stt", "llm", "tts"].map((k) => [k, st.cost[k] || 0]));
    fill(body,
      h("div", {class: "tiles"},
        h("div", {class: "tile"}, h("span", {class: "big", id: "total-calls"}, String(st.calls)), "calls"),
        h("div", {class: "tile"}, h("span", {class: "big", id: "p50"}, ms(resp.p50)), "response p50"),
        h("div", {class: "tile"}, h("span", {class: "big", id: "p95"}, ms(resp.p95)), "response p95"),
        h("div", {class: "tile"}, h("span", {class: "big", id: "total-cost"}, usd(st.cost.total)), "cost")),
      h("section", {class: "card"}, h("h2", {}, "Calls and outcomes"),
        stackedBars(st.buckets, outcomes, {label: when}), legend,
        st.truncated ? h("p", {class: "muted"}, "Only the newest calls are counted.") : null),
      h("section", {class: "card"}, h("h2", {}, "Latency by stage"),
        h("table", {id: "latency"}, h("thead", {}, h("tr", {}, ["Stage", "p50", "p95", "turns"]
          .map((t) => h("th", {}, t)))), h("tbody", {}, latencyRows))),
      h("section", {class: "card"}, h("h2", {}, "Cost by component"), hbars(costs, usd)));
  }
  range.addEventListener("change", show);
  await show();
}
