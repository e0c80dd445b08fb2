// "Call the agent": the microphone to the daemon over an authenticated WebSocket, the agent
// played back — the same session, turn-taking, backends and record as a phone call.
import {currentToken, follow, getJson} from "./api.js";
import {fill, h} from "./dom.js";
import {transcriptList} from "./live.js";

const MULAW = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff, sign = u & 0x80, exponent = (u >> 4) & 0x07, mantissa = u & 0x0f;
  const s = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  MULAW[i] = (sign ? -s : s) / 32768;
}
const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
const HEARD_LEVEL = 0.01;      // output RMS above this counts as the agent being heard

function b64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return btoa(text);
}

function unb64(text) {
  const raw = atob(text), out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function meter(id, label) {
  return h("div", {class: "meter"}, h("span", {}, label),
           h("progress", {id, max: "0.3", value: "0"}));
}

export async function testCallPage(root) {
  const callBtn = h("button", {type: "button", id: "call-agent", class: "primary"}, "Call the agent");
  const hangBtn = h("button", {type: "button", id: "hang-up", disabled: true}, "Hang up");
  const state = h("p", {id: "tc-state", role: "status"}, "Ready.");
  const heard = h("p", {id: "tc-heard", class: "muted", dataset: {seconds: "0", peak: "0"}},
                  "Agent heard: 0.0 s");
  const keypad = h("div", {class: "keypad", id: "keypad"},
    KEYS.map((k) => h("button", {type: "button", disabled: true, dataset: {key: k}}, k)));
  const lines = h("div", {id: "tc-transcript"});
  root.append(h("h1", {}, "Call the agent"),
    h("p", {class: "muted"}, "Talk to the agent from this tab: your microphone goes through " +
      "the same session, speech recognition, agent and voice as a phone call, and the call " +
      "is recorded (carrier \u201cbrowser\u201d, no carrier cost)."),
    h("div", {class: "controls"}, callBtn, hangBtn), state,
    meter("tc-mic", "You"), meter("tc-agent", "Agent"), heard, keypad, lines);

  let call = null;

  async function start() {
    callBtn.disabled = true;
    state.textContent = "Opening the microphone…";
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia(
        {audio: {echoCancellation: true, noiseSuppression: true, autoGainControl: true}});
    } catch (err) {
      state.textContent = `No microphone: ${err.message || err}`;
      callBtn.disabled = false;
      return;
    }
    const ctx = new AudioContext();
    await ctx.resume();
    await ctx.audioWorklet.addModule("/console/static/mic-worklet.js");
    const mic = ctx.createMediaStreamSource(media);
    const encoder = new AudioWorkletNode(ctx, "mic-encoder");
    mic.connect(encoder);
    const out = ctx.createGain();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    out.connect(analyser);
    analyser.connect(ctx.destination);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/v1/browser-call`);
    call = {ctx, media, ws, encoder, out, analyser, playHead: 0, sources: new Set(),
            marks: [], started: false, abort: new AbortController(), heardSeconds: 0,
            peak: 0, timer: null, lines: [], id: ""};
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({event: "auth", token: currentToken()}));
      state.textContent = "Connecting…";
    });
    ws.addEventListener("message", (m) => onFrame(JSON.parse(m.data)));
    ws.addEventListener("close", (e) => finish(e.code === 4401 ? "The token was refused."
      : e.code === 4503 ? "The daemon is not taking calls now." : null));
    encoder.port.onmessage = ({data}) => {
      document.getElementById("tc-mic").value = data.level;
      if (call?.started && ws.readyState === WebSocket.OPEN) {
        ws.send(`{"event":"media","media":{"payload":"${b64(new Uint8Array(data.frame))}"}}`);
      }
    };
    const samples = new Float32Array(analyser.fftSize);
    call.timer = setInterval(() => {          // what the page actually plays, 10 times a second
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const v of samples) sum += v * v;
      const rms = Math.sqrt(sum / samples.length);
      document.getElementById("tc-agent").value = rms;
      if (rms > HEARD_LEVEL) call.heardSeconds += 0.1;
      call.peak = Math.max(call.peak, rms);
      heard.dataset.seconds = call.heardSeconds.toFixed(1);
      heard.dataset.peak = call.peak.toFixed(4);
      heard.textContent = `Agent heard: ${call.heardSeconds.toFixed(1)} s`;
    }, 100);
  }

  function onFrame(f) {
    const c = call;
    if (!c) return;
    if (f.event === "connected") {
      c.id = f.call_id;
      c.started = true;
      c.ws.send(JSON.stringify({event: "start", start: {encoding: "PCMU", sampleRate: 8000}}));
      state.textContent = `In a call (${f.call_id}).`;
      state.dataset.callId = f.call_id;
      hangBtn.disabled = false;
      keypad.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      showLines(c);
    } else if (f.event === "media") {
      play(c, unb64(f.media.payload));
    } else if (f.event === "mark") {
      const at = Math.max(c.playHead, c.ctx.currentTime);
      c.marks.push(setTimeout(() => send(c, {event: "mark", mark: {name: f.mark.name}}),
                              (at - c.ctx.currentTime) * 1000));
    } else if (f.event === "clear") {
      for (const src of c.sources) src.stop();
      c.sources.clear();
      c.playHead = c.ctx.currentTime;
    } else if (f.event === "hangup" || f.event === "transfer") {
      state.textContent = f.event === "hangup" ? "The agent hung up."
        : `The agent transferred the call to ${f.to}.`;
      c.ended = state.textContent;
      send(c, {event: "stop"});
    } else if (f.event === "dtmf") {
      state.textContent = `The agent pressed ${f.digits}.`;
    }
  }

  function play(c, bytes) {
    const buffer = c.ctx.createBuffer(1, bytes.length, 8000);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < bytes.length; i++) data[i] = MULAW[bytes[i]];
    const src = c.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(c.out);
    c.playHead = Math.max(c.playHead, c.ctx.currentTime + 0.03);
    src.start(c.playHead);
    c.playHead += buffer.duration;
    c.sources.add(src);
    src.onended = () => c.sources.delete(src);
  }

  function send(c, frame) {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.send(JSON.stringify(frame));
  }

  async function showLines(c) {
    const live = await getJson("/v1/live");
    follow({after: live.last_event_id, callId: c.id, signal: c.abort.signal,
            onEvent: (name, data) => {
              if (name !== "turn_complete" && name !== "transcript_partial") return;
              c.lines[data.index] = data;
              fill(lines, transcriptList(c.lines.filter(Boolean)));
            }});
  }

  function finish(reason) {
    const c = call;
    if (!c) return;
    call = null;
    clearInterval(c.timer);
    c.marks.forEach(clearTimeout);
    c.media.getTracks().forEach((t) => t.stop());
    setTimeout(() => { c.abort.abort(); c.ctx.close(); }, 1500);   // let the last lines in
    document.getElementById("tc-mic").value = 0;
    document.getElementById("tc-agent").value = 0;
    state.textContent = reason || c.ended || "Call ended.";
    state.dataset.ended = "1";
    callBtn.disabled = false;
    hangBtn.disabled = true;
    keypad.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  }

  callBtn.addEventListener("click", start);
  hangBtn.addEventListener("click", () => {
    if (!call) return;
    send(call, {event: "stop"});
    call.ended = "You hung up.";
  });
  keypad.addEventListener("click", (e) => {
    const key = e.target?.dataset?.key;
    if (key && call) send(call, {event: "dtmf", dtmf: {digit: key}});
  });
  const leave = () => { if (call) { send(call, {event: "stop"}); finish("Call ended."); } };
  window.addEventListener("pagehide", leave);
  return () => { window.removeEventListener("pagehide", leave); leave(); };
}
