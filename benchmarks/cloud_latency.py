#!/usr/bin/env python3
"""Benchmark: the gateway's own share of reply latency with cloud providers, and its CPU per
call-minute — each provider played by its local fake (tests/support/fakes), N concurrent calls.

Per reply the benchmark measures, on one clock, the time from a backend's first byte to the
first frame of that reply arriving on the carrier media socket at the simulator:

- STT: the Deepgram fake sending the last ``is_final`` Results before the LLM request of the
  turn (the Results that ended the turn) → first reply frame;
- LLM: the LLM fake's first SSE body write → first reply frame;
- TTS: the TTS fake's first audio write (of the reply's first sentence) → first reply frame.

The clock: ``time.perf_counter()`` in the fakes' process and in the simulator's process. On
Linux it is ``clock_gettime(CLOCK_MONOTONIC)`` (``time.get_clock_info``), one system-wide
clock, so stamps taken in different processes compare; the script checks the implementation
in both processes and that a child's stamp falls between two of its own.

Correlation is exact, by content, not by timing:

1. the Deepgram fake hears utterance ``i`` of connection ``s`` as "<words> k<n>k", ``n`` a
   counter unique per utterance (the token);
2. the LLM fake finds the token in the request's last message and answers
   "Ticket k<n>k is noted. We are open from nine to five." (token in the first sentence);
3. the TTS fake prefixes every synthesis with a 20 ms code (16 slots of 1.25 ms at ±0.85 full
   scale: a 4-slot sync and a 12-bit request id) before its tone (0.5 full scale, so the tone
   never looks like a code). μ-law from ElevenLabs/Deepgram/Cartesia passes the gateway
   untouched; OpenAI's 24 kHz PCM is resampled (soxr) to 8 kHz, and the signs at the slot
   middles survive it (checked in the self-test at start-up);
4. the simulator's caller (``Caller.on_media``, wrapped in this script's simulator process
   only — patterd/simulate is not changed) decodes the code of every frame it receives and
   records (perf_counter at arrival, id, whether the frame began a new reply burst).

id → TTS request (text with the token, first write time) → LLM request (token; first write,
arrival) → Deepgram connection (last final before that arrival). A reply counts when its first
TTS request's coded frame was the first frame of a reply burst at the caller.

    .venv/bin/python benchmarks/cloud_latency.py              # all scenarios, N = 1 and 100
    .venv/bin/python benchmarks/cloud_latency.py --quick      # main scenario, 1 run per N
    .venv/bin/python benchmarks/cloud_latency.py --scenarios main --calls 1,100 --runs 3
    .venv/bin/python benchmarks/cloud_latency.py --profile 100  # + py-spy of the daemon
    .venv/bin/python benchmarks/cloud_latency.py --json > cloud.json

Each run: a fresh fakes process and a fresh simulator process (both ``taskset -c 0``), a fresh
daemon (``python -m patterd``, ``taskset -c 1``) on 127.0.0.1. Not a test; see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import calls  # noqa: E402  (benchmarks/calls.py: daemon, /proc and py-spy helpers)
from webhooks import cpu_ticks, die_with_parent, taskset  # noqa: E402

FLOOR_MS = 20.0          # the floor: gateway share p99 at 100 calls
CODE_SLOTS = 16
CODE_SYNC = (1, 1, 0, 1)
CODE_AMP = 0.85          # of full scale; the fakes' tone is 0.5
CODE_MIN = int(0.65 * 32767)
TOKEN = re.compile(r"\bk(\d+)k\b")
GREETING = "Hello, how can I help?"
SCENARIOS: dict[str, tuple[str, str, str]] = {   # name → (stt, llm, tts)
    "main": ("deepgram", "openai", "elevenlabs"),
    "tts-deepgram": ("deepgram", "openai", "deepgram"),
    "tts-cartesia": ("deepgram", "openai", "cartesia"),
    "tts-openai": ("deepgram", "openai", "openai"),
    "llm-anthropic": ("deepgram", "anthropic", "elevenlabs"),
    # LLM first token → first frame, the answer streamed into a socket vs sent per sentence
    "ws-elevenlabs": ("deepgram", "openai", "elevenlabs"),
    "http-elevenlabs": ("deepgram", "openai", "elevenlabs"),
    "ws-cartesia": ("deepgram", "openai", "cartesia"),
    "http-cartesia": ("deepgram", "openai", "cartesia"),
}
TRANSPORT = {"ws-elevenlabs": "websocket", "http-elevenlabs": "http",
             "ws-cartesia": "websocket", "http-cartesia": "http",
             "main": "http", "tts-cartesia": "http", "llm-anthropic": "http"}
"""The TTS transport of each scenario (the older scenarios keep measuring HTTP)."""
LAYERS = ("stt", "llm", "tts")
log = calls.log


# --------------------------------------------------------------------------- the reply code


def code_samples(ident: int, rate: int) -> Any:
    """The 20 ms code for request ``ident`` at ``rate`` (float samples in [-1, 1])."""
    import numpy as np

    n = max(1, round(rate / 800))     # 1.25 ms slots: 10 samples at 8 kHz, 30 at 24 kHz
    bits = list(CODE_SYNC) + [(ident >> (11 - i)) & 1 for i in range(CODE_SLOTS - 4)]
    return np.concatenate([np.full(n, CODE_AMP if b else -CODE_AMP) for b in bits])


def read_code(pcm: bytes) -> int | None:
    """The request id coded at the start of a received 8 kHz s16le frame, or None."""
    if len(pcm) < 2 * 10 * CODE_SLOTS:
        return None
    if abs(int.from_bytes(pcm[10:12], "little", signed=True)) < CODE_MIN:
        return None                        # cheap reject: no code starts this frame
    import numpy as np

    mids = np.frombuffer(pcm, "<i2", count=10 * CODE_SLOTS)[5::10]
    if int(np.min(np.abs(mids.astype(np.int32)))) < CODE_MIN:
        return None
    bits = [1 if v > 0 else 0 for v in mids.tolist()]
    if tuple(bits[:4]) != CODE_SYNC:
        return None
    return int("".join(map(str, bits[4:])), 2)


def self_test() -> None:
    """The code survives μ-law and the daemon's 24 → 8 kHz resampler, and the tone is never
    read as a code."""
    import numpy as np

    from patterd.audio.codecs import ulaw_decode, ulaw_encode
    from patterd.audio.resample import Resampler

    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    for ident in (0, 1, 1234, 4095):
        pcm8 = (np.concatenate([code_samples(ident, 8000), tone]) * 32767).astype("<i2")
        got = read_code(ulaw_decode(ulaw_encode(pcm8.tobytes()))[:320])
        pcm24 = (np.concatenate([code_samples(ident, 24000), np.repeat(tone, 3)])
                 * 32767).astype("<i2").tobytes()
        r, out = Resampler(24000, 8000), b""
        for i in range(0, len(pcm24), 960):
            out += r.process(pcm24[i:i + 960])
        got24 = read_code(ulaw_decode(ulaw_encode(out))[:320])
        if got != ident or got24 != ident:
            raise RuntimeError(f"reply code self-test failed: {ident} → {got}, {got24}")
    t16 = (tone * 32767).astype("<i2").tobytes()
    if any(read_code(t16[i:i + 320]) is not None for i in range(0, len(t16) - 320, 2)):
        raise RuntimeError("reply code self-test: the tone reads as a code")


def check_clock() -> dict[str, Any]:
    """perf_counter is CLOCK_MONOTONIC here and in a child process, and the child's stamp
    falls between two of ours: the stamps of the fakes and the simulator compare."""
    info = time.get_clock_info("perf_counter")
    before = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import time,json;print(json.dumps("
                          "[time.perf_counter(), time.get_clock_info('perf_counter')"
                          ".implementation]))"], capture_output=True, text=True, check=True)
    after = time.perf_counter()
    child, impl = json.loads(out.stdout)
    ok = (info.implementation == impl == "clock_gettime(CLOCK_MONOTONIC)"
          and before <= child <= after)
    if not ok:
        raise RuntimeError(f"perf_counter is not one clock across processes: {impl}, "
                           f"{before} <= {child} <= {after}?")
    return {"implementation": impl, "cross_process": "ok"}


# --------------------------------------------------------------------------- the fakes process


def build_fakes(stt: str, llm: str, tts: str, args: dict[str, Any]) -> dict[str, Any]:
    """The three fakes of a scenario, each subclassed to tag and time what it does."""
    from tests.support.fakes.anthropic_messages import FakeAnthropicMessages
    from tests.support.fakes.cartesia import FakeCartesia
    from tests.support.fakes.deepgram_listen import FakeDeepgramListen
    from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
    from tests.support.fakes.elevenlabs import FakeElevenLabs
    from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply
    from tests.support.fakes.openai_speech import FakeOpenAISpeech

    assert stt == "deepgram"
    tokens = itertools.count(1)
    said = ("what are your opening hours", "when are you open")

    class Listen(FakeDeepgramListen):
        """Unique words per utterance; the send time of every final Results."""

        finals: list[tuple[float, str, str]] = []     # (perf_counter, request_id, transcript)

        async def _send(self, ws: Any, s: Any, msgs: list[dict[str, Any]]) -> None:
            for m in msgs:
                if m.get("type") == "Results" and m.get("is_final"):
                    self.finals.append((time.perf_counter(), s.request_id,
                                        m["channel"]["alternatives"][0]["transcript"]))
            await super()._send(ws, s, msgs)

    listen = Listen(recogniser=lambda s, i: f"{said[i % 2]} k{next(tokens)}k")

    def answer(body: dict[str, Any]) -> str:
        m = TOKEN.search(json.dumps(body.get("messages", [])[-1:]))
        token = m.group(0) if m else "k0k"
        if args.get("long_answer"):     # a first sentence past ElevenLabs' first 50 characters
            return (f"Ticket {token} is noted, and someone from our team will call you back "
                    "within the hour. We are open from nine to five.")
        return f"Ticket {token} is noted. We are open from nine to five."

    class Chat(FakeOpenAIChat):
        def record(self, request: Any) -> Any:
            rec = super().record(request)
            rec.received_at = time.perf_counter()
            return rec

        def chunks(self, body: dict[str, Any], reply: Any) -> list[bytes]:
            return super().chunks(body, Reply(answer(body)))

    class Messages(FakeAnthropicMessages):
        def record(self, request: Any) -> Any:
            rec = super().record(request)
            rec.received_at = time.perf_counter()
            return rec

        def events(self, body: dict[str, Any], reply: Any) -> list[bytes]:
            return super().events(body, Reply(answer(body)))

    def coded(base: type) -> type:
        class Coded(base):  # type: ignore[valid-type, misc]
            """Every synthesis starts with the 20 ms code of its request id."""

            def __init__(self) -> None:
                super().__init__()
                self.coded: dict[int, tuple[Any, float]] = {}   # id → (request, perf_counter)
                self._ids = itertools.count()

            def samples(self, text: str, rate: int) -> Any:
                import numpy as np
                ident = next(self._ids) % 4096
                # HTTP fakes record the request just before synthesising it (no await between);
                # a socket's generation carries its own text (its record may not be the last)
                self.coded[ident] = (self.requests[-1], time.perf_counter(), text)
                return np.concatenate([code_samples(ident, rate), super().samples(text, rate)])
        return Coded

    llm_fake = Chat() if llm == "openai" else Messages()
    llm_fake.event_delay = args.get("llm_event_delay", 0.0)
    tts_fake = coded({"elevenlabs": FakeElevenLabs, "deepgram": FakeDeepgramSpeak,
                      "cartesia": FakeCartesia, "openai": FakeOpenAISpeech}[tts])()
    tts_fake.speed = args.get("tts_speed", 0.0)
    tts_fake.stall = args.get("tts_first_audio", 0.0)   # the service's time to first audio
    return {"stt": listen, "llm": llm_fake, "tts": tts_fake}


def tts_text(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("text", "transcript", "input"):
            if isinstance(body.get(key), str):
                return body[key]
    return ""


async def fakes_main(job: dict[str, Any]) -> None:
    fakes = build_fakes(*job["providers"], job)
    urls = {k: await f.start() for k, f in fakes.items()}
    keys = {k: f.api_key for k, f in fakes.items()}
    Path(job["urls"]).write_text(json.dumps({"urls": urls, "keys": keys,
                                             "clock": time.get_clock_info(
                                                 "perf_counter").implementation}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    stt, llm, tts = fakes["stt"], fakes["llm"], fakes["tts"]
    out = {
        "finals": stt.finals,
        "llm": [{"received_at": getattr(r, "received_at", None), "first_byte_at": r.first_byte_at,
                 "status": r.status, "token": (TOKEN.search(json.dumps(
                     (r.body or {}).get("messages", [])[-1:])) or [None])[0]}
                for r in llm.requests],
        "tts": {str(i): {"text": text or tts_text(rec.body), "first_byte_at": rec.first_byte_at,
                         "synth_at": at, "status": rec.status}
                for i, (rec, at, text) in tts.coded.items()},
        "tts_requests": len(tts.requests),
    }
    for f in fakes.values():
        with contextlib.suppress(Exception):
            await f.stop()
    Path(job["out"]).write_text(json.dumps(out))


def serve_fakes(job_path: str) -> int:
    """``--serve-fakes JOB``: run the scenario's fakes until SIGTERM, then write records."""
    import uvloop

    job = json.loads(Path(job_path).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(fakes_main(job))
    return 0


# --------------------------------------------------------------------------- the simulator


def install_code_probe(seen: list[tuple[float, int, bool]]) -> None:
    """Wrap :meth:`Caller.on_media` (in this process only): note (perf_counter at arrival, the
    coded request id, whether the frame begins a new reply burst) for coded frames."""
    from patterd.simulate import caller as caller_mod

    original = caller_mod.Caller.on_media
    gap = caller_mod.BURST_GAP

    def on_media(self: Any, pcm: bytes) -> None:
        arrived = time.perf_counter()
        ident = read_code(pcm)
        if ident is not None:
            seen.append((arrived, ident,
                         self.now() - self._burst_last > gap or self._cleared))
        original(self, pcm)

    caller_mod.Caller.on_media = on_media  # type: ignore[method-assign]


def sim_worker(job_path: str) -> int:
    """``--sim-worker JOB``: calls.py's simulator worker, with the code probe."""
    import uvloop

    job = json.loads(Path(job_path).read_text())
    seen: list[tuple[float, int, bool]] = []
    install_code_probe(seen)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        result = r.run(calls._worker_main(job))
    result["coded"] = seen
    result["clock_impl"] = time.get_clock_info("perf_counter").implementation
    Path(job["out"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- one run


def cloud_config(scenario: dict[str, Any], path: Path, port: int, api_port: int,
                 workdir: Path, *, max_calls: int, level: str) -> None:
    """The daemon's config: the scenario's cloud providers at the fakes, the Twilio carrier
    with its REST API at the simulator (``calls.Daemon`` calls this as ``write_config``)."""
    stt, llm, tts = scenario["providers"]
    urls, keys = scenario["urls"], scenario["keys"]
    base = f"http://127.0.0.1:{port}"
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": base,
                   "max_calls": max_calls, "drain_timeout": 1},
        "phone_number": calls.PHONE,
        "carrier": {"provider": "twilio", "account_sid": calls.ACCOUNT_SID,
                    "auth_token": calls.AUTH_TOKEN, "configure_number": False,
                    "api_base_url": f"http://127.0.0.1:{api_port}"},
        "agent": {"first_message": GREETING, "language": "en-US",
                  "system_prompt": "You are the receptionist of Example Company."},
        "stt": {"provider": stt, "api_key": keys["stt"], "base_url": urls["stt"]},
        "llm": {"provider": llm, "api_key": keys["llm"], "base_url": urls["llm"],
                "model": "gpt-4o-mini" if llm == "openai" else "claude-haiku-4-5"},
        "tts": {"provider": tts, "api_key": keys["tts"], "base_url": urls["tts"],
                **({"voice": "a0e99841-438c-4a64-b679-ae501e7d6091"} if tts == "cartesia"
                   else {}),
                **({"transport": scenario["transport"]} if tts in ("elevenlabs", "cartesia")
                   else {})},
        "vad": {"provider": scenario["vad"]},
        "store": {"url": f"sqlite:///{workdir}/{path.stem}.db"},
        "admin": {"token": ""},
        "logging": {"level": level, "format": "json"},
    }
    path.write_text(json.dumps(raw, indent=2))


def steps(pcm: list[Path], turns: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "listen"}]
    for i in range(turns):
        out += [{"kind": "say", "pcm": str(pcm[i % len(pcm)]), "text": calls.UTTERANCES[i % 2]},
                {"kind": "listen"}]
    return out + [{"kind": "wait", "seconds": 0.5}]


def pct(values: list[float], p: float) -> float | None:
    from patterd.simulate.results import percentile
    return percentile(values, p)


def run_once(name: str, n: int, index: int, args: argparse.Namespace, workdir: Path,
             pcm: list[Path], profile: Path | None = None) -> dict[str, Any]:
    """Fakes, daemon, ``n`` calls; returns the run's figures."""
    providers = SCENARIOS[name]
    tag = f"{name}-{n}-{index}"
    fjob = {"providers": providers, "urls": str(workdir / f"{tag}.urls.json"),
            "out": str(workdir / f"{tag}.fakes.json"), "tts_speed": args.tts_speed,
            "llm_event_delay": args.llm_event_delay, "tts_first_audio": args.tts_first_audio,
            "long_answer": args.long_answer}
    (workdir / f"{tag}.fakes.job").write_text(json.dumps(fjob))
    ferr = (workdir / f"{tag}.fakes.err").open("wb")
    fakes = subprocess.Popen([*taskset(args.load_cpu), sys.executable, str(Path(__file__)),
                              "--serve-fakes", str(workdir / f"{tag}.fakes.job")], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=ferr, preexec_fn=die_with_parent)
    daemon = calls.Daemon(workdir, tag, stub=False, cpu=args.daemon_cpu, level=args.log_level,
                          max_calls=max(1000, 2 * n))
    worker: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not Path(fjob["urls"]).exists():
            if fakes.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fakes did not start: "
                                   + (workdir / f"{tag}.fakes.err").read_text()[-2000:])
            time.sleep(0.05)
        time.sleep(0.05)
        info = json.loads(Path(fjob["urls"]).read_text())
        scenario = {"providers": providers, "vad": args.vad,
                    "transport": TRANSPORT.get(name, "http"), **info}
        original = calls.write_config
        calls.write_config = lambda *a, **k: cloud_config(scenario, *a, **k)  # type: ignore
        try:
            daemon.start()
        finally:
            calls.write_config = original  # type: ignore[assignment]
        time.sleep(args.settle)
        pids = calls.tree(daemon.pid)
        ramp = args.ramp if n > 1 else 0.0
        start_at = time.time() + args.worker_start
        job = {"config": str(daemon.config), "url": daemon.base, "calls": n,
               "stagger": ramp / n if n > 1 else 0.0, "offset": 0.0, "pid": daemon.pid,
               "steps": steps(pcm, args.turns), "start_at": start_at, "timeout": 120.0,
               "window": [start_at + ramp + 1.0, start_at + ramp + 6.0],
               "sim_gc_off": True, "clock_yield": True, "out": str(workdir / f"{tag}.sim.json")}
        (workdir / f"{tag}.sim.job").write_text(json.dumps(job))
        worker = subprocess.Popen([*taskset(args.load_cpu), sys.executable, str(Path(__file__)),
                                   "--sim-worker", str(workdir / f"{tag}.sim.job")], cwd=REPO,
                                  stdout=subprocess.DEVNULL,
                                  stderr=(workdir / f"{tag}.sim.err").open("wb"),
                                  preexec_fn=die_with_parent)
        wait = start_at - time.time()
        if wait > 0:
            time.sleep(wait)
        cpu0, busy0, t0 = calls.tree_cpu(pids), cpu_ticks(args.daemon_cpu), time.monotonic()
        spy = None
        if profile is not None:
            spy = calls.start_pyspy(daemon.pid, profile, args.profile_seconds,
                                    delay=ramp + 1.0, cpu=args.load_cpu)
        worker.wait(timeout=240 + ramp)
        wall = time.monotonic() - t0
        cpu1, busy1 = calls.tree_cpu(pids), cpu_ticks(args.daemon_cpu)
        if spy is not None:
            calls.finish_pyspy(spy)
        if worker.returncode != 0 or not Path(job["out"]).exists():
            raise RuntimeError(f"the simulator failed ({worker.returncode}): "
                               + (workdir / f"{tag}.sim.err").read_text()[-2000:])
        sim = json.loads(Path(job["out"]).read_text())
        daemon.stop()
        fakes.send_signal(signal.SIGTERM)
        fakes.wait(timeout=30)
        if not Path(fjob["out"]).exists():
            raise RuntimeError("the fakes wrote no records: "
                               + (workdir / f"{tag}.fakes.err").read_text()[-2000:])
        rec = json.loads(Path(fjob["out"]).read_text())
        run = summarize(name, n, index, sim, rec, info["clock"])
        run["daemon_cpu_s"] = round(cpu1 - cpu0, 3)
        run["wall_s"] = round(wall, 2)
        run["cpu_per_call_minute"] = (round(run["daemon_cpu_s"] / run["call_minutes"], 4)
                                      if run["call_minutes"] else None)
        run["others_cpu_pct"] = round(max(0.0, 100 * ((busy1[0] - busy0[0]) / calls.CLK_TCK
                                                      - (cpu1 - cpu0)) / wall
                                          + 100 * (busy1[1] - busy0[1]) / calls.CLK_TCK / wall),
                                      1)
        run["daemon_warnings"] = calls._distinct_warnings(daemon.warnings())
        return run
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        daemon.stop()
        if fakes.poll() is None:
            fakes.send_signal(signal.SIGTERM)
            try:
                fakes.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fakes.kill()
                fakes.wait()
        ferr.close()


def summarize(name: str, n: int, index: int, sim: dict[str, Any], rec: dict[str, Any],
              fakes_clock: str) -> dict[str, Any]:
    """Join the simulator's coded frames with the fakes' records: per-layer gateway shares."""
    ok = failed = 0
    turns: list[float] = []
    failures: dict[str, int] = {}
    minutes = 0.0
    answered = 0
    for c in sim["calls"]:
        said = [t for t in c["turns"] if t[0] == "speech"]
        why = ""
        if not c["ok"]:
            why = c["outcome"] + (f": {c['errors'][0]}" if c["errors"] else f": {c['detail']}")
        elif any(t[1] is None for t in said):
            why = "a turn got no reply"
        if why:
            failed += 1
            failures[why[:160]] = failures.get(why[:160], 0) + 1
        else:
            ok += 1
        turns += [t[1] for t in said if t[1] is not None]
        answered += sum(1 for t in said if t[1] is not None)
        minutes += c["duration"] / 60.0
    # token → the first coded TTS request of its reply, the LLM request, the STT final
    tts_by_token: dict[str, tuple[int, dict[str, Any]]] = {}
    for ident, r in sorted(rec["tts"].items(), key=lambda kv: kv[1]["synth_at"]):
        m = TOKEN.search(r["text"])
        if m and m.group(0) not in tts_by_token:
            tts_by_token[m.group(0)] = (int(ident), r)
    llm_by_token = {r["token"]: r for r in rec["llm"] if r["token"]}
    finals_by_session: dict[str, list[tuple[float, str]]] = {}
    session_of: dict[str, str] = {}
    for t, sid, text in rec["finals"]:
        finals_by_session.setdefault(sid, []).append((t, text))
        for m in TOKEN.finditer(text):
            session_of[m.group(0)] = sid
    arrivals: dict[int, tuple[float, bool]] = {}
    for t, ident, new in sim["coded"]:
        arrivals.setdefault(ident, (t, new))     # the first frame of that request
    shares: dict[str, list[float]] = {k: [] for k in LAYERS}
    parts: dict[str, list[float]] = {"stt_final→llm_request": [], "llm_first_byte→tts_synth": [],
                                     "tts_first_byte→frame": []}
    matched = not_first = missing = 0
    for token, (ident, t) in tts_by_token.items():
        got = arrivals.get(ident)
        llm = llm_by_token.get(token)
        if got is None or llm is None or t["first_byte_at"] is None:
            missing += 1
            continue
        arrived, new = got
        if not new:
            not_first += 1
            continue
        matched += 1
        shares["tts"].append(arrived - t["first_byte_at"])
        if llm["first_byte_at"] is not None:
            shares["llm"].append(arrived - llm["first_byte_at"])
            parts["llm_first_byte→tts_synth"].append(t["synth_at"] - llm["first_byte_at"])
        parts["tts_first_byte→frame"].append(arrived - t["first_byte_at"])
        sid = session_of.get(token)
        before = [ft for ft, _ in finals_by_session.get(sid or "", [])
                  if llm["received_at"] is not None and ft <= llm["received_at"]]
        if before:
            shares["stt"].append(arrived - max(before))
            parts["stt_final→llm_request"].append(llm["received_at"] - max(before))
    run: dict[str, Any] = {
        "scenario": name, "providers": "/".join(SCENARIOS[name]), "calls": n, "run": index,
        "ok": ok, "failed": failed, "failures": failures, "turns": len(turns),
        "replies_matched": matched, "replies_not_first_frame": not_first,
        "replies_unmatched": missing + max(0, answered - matched - not_first - missing),
        "turn_p50": pct(turns, 50), "turn_p95": pct(turns, 95), "turn_p99": pct(turns, 99),
        "call_minutes": round(minutes, 3),
        "sim_cpu_pct": round(100 * sim["cpu"] / sim["wall"], 1) if sim["wall"] else None,
        "sim_late_p99_ms": (round(1000 * sim["clock"]["end"]["p99"], 1)
                            if sim["clock"]["end"]["p99"] is not None else None),
        "clocks": [fakes_clock, sim.get("clock_impl")],
        "tts_requests": rec["tts_requests"],
    }
    for layer, vals in shares.items():
        run[f"{layer}_n"] = len(vals)
        for p in (50, 95, 99):
            run[f"{layer}_p{p}"] = pct(vals, p)
        run[f"{layer}_max"] = max(vals) if vals else None
    run["parts_p50"] = {k: pct(v, 50) for k, v in parts.items()}
    run["parts_p99"] = {k: pct(v, 99) for k, v in parts.items()}
    run["values"] = {k: [round(x, 5) for x in v] for k, v in shares.items()}
    return run


def level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of one scenario and N (ok/failed summed)."""
    def med(key: str) -> float | None:
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None
    out: dict[str, Any] = {"scenario": runs[0]["scenario"], "providers": runs[0]["providers"],
                           "calls": runs[0]["calls"], "runs": len(runs),
                           "ok": sum(r["ok"] for r in runs),
                           "failed": sum(r["failed"] for r in runs),
                           "replies_matched": sum(r["replies_matched"] for r in runs),
                           "replies_other": sum(r["replies_not_first_frame"]
                                                + r["replies_unmatched"] for r in runs)}
    for key in ("turn_p50", "turn_p95", "turn_p99", "cpu_per_call_minute", "sim_cpu_pct",
                "sim_late_p99_ms", "others_cpu_pct",
                *(f"{lay}_p{p}" for lay in LAYERS for p in (50, 95, 99))):
        out[key] = med(key)
    out["tts_p99_range"] = [min((r["tts_p99"] for r in runs if r["tts_p99"] is not None),
                                default=None),
                            max((r["tts_p99"] for r in runs if r["tts_p99"] is not None),
                                default=None)]
    out["parts_p50"] = {k: statistics.median([r["parts_p50"][k] for r in runs
                                              if r["parts_p50"][k] is not None] or [0.0])
                        for k in runs[0]["parts_p50"]}
    out["parts_p99"] = {k: statistics.median([r["parts_p99"][k] for r in runs
                                              if r["parts_p99"][k] is not None] or [0.0])
                        for k in runs[0]["parts_p99"]}
    return out


# --------------------------------------------------------------------------- report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f}"


def _pct(v: float | None, unit: str) -> str:
    return "-" if v is None else f"{v:.0f}{unit}"


def print_report(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(f"\npatterd cloud-provider latency: daemon on CPU {s['daemon_cpu']}, fakes + simulator "
          f"on CPU {s['load_cpu']}; VAD {s['vad']}; {s['turns']} caller turns per call; "
          f"clock {s['clock']['implementation']} (checked across processes)")
    print("gateway share = backend's first byte → first frame of that reply at the simulator "
          "(ms; p50/p95/p99, medians over runs); turn = caller's end of speech → first reply "
          "frame (ms)")
    head = (f"{'scenario':<14} {'stt/llm/tts':<26} {'N':>4} {'runs':>4} {'ok':>4} {'fail':>4} "
            f"{'STT final→frame':>21} {'LLM byte→frame':>21} {'TTS byte→frame':>21} "
            f"{'turn p50/p95/p99':>19} {'CPU s/call-min':>14} {'others':>6} {'sim late':>8}")
    print(head)
    print("-" * len(head))
    for lv in report["levels"]:
        cols = ["/".join(_ms(lv[f"{lay}_p{p}"]) for p in (50, 95, 99)) for lay in LAYERS]
        turn = "/".join(f"{1000 * lv[k]:.0f}" if lv[k] is not None else "-"
                        for k in ("turn_p50", "turn_p95", "turn_p99"))
        cpu = lv["cpu_per_call_minute"]
        print(f"{lv['scenario']:<14} {lv['providers']:<26} {lv['calls']:>4} {lv['runs']:>4} "
              f"{lv['ok']:>4} {lv['failed']:>4} {cols[0]:>21} {cols[1]:>21} {cols[2]:>21} "
              f"{turn:>19} {('-' if cpu is None else f'{cpu:.3f}'):>14} "
              f"{_pct(lv['others_cpu_pct'], '%'):>6} {_pct(lv['sim_late_p99_ms'], 'ms'):>8}")
    print("\nwhere the STT share goes (medians of per-run p50 / p99, ms):")
    for lv in report["levels"]:
        parts = ", ".join(f"{k} {_ms(lv['parts_p50'][k])} / {_ms(lv['parts_p99'][k])}"
                          for k in lv["parts_p50"])
        print(f"  {lv['scenario']:<14} N={lv['calls']:<4} {parts}; replies matched "
              f"{lv['replies_matched']}, other {lv['replies_other']}")
    for lv in report["levels"]:
        if lv["calls"] >= 100:
            p99 = max((lv[f"{lay}_p99"] or 0) for lay in ("llm", "tts"))
            print(f"floor (LLM/TTS share p99 ≤ {FLOOR_MS:.0f} ms at {lv['calls']} calls), "
                  f"{lv['scenario']}: {1000 * p99:.1f} ms — "
                  f"{'met' if 1000 * p99 <= FLOOR_MS else 'NOT met'}")
    for r in report["runs"]:
        if r["failures"]:
            print(f"  failures {r['scenario']} N={r['calls']} run {r['run']}: "
                  + "; ".join(f"{v} x {k}" for k, v in r["failures"].items()))
        if r["daemon_warnings"]:
            print(f"  daemon log {r['scenario']} N={r['calls']} run {r['run']}: "
                  + "; ".join(r["daemon_warnings"]))
    if report.get("profile"):
        calls.print_profile(report["profile"])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)} (all)")
    p.add_argument("--calls", default="1,100", help="numbers of concurrent calls (1,100)")
    p.add_argument("--runs", type=int, default=3, help="runs per N for 'main' (3)")
    p.add_argument("--runs-others", type=int, default=1, help="runs per N for the others (1)")
    p.add_argument("--quick", action="store_true", help="'main' only, 1 run per N")
    p.add_argument("--turns", type=int, default=3, help="caller sentences per call (3)")
    p.add_argument("--vad", default="silero", choices=("silero", "energy"),
                   help="the daemon's VAD (silero, the default of config/patter.yaml)")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which calls start (5)")
    p.add_argument("--tts-speed", type=float, default=0.0,
                   help="TTS fakes' pace: 0 = as fast as possible (default), 1 = real time")
    p.add_argument("--llm-event-delay", type=float, default=0.0,
                   help="seconds between the LLM fake's SSE events (0)")
    p.add_argument("--tts-first-audio", type=float, default=0.0,
                   help="the TTS fakes' time to first audio of each generation, s (0)")
    p.add_argument("--long-answer", action="store_true",
                   help="answers whose first sentence is ~90 characters long")
    p.add_argument("--daemon-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--worker-start", type=float, default=3.0)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="one more 'main' run at N calls with py-spy on the daemon")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--profile-dir", default=".")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--serve-fakes", metavar="JOB", help=argparse.SUPPRESS)
    p.add_argument("--sim-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.scenarios, args.runs = "main", 1
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios: {unknown}")
    args.calls = [int(x) for x in str(args.calls).split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fakes:
        return serve_fakes(args.serve_fakes)
    if args.sim_worker:
        return sim_worker(args.sim_worker)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.load_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="patterd-cloud-"))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    started = time.monotonic()
    report: dict[str, Any] = {"setup": {
        "daemon_cpu": args.daemon_cpu, "load_cpu": args.load_cpu, "vad": args.vad,
        "turns": args.turns, "ramp": args.ramp, "tts_speed": args.tts_speed,
        "llm_event_delay": args.llm_event_delay, "python": sys.version.split()[0],
        "cpus": os.cpu_count()}, "runs": [], "levels": []}
    try:
        self_test()
        report["setup"]["clock"] = check_clock()
        pcm = calls.synthesize_utterances(workdir)
        for name in args.scenarios:
            for n in args.calls:
                runs = []
                count = args.runs if name == "main" else args.runs_others
                for i in range(1, count + 1):
                    log(f"[{name}] {n} call(s), run {i}/{count} …")
                    run = run_once(name, n, i, args, workdir, pcm)
                    log(f"[{name}] ok {run['ok']}/{n}, TTS share p99 {_ms(run['tts_p99'])} ms, "
                        f"LLM {_ms(run['llm_p99'])} ms, STT {_ms(run['stt_p99'])} ms, turn p95 "
                        f"{_ms(run['turn_p95'])} ms, {run['cpu_per_call_minute']} CPU-s/call-min"
                        f", matched {run['replies_matched']}/{run['turns']}")
                    runs.append(run)
                report["runs"] += runs
                report["levels"].append(level(runs))
        if args.profile:
            out = Path(args.profile_dir).resolve() / "cloud-profile.txt"
            log(f"[main] profiling the daemon at {args.profile} calls …")
            run = run_once("main", args.profile, 0, args, workdir, pcm, profile=out)
            report["profile"] = calls.summarize_profile(out, args.top)
            if report["profile"] is not None:
                report["profile"]["run"] = {k: v for k, v in run.items() if k != "values"}
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["setup"]["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
