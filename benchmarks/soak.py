#!/usr/bin/env python3
"""Benchmark: churn soak — hundreds of concurrent simulated calls that start and end at every
instant, on both carriers, against real daemon processes with the offline default backends,
watching the daemon's resources for leaks and every caller for an answer.

One daemon per carrier (``python -m patterd --config …``, pinned with ``taskset -c 1``; this
script, the carriers and callers, on CPU 0): config/patter.yaml's agent, rules (plus a
multi-key ``*42`` rule), pocketsphinx STT, espeak TTS and the batched Silero VAD, so every
call goes through the real shared workers (``--stt deepgram``: the Deepgram backend against
the phrase-matching stand-in of :mod:`soak_stt` instead of pocketsphinx, for hundreds of
calls). New calls arrive as a Poisson process whose rate
holds ``--calls`` calls in flight (split between the carriers); each lasts a random
``--call-seconds`` (3–90 s) and ends as drawn in :mod:`soak_calls` — mid-phrase, mid-reply,
mid-keypad entry, during a transfer, around an AMD verdict (outbound), by the caller, by the
agent, by a socket reset without ``stop``.

Every ``--sample-every`` seconds: each daemon's RSS (and its decoder processes'), open fds and
threads (``/proc``), asyncio tasks and event-loop lag p99 (``/metrics``:
``patterd_asyncio_tasks``, ``patterd_event_loop_lag_seconds``), CPU and live calls. After the
load, the daemons must come back to their idle task and fd counts, and a sample of call records
(``GET /v1/calls/{id}``) must be ended and hold what the caller heard.

    .venv/bin/python benchmarks/soak.py                                  # 30 min, 100 calls
    .venv/bin/python benchmarks/soak.py --duration 300 --calls 100       # 5 min
    .venv/bin/python benchmarks/soak.py --duration 120 --calls 20 --carrier twilio --json
    .venv/bin/python benchmarks/soak.py --calls 200 --stt deepgram --no-pin --turn-cpu-share 0.15

Exit status: 0; 1 when a caller went unanswered, a call ended other than its ending expects, a
task or fd leaked, a record was wrong, or (runs of 10 minutes or more) RSS grew more than
``--max-rss-growth`` % over the last two thirds; 2 when the soak could not run.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import aiohttp  # noqa: E402

from soak_calls import (ENDINGS, PHRASES, Outcome, Voices, judge,  # noqa: E402
                        plan_inbound)
from soak_watch import Daemon, Sample, Watcher, core_ticks, rss_growth  # noqa: E402

ADMIN_TOKEN = "soak-admin-" + secrets.token_hex(8)
TWILIO_SID = "AC" + "50" * 16
TWILIO_TOKEN = "soak-twilio-token-0123456789abcdef"
TELNYX_KEY = "KEYsoak0123456789"
CONNECTION_ID = "2811212257810187875"
PHONE = "+15550001234"
VOICEMAIL = "Please call us back."
MULTI_KEY_RULE = {"phrases": ["account balance"], "dtmf": "*42",
                  "reply": "Your account is in good standing."}
LONG_RUN = 600.0          # RSS growth is judged on runs at least this long


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("aiohttp", "uvloop", "onnxruntime", "numpy", "pocketsphinx",
                "prometheus-client"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    return {"cpu_model": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions, "commit": commit,
            "command": shlex.join([sys.executable, *sys.argv])}


# --------------------------------------------------------------------------- configs


def soak_config(carrier: str, port: int, api_port: int, workdir: Path, public_key: str,
                level: str, stt_url: str = "", turn_cpu_share: float = 0.0) -> Path:
    """config/patter.yaml (agent, rules, offline backends) for one carrier on our ports;
    with ``stt_url``, Deepgram at that URL (the stand-in of :mod:`soak_stt`) for the STT."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "patter.yaml").read_text())
    base = f"http://127.0.0.1:{port}"
    raw["server"] = {"host": "127.0.0.1", "port": port, "public_url": base,
                     "max_calls": 100_000, "drain_timeout": 5,
                     "max_body_bytes": raw["server"].get("max_body_bytes", 65536)}
    raw["phone_number"] = PHONE
    raw["llm"]["rules"] = [*raw["llm"]["rules"], MULTI_KEY_RULE]
    if carrier == "twilio":
        raw["carrier"] = {"provider": "twilio", "account_sid": TWILIO_SID,
                          "auth_token": TWILIO_TOKEN, "configure_number": False,
                          "api_base_url": f"http://127.0.0.1:{api_port}"}
    else:
        raw["carrier"] = {"provider": "telnyx", "api_key": TELNYX_KEY,
                          "connection_id": CONNECTION_ID, "public_key": public_key,
                          "api_base_url": f"http://127.0.0.1:{api_port}/v2"}
    raw["store"] = {"url": f"sqlite:///{workdir}/{carrier}.db"}
    raw["admin"] = {"token": ADMIN_TOKEN}
    raw["logging"] = {"level": level, "format": "json"}
    if turn_cpu_share:
        raw.setdefault("vad", {})["turn_cpu_share"] = turn_cpu_share
    if stt_url:
        from soak_stt import API_KEY
        raw["stt"] = {"provider": "deepgram", "api_key": API_KEY, "base_url": stt_url}
    path = workdir / f"{carrier}.yaml"
    path.write_text(json.dumps(raw, indent=2))      # JSON is YAML
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- one carrier


@dataclass
class Carrier:
    """One carrier's daemon, simulator state and results."""

    name: str
    daemon: Daemon
    config: Any = None                    # patterd Config (the simulator reads it too)
    api: Any = None                       # the carrier's REST stand-in
    signer: Any = None                    # Telnyx webhook key
    watcher: Watcher | None = None
    target: int = 0
    live: int = 0
    started: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    mean_duration: float = 40.0
    baseline: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    exit_code: int | None = None
    outbound_seq: int = 0


class Soak:
    """The run: daemons, arrivals, sampling, settling, records, report."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.rng = random.Random(args.seed)
        names = ["twilio", "telnyx"] if args.carrier == "both" else [args.carrier]
        pin = None if args.no_pin or (os.cpu_count() or 1) < 2 else 1
        self.carriers = [Carrier(n, Daemon(n, workdir / f"{n}.yaml", 0, workdir / f"{n}.log",
                                           pin)) for n in names]
        per = max(1, args.calls // len(names))
        for i, c in enumerate(self.carriers):
            c.target = per + (1 if i < args.calls - per * len(names) else 0)
        self.voices: Voices | None = None
        self.session: aiohttp.ClientSession | None = None
        self.clock: Any = None
        self.load_started = 0.0
        self.load_ended = 0.0
        self.stt: Any = None                  # soak_stt.SoakDeepgram (--stt deepgram)

    # -- set-up ----------------------------------------------------------------------------
    def start_daemons(self, stt_url: str = "") -> None:
        from patterd.config import load_config
        from patterd.simulate import TelnyxSigner, make_api
        for c in self.carriers:
            port, api_port = free_port(), free_port()
            key = ""
            if c.name == "telnyx":
                c.signer = TelnyxSigner(secrets.token_bytes(32))
                key = c.signer.public_key_b64
            path = soak_config(c.name, port, api_port, self.workdir, key, self.args.log_level,
                               stt_url, self.args.turn_cpu_share)
            c.daemon.config_path, c.daemon.port = path, port
            c.config = load_config(path)
            c.api = make_api(c.config)
            c.api.call_price = "-0.0085"   # Twilio prices at once: no price fetch lingers
            c.daemon.start()
            log(f"  {shlex.join(c.daemon.command)} (pid {c.daemon.pid}), ready")

    async def make_voices(self) -> Voices:
        from patterd.simulate import DEFAULT_GREETING, say, synthesize
        phrases = {k: await say(text) for k, text in PHRASES.items()}
        agent = self.carriers[0].config.agent
        greeting = len(await synthesize(agent.first_message)) / 16000.0
        reply = len(await synthesize("We are open nine to five, Monday to Friday.")) / 16000.0
        return Voices(phrases, greeting, reply, await say(DEFAULT_GREETING))

    # -- one call --------------------------------------------------------------------------
    async def call(self, c: Carrier, ending: str, seconds: float) -> None:
        from patterd.simulate import Callee, Wait, simulate_call, simulate_outbound
        from patterd.simulate.results import ERROR, CallResult
        args = self.args
        assert self.voices is not None and self.session is not None
        c.live += 1
        c.started += 1
        began = time.monotonic()
        try:
            if ending == "amd":
                c.outbound_seq += 1
                to = f"+1555{2000000 + c.outbound_seq + (5000000 if c.name == 'telnyx' else 0)}"
                if self.rng.random() < 0.6:     # a person who hangs up around the verdict
                    delay = self.rng.uniform(0.8, 2.5)
                    callee = Callee("human", amd_delay=delay, steps=[
                        Wait(max(0.2, delay + self.rng.uniform(-0.7, 0.7)))])
                else:                           # a machine that stops recording mid-voicemail
                    callee = Callee("machine", greeting=self.voices.machine,
                                    max_message=self.rng.uniform(0.3, 5.0))
                result: CallResult = await simulate_outbound(
                    c.config, c.daemon.url, to, callee, admin_token=ADMIN_TOKEN,
                    machine_detection=True, voicemail_message=VOICEMAIL, signer=c.signer,
                    api=c.api, session=self.session, timeout=120.0, keep_audio=False)
            else:
                plan = plan_inbound(self.rng, self.voices, ending, seconds, args.pause)
                result = await simulate_call(c.config, c.daemon.url, plan.steps(),
                                             session=self.session, api=c.api, signer=c.signer,
                                             keep_audio=False, timeout=seconds + 90.0,
                                             clock=self.clock)
            out = judge(result, c.name, ending, seconds, self.args.answer_window)
        except Exception as exc:  # noqa: BLE001 - a soak bug is a failed call, reported
            out = Outcome(c.name, ending, "", seconds, ERROR, "", False, 0.0,
                          errors=[f"soak: {type(exc).__name__}: {exc}"])
        finally:
            c.live -= 1
        c.outcomes.append(out)
        c.mean_duration = 0.95 * c.mean_duration + 0.05 * (time.monotonic() - began)

    def spawn(self, c: Carrier, ending: str, seconds: float) -> None:
        task = asyncio.create_task(self.call(c, ending, seconds))
        c.tasks.add(task)
        task.add_done_callback(c.tasks.discard)

    async def arrivals(self, c: Carrier, load_end: float) -> None:
        """Poisson arrivals at the rate that holds ``c.target`` calls in flight (Little's
        law, with the mean call length seen so far; faster while below the target)."""
        lo, hi = self.args.call_seconds
        loop = asyncio.get_running_loop()
        endings, weights = list(ENDINGS), list(ENDINGS.values())
        c.mean_duration = (lo + hi) / 2
        while True:
            deficit = (c.target - c.live) / c.target
            rate = c.target / max(1.0, c.mean_duration) * min(4.0, max(0.25, 1 + 2 * deficit))
            gap = self.rng.expovariate(rate)
            if gap > 1.0:       # memoryless: wait a second, then draw again at the new rate
                await asyncio.sleep(1.0)
                if load_end - loop.time() < lo:
                    return
                continue
            await asyncio.sleep(gap)
            left = load_end - loop.time()
            if left < lo:
                return
            if c.live >= c.target * 1.25:
                continue
            ending = self.rng.choices(endings, weights)[0]
            self.spawn(c, ending, min(self.rng.uniform(lo, hi), left))

    # -- phases ----------------------------------------------------------------------------
    async def warm_up(self) -> None:
        """One call per carrier through every path, so lazily started workers (decoder, VAD
        batcher, HTTP client, store) count in the idle baseline."""
        from patterd.simulate import Dtmf, WaitForAgent, simulate_call
        assert self.voices is not None
        steps = [WaitForAgent(), self.voices.say["hours"], WaitForAgent(),
                 Dtmf("*42", gap=0.3), WaitForAgent()]
        results = await asyncio.gather(*(simulate_call(
            c.config, c.daemon.url, steps, session=self.session, api=c.api, signer=c.signer,
            keep_audio=False, timeout=60.0) for c in self.carriers))
        for c, r in zip(self.carriers, results):
            answered = sum(t.latency is not None for t in r.turns)
            log(f"  warm-up {c.name}: {r.outcome}, {answered}/{len(r.turns)} turns answered"
                + (f", errors {r.errors}" if r.errors else ""))
        for c in self.carriers:
            self.spawn(c, "amd", 5.0)
        await asyncio.gather(*(t for c in self.carriers for t in c.tasks))
        for c in self.carriers:
            c.outcomes.clear()
            c.started = 0

    async def idle_counts(self, c: Carrier, samples: int, every: float = 1.0) -> dict[str, Any]:
        """The lowest task/fd/thread counts and RSS over a few seconds of idle."""
        assert c.watcher is not None
        seen: list[Sample] = []
        for _ in range(samples):
            seen.append(await c.watcher.sample(-1.0, 0, keep=False))
            await asyncio.sleep(every)
        return {"tasks": min((s.tasks for s in seen if s.tasks is not None), default=None),
                "fds": min(s.fds for s in seen), "threads": min(s.threads for s in seen),
                "rss_mib": round(min(s.rss_kib for s in seen) / 1024, 1),
                "calls_active": seen[-1].calls_active}

    async def wait_idle(self, c: Carrier, timeout: float) -> float:
        """Seconds until the daemon reports no live call (or ``timeout``)."""
        assert c.watcher is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            m = await c.watcher.metrics()
            if m["calls_active"] == 0:
                return time.monotonic() - t0
            await asyncio.sleep(1.0)
        return timeout

    async def settle(self, c: Carrier) -> None:
        """After the load: back to the idle task and fd counts (within the tolerances)?"""
        assert c.watcher is not None
        args = self.args
        idle_after = await self.wait_idle(c, args.settle)
        base = c.baseline
        t0 = time.monotonic()
        best: dict[str, Any] = {}
        while True:
            now = await self.idle_counts(c, 3)
            for k in ("tasks", "fds", "threads"):
                if now[k] is not None and (best.get(k) is None or now[k] < best[k]):
                    best[k] = now[k]
            best["rss_mib"], best["calls_active"] = now["rss_mib"], now["calls_active"]
            ok = (best.get("tasks") is not None and base.get("tasks") is not None
                  and best["tasks"] <= base["tasks"] + args.task_tolerance
                  and best["fds"] <= base["fds"] + args.fd_tolerance)
            if ok or time.monotonic() - t0 > args.settle:
                break
        best["seconds_to_idle"] = round(idle_after, 1)
        best["seconds_to_baseline"] = round(time.monotonic() - t0, 1) if ok else None
        best["leaked_tasks"] = max(0, (best.get("tasks") or 0) - (base.get("tasks") or 0)
                                   - args.task_tolerance)
        best["leaked_fds"] = max(0, best["fds"] - base["fds"] - args.fd_tolerance)
        c.after = best

    async def check_records(self, c: Carrier) -> None:
        """A sample of call records: found, ended, and with an agent line in the transcript
        when the caller heard the agent for over ``HEARD`` seconds."""
        assert self.session is not None
        heard_min = 1.5
        pool = [o for o in c.outcomes if o.call_id and o.ending != "amd"]
        wanted = [o for o in pool if not o.ok] + self.rng.sample(
            [o for o in pool if o.ok], min(len([o for o in pool if o.ok]),
                                           self.args.check_records))
        problems: list[dict[str, Any]] = []
        for o in wanted:
            try:
                async with self.session.get(
                        f"{c.daemon.url}/v1/calls/{o.call_id}",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    status = resp.status
                    doc = await resp.json(content_type=None) if status == 200 else {}
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                status, doc = 0, {"error": str(exc)}
            why = ""
            if status != 200:
                why = f"GET /v1/calls/{{id}} answered {status}"
            elif not doc.get("ended_at"):
                why = f"still live in the record (status {doc.get('status')!r})"
            elif o.heard_agent >= heard_min and not any(
                    line.get("role") == "agent" for line in doc.get("transcript") or []):
                why = (f"the caller heard {o.heard_agent:.1f} s of the agent, the transcript "
                       "has no agent line")
            if why:
                problems.append({"call_id": o.call_id, "ending": o.ending, "why": why,
                                 "outcome": doc.get("outcome"),
                                 "transcript": (doc.get("transcript") or [])[-4:]})
        c.records = {"checked": len(wanted), "problems": problems}

    async def sample_loop(self, stop: asyncio.Event) -> None:
        every = self.args.sample_every
        loop = asyncio.get_running_loop()
        core = self.carriers[0].daemon.cpu
        ticks = core_ticks(core)
        while not stop.is_set():
            t = loop.time() - self.load_started
            now = core_ticks(core)
            busy = (now[0] - ticks[0]) / (now[1] - ticks[1]) if now[1] > ticks[1] else None
            ticks = now
            load = None
            with contextlib.suppress(OSError, ValueError, IndexError):
                load = float(Path("/proc/loadavg").read_text().split()[0])
            for c in self.carriers:
                assert c.watcher is not None
                s = await c.watcher.sample(t, c.live)
                s.core_busy, s.load_avg = busy, load
                lag = "—" if s.lag_p99 is None else f"{s.lag_p99 * 1000:.1f}"
                log(f"  {t:7.0f} s {c.name:<6} live {c.live:>4} (daemon {s.calls_active}) "
                    f"rss {s.rss_kib / 1024:6.1f} MiB fds {s.fds:>4} threads {s.threads:>3} "
                    f"tasks {s.tasks} lag p99 {lag} ms cpu {100 * s.cpu:3.0f} % "
                    f"started {c.started} done {len(c.outcomes)}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def run(self) -> dict[str, Any]:
        from patterd.simulate import Clock
        args = self.args
        env = environment()
        log(f"environment: {env['cpu_model']} x{env['cpus']}, Linux {env['kernel']}, "
            f"Python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in
                                                  env["versions"].items())
            + f", commit {env['commit']}")
        log(f"command: {env['command']}")
        stt_url = ""
        if args.stt == "deepgram":
            from soak_stt import SoakDeepgram
            self.stt = SoakDeepgram({})
            stt_url = await self.stt.start()
            log(f"STT: the Deepgram stand-in of benchmarks/soak_stt.py at {stt_url}")
        self.start_daemons(stt_url)
        loop = asyncio.get_running_loop()
        self.clock = Clock()
        self.voices = await self.make_voices()
        if self.stt is not None:
            from soak_stt import PhraseBook
            self.stt.book = PhraseBook(
                {say.text: say.pcm for say in [*self.voices.say.values(), self.voices.machine]})
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
            self.session = session
            for c in self.carriers:
                await c.api.start()
                c.watcher = Watcher(c.daemon, session)
            log("warm-up calls")
            await self.warm_up()
            for c in self.carriers:
                await self.wait_idle(c, 60.0)
                c.baseline = await self.idle_counts(c, 5)
                log(f"  idle {c.name}: {c.baseline}")
            log(f"load: {args.calls} calls in flight ({', '.join(f'{c.name} {c.target}' for c in self.carriers)}) "
                f"for {args.duration:g} s, calls of {args.call_seconds[0]:g}–"
                f"{args.call_seconds[1]:g} s")
            stop = asyncio.Event()
            self.load_started = loop.time()
            for c in self.carriers:
                await c.watcher.sample(0.0, 0)        # the lag histogram's starting point
            sampler = asyncio.create_task(self.sample_loop(stop))
            load_end = self.load_started + args.duration
            await asyncio.gather(*(self.arrivals(c, load_end) for c in self.carriers))
            log("no new calls; waiting for the calls in flight")
            while any(c.tasks for c in self.carriers):
                await asyncio.gather(*(t for c in self.carriers for t in list(c.tasks)))
            self.load_ended = loop.time()
            stop.set()
            await sampler
            for c in self.carriers:
                await c.watcher.sample(self.load_ended - self.load_started, 0)
            log("settling: back to the idle task and fd counts?")
            await asyncio.gather(*(self.settle(c) for c in self.carriers))
            log("checking call records")
            for c in self.carriers:
                await self.check_records(c)
            for c in self.carriers:
                await c.api.close()
        for c in self.carriers:
            c.exit_code = c.daemon.stop()
        if self.stt is not None:
            await self.stt.stop()
        return self.report(env)

    # -- the report ------------------------------------------------------------------------
    def report(self, env: dict[str, Any]) -> dict[str, Any]:
        from patterd.simulate import percentile
        args = self.args
        load_s = self.load_ended - self.load_started
        per: dict[str, Any] = {}
        reasons: list[str] = []
        for c in self.carriers:
            outs = c.outcomes
            failed = [o for o in outs if not o.ok]
            unanswered = [o for o in outs if o.unanswered]
            lat = [x for o in outs for x in o.latencies]
            by_ending: dict[str, dict[str, int]] = {}
            for o in outs:
                e = by_ending.setdefault(o.ending, {"calls": 0, "failed": 0})
                e["calls"] += 1
                e["failed"] += 0 if o.ok else 1
            samples = c.watcher.samples if c.watcher else []
            lags = [s.lag_p99 for s in samples if s.lag_p99 is not None]
            growth = rss_growth(samples, args.duration / 3, load_s)
            problems = c.daemon.log_problems()
            internal = samples[-1].internal if samples else {}
            per[c.name] = {
                "target": c.target, "started": c.started, "completed": len(outs) - len(failed),
                "failed": len(failed),
                "churn_per_min": round(60 * len(outs) / load_s, 1) if load_s else None,
                "turns_asked": sum(o.asked for o in outs),
                "turns_answered": sum(o.answered for o in outs),
                "turns_unanswered": sum(len(o.unanswered) for o in outs),
                "latency_s": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                              "p99": percentile(lat, 99), "max": max(lat) if lat else None},
                "by_ending": by_ending,
                "outcomes": _count(o.outcome for o in outs),
                "lag_p99_ms": {"median": _ms(percentile(lags, 50)), "max": _ms(max(lags))
                               if lags else None},
                "rss_growth_last_two_thirds": growth,
                "baseline": c.baseline, "after": c.after, "records": c.records,
                "internal_errors": internal, "daemon_log": problems,
                "daemon_exit": c.exit_code,
                "failures": [o.to_dict() for o in failed[:args.show_failures]],
                "unanswered": [o.to_dict() for o in unanswered
                               if o.ok][:args.show_failures],   # (failed ones: above)
                "samples": [s.to_dict() for s in samples],
                "calls": [[o.call_id, o.ending, round(o.planned, 1), o.outcome, o.ok,
                           round(o.duration, 1), o.asked, o.answered] for o in outs],
            }
            n = c.name
            if failed:
                reasons.append(f"{n}: {len(failed)} calls failed")
            if unanswered:
                reasons.append(f"{n}: {per[n]['turns_unanswered']} turns unanswered")
            if c.after.get("leaked_tasks"):
                reasons.append(f"{n}: {c.after['leaked_tasks']} asyncio tasks above the idle "
                               f"count (+{args.task_tolerance} allowed) after the load")
            if c.after.get("leaked_fds"):
                reasons.append(f"{n}: {c.after['leaked_fds']} fds above the idle count "
                               f"(+{args.fd_tolerance} allowed) after the load")
            if c.records.get("problems"):
                reasons.append(f"{n}: {len(c.records['problems'])} call records wrong")
            if c.exit_code not in (0, None):
                reasons.append(f"{n}: the daemon exited with {c.exit_code} on SIGTERM")
            g = growth.get("growth_pct")
            if args.duration >= LONG_RUN and g is not None and g > args.max_rss_growth:
                reasons.append(f"{n}: RSS grew {g} % over the last two thirds "
                               f"(> {args.max_rss_growth} %)")
            if not c.started:
                reasons.append(f"{n}: no call was started")
        return {"environment": env, "args": {k: v for k, v in vars(args).items()},
                "load_seconds": round(load_s, 1), "carriers": per, "ok": not reasons,
                "reasons": reasons}


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


# --------------------------------------------------------------------------- printing


def print_report(rep: dict[str, Any], out: Any = sys.stdout) -> None:
    env = rep["environment"]
    w = out.write
    w(f"environment: {env['cpu_model']} x{env['cpus']}, Linux {env['kernel']}, Python "
      f"{env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
      + f"; commit {env['commit']}\ncommand: {env['command']}\n")
    w(f"load: {rep['load_seconds']:g} s\n")
    for name, c in rep["carriers"].items():
        lat = c["latency_s"]
        w(f"\n== {name}: target {c['target']} calls in flight\n")
        w(f"calls: started {c['started']}, completed {c['completed']}, failed {c['failed']} "
          f"(churn {c['churn_per_min']} calls/min)\n")
        w(f"turns: asked {c['turns_asked']}, answered {c['turns_answered']}, unanswered "
          f"{c['turns_unanswered']}; reply latency p50 {_f(lat['p50'])} p95 {_f(lat['p95'])} "
          f"p99 {_f(lat['p99'])} max {_f(lat['max'])} s\n")
        w("endings: " + ", ".join(f"{k} {v['calls']}" + (f" ({v['failed']} failed)"
                                                          if v["failed"] else "")
                                  for k, v in sorted(c["by_ending"].items())) + "\n")
        w("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(c["outcomes"].items()))
          + "\n")
        w(f"{'t (s)':>7} {'live':>5} {'RSS MiB':>8} {'+dec.':>6} {'fds':>5} {'thr':>4} "
          f"{'tasks':>6} {'lag p99 ms':>10} {'cpu %':>6} {'core %':>6} {'load':>5}\n")
        samples = c["samples"]
        step = max(1, len(samples) // 15)
        for s in samples[::step] + ([samples[-1]] if samples and
                                    (len(samples) - 1) % step else []):
            lag = "—" if s["lag_p99"] is None else f"{s['lag_p99'] * 1000:.1f}"
            w(f"{s['t']:7.0f} {s['live_sim']:>5} {s['rss_kib'] / 1024:8.1f} "
              f"{s['children_rss_kib'] / 1024:6.1f} {s['fds']:>5} {s['threads']:>4} "
              f"{str(s['tasks']):>6} {lag:>10} {100 * s['cpu']:6.0f} "
              f"{_pct(s.get('core_busy')):>6} {_num(s.get('load_avg')):>5}\n")
        g = c["rss_growth_last_two_thirds"]
        w(f"RSS over the last two thirds: {g.get('first_mib')} → {g.get('last_mib')} MiB, "
          f"fitted growth {g.get('growth_pct')} % ({g.get('slope_kib_per_min')} KiB/min)\n")
        w(f"event-loop lag p99 per interval: median {c['lag_p99_ms']['median']} ms, "
          f"max {c['lag_p99_ms']['max']} ms\n")
        b, a = c["baseline"], c["after"]
        w(f"idle before → after: tasks {b.get('tasks')} → {a.get('tasks')}, fds "
          f"{b.get('fds')} → {a.get('fds')}, threads {b.get('threads')} → {a.get('threads')}, "
          f"RSS {b.get('rss_mib')} → {a.get('rss_mib')} MiB (no live call after "
          f"{a.get('seconds_to_idle')} s, baseline reached after "
          f"{a.get('seconds_to_baseline')} s)\n")
        r = c["records"]
        w(f"records: {r.get('checked')} checked, {len(r.get('problems', []))} wrong\n")
        for p in r.get("problems", [])[:10]:
            w(f"  record {p['call_id']} ({p['ending']}): {p['why']}\n")
        if c["internal_errors"]:
            w(f"patterd_internal_errors_total: {c['internal_errors']}\n")
        errs = c["daemon_log"]["errors"]
        if errs or c["daemon_log"]["tracebacks"]:
            w(f"daemon log: {c['daemon_log']['tracebacks']} tracebacks; error events: "
              + ", ".join(f"{k} x{v['count']}" for k, v in errs.items()) + "\n")
            endings = {row[0]: row[1] for row in c.get("calls", [])}
            for k, v in errs.items():
                cid = v["example"].get("call_id")
                which = f" (a call ending {endings[cid]})" if cid in endings else ""
                w(f"  first {k}{which}: {json.dumps(v['example'])[:600]}\n")
        for o in c["failures"] + c["unanswered"]:
            w(f"  {'FAILED' if not o['ok'] else 'UNANSWERED'} {o['call_id']} ending "
              f"{o['ending']} (planned {o['planned']} s): {o['outcome']} {o['detail']} "
              f"{o['errors']} {o['unanswered']}\n")
            for line in o["timeline"]:
                w(f"      {line}\n")
    w("\n" + ("OK" if rep["ok"] else "FAILED: " + "; ".join(rep["reasons"])) + "\n")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=1800.0,
                   help="seconds of load (new calls start until then; default 1800)")
    p.add_argument("--calls", type=int, default=100,
                   help="target calls in flight, split between the carriers (default 100)")
    p.add_argument("--carrier", choices=("twilio", "telnyx", "both"), default="both")
    p.add_argument("--stt", choices=("pocketsphinx", "deepgram"), default="pocketsphinx",
                   help="the daemons' STT: the offline default, or the Deepgram backend "
                        "against benchmarks/soak_stt.py's stand-in (hundreds of calls)")
    p.add_argument("--turn-cpu-share", type=float, default=0.0,
                   help="each daemon's vad.turn_cpu_share (default: the config's; two daemons "
                        "on one core each take that share of it)")
    p.add_argument("--call-seconds", default="3,90",
                   help="the range of a call's planned length, MIN,MAX (default 3,90)")
    p.add_argument("--pause", default="2,12",
                   help="a caller's silence before each of its turns, MIN,MAX seconds (2,12)")
    p.add_argument("--sample-every", type=float, default=10.0,
                   help="seconds between two resource samples (default 10)")
    p.add_argument("--answer-window", type=float, default=5.0,
                   help="a caller who stays this long after a turn expects an answer (5 s)")
    p.add_argument("--settle", type=float, default=90.0,
                   help="seconds the daemons get to return to their idle counts (90)")
    p.add_argument("--task-tolerance", type=int, default=2,
                   help="asyncio tasks above the idle count still accepted after the load")
    p.add_argument("--fd-tolerance", type=int, default=2,
                   help="open fds above the idle count still accepted after the load")
    p.add_argument("--max-rss-growth", type=float, default=5.0,
                   help="%% RSS growth allowed over the last two thirds (runs ≥ 10 min)")
    p.add_argument("--check-records", type=int, default=100,
                   help="call records checked per carrier, besides every failed call's")
    p.add_argument("--show-failures", type=int, default=20)
    p.add_argument("--log-level", default="warning", help="the daemons' logging.level")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    p.add_argument("--workdir", default="", help="keep configs, logs and stores here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    lo, hi = (float(x) for x in args.call_seconds.split(","))
    if not 0 < lo <= hi:
        p.error("--call-seconds: expected MIN,MAX with 0 < MIN <= MAX")
    args.call_seconds = (lo, hi)
    plo, phi = (float(x) for x in args.pause.split(","))
    if not 0 <= plo <= phi:
        p.error("--pause: expected MIN,MAX with 0 <= MIN <= MAX")
    args.pause = (plo, phi)
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    if args.calls < 1 or args.duration <= 0:
        p.error("--calls and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    if pin:       # the carriers and callers on CPU 0, the daemons on CPU 1
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {0})
    own = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="patterd-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, workdir)
    try:
        try:
            import uvloop
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            rep = runner.run(soak.run())
    except (RuntimeError, OSError) as exc:
        log(f"soak: cannot run: {exc}")
        return 2
    finally:
        for c in soak.carriers:
            c.daemon.stop()
    rep["workdir"] = str(workdir)
    if args.json:
        print(json.dumps(rep, indent=1, default=str))
    else:
        print_report(rep)
    if own and rep["ok"]:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    elif own:
        log(f"logs and stores kept in {workdir}")
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
