// Small SVG charts drawn with DOM calls (no library, no HTML strings).
import {s} from "./dom.js";

export const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2",
                        "#db2777", "#65a30d", "#ea580c", "#475569"];
const STAGE_COLORS = {endpointing: "#94a3b8", stt: "#0891b2", llm_first_token: "#7c3aed",
                      tts_first_byte: "#f59e0b", response: "#2563eb"};
export const STAGES = ["endpointing", "stt", "llm_first_token", "tts_first_byte", "response"];
const LABELS = {endpointing: "Endpointing", stt: "STT", llm_first_token: "LLM first token",
                tts_first_byte: "TTS first byte", response: "Response"};

/** One turn's stages as bars on a common time axis (seconds after the caller stopped). */
export function waterfall(turn, {width = 560} = {}) {
  const stages = STAGES.filter((k) => typeof turn[k] === "number");
  const offsets = turn.offsets || {};
  const end = Math.max(0.001, ...stages.map((k) => (offsets[k] ?? 0) + turn[k]));
  const label = 130, row = 22, plot = width - label - 70;
  const svg = s("svg", {class: "waterfall", width, height: stages.length * row + 24,
                        viewBox: `0 0 ${width} ${stages.length * row + 24}`, role: "img",
                        "aria-label": "Turn latency waterfall"});
  stages.forEach((k, i) => {
    const x = label + ((offsets[k] ?? 0) / end) * plot;
    const w = Math.max(2, (turn[k] / end) * plot);
    const y = i * row + 4;
    svg.append(
      s("text", {x: 0, y: y + 13, class: "axis"}, LABELS[k] || k),
      s("rect", {x, y, width: w, height: row - 8, rx: 3, fill: STAGE_COLORS[k] || "#64748b",
                 class: `bar stage-${k}`, "data-stage": k},
        s("title", {}, `${LABELS[k] || k}: ${Math.round(turn[k] * 1000)} ms`)),
      s("text", {x: x + w + 6, y: y + 13, class: "value"}, `${Math.round(turn[k] * 1000)} ms`));
  });
  const axisY = stages.length * row + 18;
  svg.append(s("text", {x: label, y: axisY, class: "axis"}, "0"),
             s("text", {x: label + plot, y: axisY, class: "axis", "text-anchor": "end"},
               `${Math.round(end * 1000)} ms`));
  return svg;
}

/** Stacked bars: one per bucket, one segment per key of bucket.outcomes. */
export function stackedBars(buckets, keys, {width = 720, height = 220, label = null} = {}) {
  const max = Math.max(1, ...buckets.map((b) => b.total));
  const left = 36, bottom = 22, plotH = height - bottom - 8;
  const bw = (width - left) / Math.max(1, buckets.length);
  const svg = s("svg", {class: "bars", width, height, viewBox: `0 0 ${width} ${height}`,
                        role: "img", "aria-label": "Calls over time"});
  svg.append(s("text", {x: 0, y: 12, class: "axis"}, String(max)),
             s("text", {x: 0, y: plotH + 8, class: "axis"}, "0"));
  buckets.forEach((b, i) => {
    let y = plotH + 8;
    keys.forEach((k, j) => {
      const n = b.outcomes[k] || 0;
      if (!n) return;
      const hgt = (n / max) * plotH;
      y -= hgt;
      svg.append(s("rect", {x: left + i * bw + 1, y, width: Math.max(1, bw - 2), height: hgt,
                            fill: PALETTE[j % PALETTE.length], class: "segment",
                            "data-outcome": k},
                   s("title", {}, `${k}: ${n}`)));
    });
  });
  if (label && buckets.length) {
    svg.append(s("text", {x: left, y: height - 4, class: "axis"}, label(buckets[0].start)),
               s("text", {x: width, y: height - 4, class: "axis", "text-anchor": "end"},
                 label(buckets[buckets.length - 1].end)));
  }
  return svg;
}

/** Horizontal bars for a {name: value} map. */
export function hbars(values, format, {width = 520} = {}) {
  const entries = Object.entries(values);
  const max = Math.max(1e-12, ...entries.map(([, v]) => v));
  const row = 24, label = 90, plot = width - label - 90;
  const svg = s("svg", {class: "hbars", width, height: entries.length * row + 4,
                        viewBox: `0 0 ${width} ${entries.length * row + 4}`, role: "img"});
  entries.forEach(([k, v], i) => {
    const w = Math.max(v > 0 ? 2 : 0, (v / max) * plot);
    svg.append(s("text", {x: 0, y: i * row + 16, class: "axis"}, k),
               s("rect", {x: label, y: i * row + 4, width: w, height: row - 8, rx: 3,
                          fill: PALETTE[i % PALETTE.length], "data-key": k}),
               s("text", {x: label + w + 6, y: i * row + 16, class: "value"}, format(v)));
  });
  return svg;
}
