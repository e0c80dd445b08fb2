// DOM helpers. Every piece of data reaches the page as text (textContent, attribute values
// set one by one): nothing a caller says or a record holds is ever parsed as HTML.

const SVG = "http://www.w3.org/2000/svg";

/** An element with attributes and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element (attributes set one by one, children as for h). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A phone number or SIP user with all but its last four digits masked. */
export function mask(value) {
  const text = String(value ?? "");
  if (text.includes("*")) return text;                    // masked by the daemon already
  const sip = /^(sips?:)([^@]+)@(.*)$/.exec(text);
  if (sip) return sip[1] + stars(sip[2]) + "@" + sip[3];
  const m = /^(\+?)(\d{3,11})(\d{4})$/.exec(text);
  return m ? m[1] + "*".repeat(m[2].length) + m[3] : text;
}

function stars(user) {
  return "*".repeat(Math.max(0, user.length - 4)) + user.slice(-4);
}

/** Unix seconds as a local date and time. */
export function when(seconds) {
  if (typeof seconds !== "number") return "";
  return new Date(seconds * 1000).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

/** Seconds as m:ss (or h:mm:ss). */
export function clock(seconds) {
  const t = Math.max(0, Math.round(seconds || 0));
  const hh = Math.floor(t / 3600), mm = Math.floor((t % 3600) / 60), ss = t % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

/** Seconds as milliseconds text. */
export function ms(seconds) {
  return typeof seconds === "number" ? `${Math.round(seconds * 1000)} ms` : "–";
}

/** US dollars. */
export function usd(value) {
  if (typeof value !== "number") return "–";
  return value < 0.01 && value > 0 ? `$${value.toFixed(5)}` : `$${value.toFixed(4)}`;
}

/** A small pill. */
export function badge(text, kind = "") {
  return h("span", {class: `badge ${kind}`.trim()}, text);
}
