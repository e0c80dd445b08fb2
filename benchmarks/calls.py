#!/usr/bin/env python3
"""Benchmark: live calls on one core — how many concurrent simulated calls the daemon carries
with every call succeeding and replies as fast as for a lone call, and what a call costs.

Two scenarios, each against a fresh daemon per run, pinned to one CPU with ``taskset``, and
the carrier simulator (:mod:`patterd.simulate`: signed webhooks, real-time Media Streams, the
carrier's REST API on 127.0.0.1) in one or more processes pinned to another CPU:

A. the gateway path: instant stub STT/TTS (``tests/support/stub_backends.py``), the rules LLM
   and the batched Silero VAD, served by this script (``--serve-stub CONFIG``) on uvloop.
   The number of concurrent calls N ramps up (1, 50, 100, 200, 300, …, 600) until a call
   fails or the p95 end-of-speech → first-reply-frame latency is more than 50 ms above the
   single-call figure (then the midpoint to the last passing N is tried). Per N: calls
   ok/failed, p50/p95/p99 latency, daemon CPU-seconds per call-minute, RSS per call (RSS with
   every call up minus idle, divided by N), the daemon's loop lag and GC pauses, outbound
   frame jitter and playout underruns, and the simulator's own CPU and clock lateness (it must
   keep up in real time for the figures to mean anything; its garbage collector is off during
   a run and its clock yields between late rounds, see ``install_clock_probe``).
B. the offline default backends of ``config/patter.yaml`` (pocketsphinx, espeak, rules,
   Silero), ``python -m patterd``: 20 concurrent calls, p95 latency under 1 s.

Each call: listen to the greeting, say "what are your opening hours" (stub STT: heard as
"opening hours"), listen to the reply, say "when are you open", listen, press 9 (goodbye and a
hang-up by the agent through the carrier's REST API).

    .venv/bin/python benchmarks/calls.py                  # A ramp x 3 runs, then B x 3 runs
    .venv/bin/python benchmarks/calls.py --quick          # 1 run each, N in 1,100,300
    .venv/bin/python benchmarks/calls.py --levels 1,300,500 --runs 5 --skip-b
    .venv/bin/python benchmarks/calls.py --profile 300    # + py-spy of the daemon at 300 calls
    .venv/bin/python benchmarks/calls.py --levels 100 --runs 3 --skip-b --otlp   # traced
    .venv/bin/python benchmarks/calls.py --json > calls.json

Not a test: it takes about 10–15 minutes by default and needs two CPUs. It stops by itself and
cleans up every process it started. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):   # patterd, tests.support, webhooks.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

from webhooks import (cpu_ticks, die_with_parent, free_port, http_get,  # noqa: E402
                      summarize_collapsed, taskset)

CLK_TCK = os.sysconf("SC_CLK_TCK")
LATENCY_SLACK = 0.050   # p95 may exceed the single-call p95 by this much
SIM_LATE_MS = 40.0      # the simulator ticking its calls later than this (p99): it lags
FLOOR_CALLS = 300       # calls one core must carry (A)
FLOOR_CPU = 0.2         # CPU-seconds per call-minute (A)
FLOOR_RSS_MIB = 1.0     # MiB per call (A)
B_CALLS = 20
B_P95 = 1.0             # seconds (B)
ACCOUNT_SID = "AC" + "5e" * 16
AUTH_TOKEN = "calls-benchmark-token-0123456789"
PHONE = "+15550001234"
STUB_HEARS = "opening hours"
UTTERANCES = ("what are your opening hours", "when are you open")
OTLP_ENDPOINT = ""      # set by --otlp: the local receiver the daemon exports spans to


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc figures


def proc_stat(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, parent pid) of one process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[1])


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the pocketsphinx decoder processes of scenario B)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st is not None:
                parents.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes (those still alive)."""
    return sum(st[0] for p in pids if (st := proc_stat(p)) is not None)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of one process, KiB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


# --------------------------------------------------------------------------- configs


def write_config(path: Path, port: int, api_port: int, workdir: Path, *, max_calls: int,
                 level: str) -> None:
    """config/patter.yaml (agent, rules, backends) on our ports, with placeholder Twilio
    credentials, a throw-away store and ``logging.level``."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "patter.yaml").read_text())
    base = f"http://127.0.0.1:{port}"
    raw["server"] = {"host": "127.0.0.1", "port": port, "public_url": base,
                     "max_calls": max_calls, "drain_timeout": 1,
                     "max_body_bytes": raw.get("server", {}).get("max_body_bytes", 65536)}
    raw["phone_number"] = PHONE
    raw["carrier"] = {"provider": "twilio", "account_sid": ACCOUNT_SID,
                      "auth_token": AUTH_TOKEN, "configure_number": False,
                      "api_base_url": f"http://127.0.0.1:{api_port}"}
    raw["store"] = {"url": f"sqlite:///{workdir}/{path.stem}.db"}
    raw["admin"] = {"token": ""}
    raw["logging"] = {"level": level, "format": "json"}
    if OTLP_ENDPOINT:       # --otlp: every call traced to the local receiver
        raw["telemetry"] = {"otlp_endpoint": OTLP_ENDPOINT}
    path.write_text(json.dumps(raw, indent=2))   # JSON is YAML


# --------------------------------------------------------------------------- the stub daemon


def serve_stub(config_path: str, stt_text: str, gc_freeze: bool = False) -> int:
    """``--serve-stub CONFIG``: the daemon with instant stub STT/TTS (and the config's rules
    LLM and VAD), on uvloop, until SIGTERM/SIGINT. ``gc_freeze``: an experiment, not what the
    daemon does: ``gc.freeze()`` once started, so full collections skip start-up objects."""
    from aiohttp import web

    from patterd.app import build_app
    from patterd.cli import run_async
    from patterd.config import load_config
    from patterd.ops.logging import configure_logging
    from patterd.patter import carrier_for
    from tests.support.stub_backends import stub_backends

    config = load_config(config_path)
    configure_logging(config.logging.level, config.logging.format)

    lag: list[float] = []   # how late a 20 ms timer fires: the event loop's lag

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.020)
            lag.append(time.perf_counter() - t - 0.020)

    gc_pauses: list[tuple[int, float]] = []   # (generation, seconds) of each collection
    gc_began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_began[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_began[0]))
    gc.callbacks.append(on_gc)

    async def lag_route(request: web.Request) -> web.Response:
        """``GET /_bench/lag``: the loop lag and the garbage collector's pauses since the last
        call (then forgets them)."""
        values = sorted(lag)
        pauses = list(gc_pauses)
        lag.clear()
        gc_pauses.clear()

        def pct(p: float) -> float | None:
            return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else None
        objects = len(gc.get_objects()) if request.query.get("objects") else None
        return web.json_response({
            "samples": len(values), "p50": pct(50), "p99": pct(99), "objects": objects,
            "max": values[-1] if values else None,
            "gc": {str(g): {"count": sum(1 for x, _ in pauses if x == g),
                            "total": sum(d for x, d in pauses if x == g),
                            "max": max((d for x, d in pauses if x == g), default=0.0)}
                   for g in (0, 1, 2)}})

    async def main() -> None:
        backends = stub_backends(config, stt_text=stt_text)
        app = build_app(config, carrier_for(config.carrier), backends=backends)
        app.router.add_get("/_bench/lag", lag_route)
        probe_task = asyncio.get_running_loop().create_task(probe())
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, config.server.host, config.server.port,
                          backlog=1024).start()
        if gc_freeze:
            gc.collect()
            gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            probe_task.cancel()
            await runner.cleanup()
            await backends.close()

    run_async(main())
    return 0


@dataclass
class Daemon:
    """A daemon subprocess pinned to one CPU: the stub launcher or ``python -m patterd``."""

    workdir: Path
    name: str
    stub: bool
    cpu: int
    level: str = "warning"
    max_calls: int = 10_000
    port: int = 0
    api_port: int = 0
    gc_freeze: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        self.port, self.api_port = free_port(), self.api_port or free_port()
        self.config = self.workdir / f"{self.name}.yaml"
        write_config(self.config, self.port, self.api_port, self.workdir,
                     max_calls=self.max_calls, level=self.level)
        if self.stub:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-stub",
                   str(self.config), "--stt-text", STUB_HEARS,
                   *(["--gc-freeze"] if self.gc_freeze else [])]
        else:
            cmd = [sys.executable, "-m", "patterd", "--config", str(self.config)]
        self.log_path = self.workdir / f"{self.name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as logfile:
            self.proc = subprocess.Popen([*taskset(self.cpu), *cmd], cwd=REPO, stdout=logfile,
                                         stderr=logfile, env=env, start_new_session=True,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            with contextlib.suppress(OSError, ValueError):
                if http_get(self.base + "/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the daemon did not become ready:\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: it and its workers
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def warnings(self) -> list[str]:
        """Log lines at warning or above (the daemon logs at warning: anything is news)."""
        with contextlib.suppress(OSError):
            return [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                    if ln.strip()]
        return []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def loop_lag(self, objects: bool = False) -> dict[str, Any]:
        """The stub daemon's event-loop lag since the last call (``/_bench/lag``), and with
        ``objects`` the number of objects its garbage collector tracks."""
        with contextlib.suppress(OSError, ValueError):
            status, text = http_get(self.base + "/_bench/lag" + ("?objects=1" if objects
                                                                 else ""))
            if status == 200:
                return dict(json.loads(text))
        return {}

    def live_calls(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            status, text = http_get(self.base + "/readyz")
            if status == 200:
                return int(json.loads(text).get("calls", -1))
        return -1


class Sampler(threading.Thread):
    """Samples the daemon's RSS and live calls while a run goes on."""

    def __init__(self, daemon: Daemon, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.d, self.period = daemon, period
        self.stop_event = threading.Event()
        self.peak_rss = 0           # KiB, the main process
        self.peak_live = 0
        self.rss_at_peak_live = 0   # the highest RSS seen while the most calls were live
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss = rss_kib(self.d.pid).get("VmRSS", 0)
            live = self.d.live_calls()
            self.samples.append((time.monotonic(), rss, live))
            self.peak_rss = max(self.peak_rss, rss)
            if live > self.peak_live:
                self.peak_live, self.rss_at_peak_live = live, rss
            elif live == self.peak_live:
                self.rss_at_peak_live = max(self.rss_at_peak_live, rss)
            self.stop_event.wait(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------- the simulator


def install_clock_probe(yield_when_late: bool = True) -> list[Any]:
    """Replace the simulator's shared 20 ms :class:`Clock` by one that records, per round,
    how late it woke up and how long ticking every call took. Returns the list of clocks.

    ``yield_when_late``: let the event loop run between two rounds when the clock is behind
    (the shipped clock does; False runs late rounds back to back, as it once did: while it
    catches up no frame from the daemon is read, so replies look late — the simulator's own
    doing)."""
    import patterd.simulate.runner as runner
    from patterd.simulate.clock import Clock

    clocks: list[Any] = []
    yield_late = yield_when_late

    class ProbedClock(Clock):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.late: list[float] = []      # wake-up time minus the round's deadline
            self.busy: list[float] = []      # time to tick every member
            self.members: list[int] = []
            self.at: list[float] = []        # wall-clock time of each round
            self.slips = 0
            clocks.append(self)

        yield_when_late = yield_late

        def round_done(self, late: float, busy: float, members: int) -> None:
            self.late.append(late)
            self.busy.append(busy)
            self.members.append(members)
            self.at.append(time.time())

        def slipped(self) -> None:
            self.slips += 1

    runner.Clock = ProbedClock  # type: ignore[misc]
    return clocks


async def _worker_main(job: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import replace

    from patterd.config import load_config
    from patterd.simulate import Dtmf, Say, Wait, WaitForAgent, simulate, twilio

    clocks = install_clock_probe(job.get("clock_yield", True))
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - began[0]))
    gc.callbacks.append(on_gc)
    prefix = job.get("sid_prefix", "")
    if prefix:  # the REST proxy routes the daemon's requests by this prefix of the CallSid
        twilio.TwilioCall.new_call_id = lambda self: (  # type: ignore[method-assign]
            "CA" + prefix + secrets.token_hex(16 - len(prefix) // 2))
    config = load_config(job["config"])
    if job.get("api_base_url"):
        config = replace(config, carrier=replace(config.carrier,
                                                 api_base_url=job["api_base_url"]))
    steps: list[Any] = []
    for s in job["steps"]:
        if s["kind"] == "listen":
            steps.append(WaitForAgent(timeout=s.get("timeout", 15.0)))
        elif s["kind"] == "say":
            steps.append(Say(Path(s["pcm"]).read_bytes(), s["text"]))
        elif s["kind"] == "dtmf":
            steps.append(Dtmf(s["digits"]))
        elif s["kind"] == "wait":
            steps.append(Wait(s["seconds"]))
    delay = job["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.sleep(job.get("offset", 0.0))
    if job.get("sim_gc_off"):
        # The simulator is the measuring instrument: a 60-70 ms collection of its own (seen
        # at 400 calls) would show up as daemon latency and as playout underruns. Its cycles
        # over one run are little memory; collected after the run.
        gc.collect()
        gc.disable()
        pauses.clear()
    wall0, cpu0 = time.monotonic(), time.process_time()
    report = await simulate(config, job["url"], steps, calls=job["calls"],
                            stagger=job["stagger"], pid=job.get("pid"),
                            timeout=job.get("timeout", 120.0), transcribe=False,
                            stream=io.StringIO())
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    gc.enable()
    late = [x for c in clocks for x in c.late]
    busy = [x for c in clocks for x in c.busy]
    end = [a + b for c in clocks for a, b in zip(c.late, c.busy)]
    w0, w1 = job["window"]   # the full-load window (wall clock), as the daemon's CPU
    steady = [a + b for c in clocks for a, b, t in zip(c.late, c.busy, c.at) if w0 <= t <= w1]
    calls = []
    for r in report.results:
        calls.append({
            "id": r.call_id, "ok": r.ok, "outcome": r.outcome, "detail": r.detail,
            "errors": r.errors[:3], "warnings": r.warnings[:3],
            "duration": r.duration, "started_at": r.started_at,
            "turns": [[t.kind, t.latency] for t in r.turns],
            "jitter": r.jitter,
            "underruns": r.frames.get("playout_underruns", 0),
            "clock_slips": r.frames.get("clock_slips", 0),
            "rx_media": r.frames.get("rx_media", 0), "tx_media": r.frames.get("tx_media", 0),
        })
    return {"calls": calls, "wall": wall, "cpu": cpu,
            "clock": {"rounds": len(late), "late": _pcts(late), "busy": _pcts(busy),
                      "end": _pcts(end), "steady": _pcts(steady),
                      "slips": sum(c.slips for c in clocks),
                      "gc2_count": sum(1 for g, _ in pauses if g == 2),
                      "gc_max": max((d for _, d in pauses), default=0.0),
                      "over_period": sum(1 for x in end if x > 0.020)}}


def sim_worker(job_path: str) -> int:
    """``--sim-worker JOB``: run one share of the calls, print the results as JSON."""
    import uvloop

    job = json.loads(Path(job_path).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        result = r.run(_worker_main(job))
    Path(job["out"]).write_text(json.dumps(result))
    return 0


def _pcts(values: list[float]) -> dict[str, float | None]:
    from patterd.simulate.results import percentile
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None}


class RestProxy(threading.Thread):
    """With several simulator processes, the daemon's REST requests (one carrier API URL) go
    to the process whose calls they name: the CallSid's first hex digits say which."""

    def __init__(self, port: int, targets: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.port, self.targets = port, targets
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        import aiohttp
        from aiohttp import web

        self.loop = asyncio.get_running_loop()
        self._halt = asyncio.Event()
        session = aiohttp.ClientSession()

        async def forward(request: web.Request) -> web.Response:
            sid = request.match_info.get("call", "")
            port = self.targets.get(sid[2:4]) or next(iter(self.targets.values()))
            body = await request.read()
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")}
            async with session.request(request.method,
                                       f"http://127.0.0.1:{port}{request.path_qs}",
                                       data=body, headers=headers) as resp:
                return web.Response(body=await resp.read(), status=resp.status,
                                    content_type=resp.content_type)

        app = web.Application()
        app.router.add_route("*", "/2010-04-01/Accounts/{sid}/Calls/{call}.json", forward)
        app.router.add_route("*", "/2010-04-01/Accounts/{sid}/Calls/{call}/{rest:.*}",
                             forward)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.ready.set()
        try:
            await self._halt.wait()
        finally:
            await runner.cleanup()
            await session.close()

    def stop(self) -> None:
        if self.loop is not None and self.is_alive():
            self.loop.call_soon_threadsafe(self._halt.set)
        self.join(timeout=5)


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    """One run of N concurrent calls against a fresh daemon."""

    scenario: str
    calls: int
    n: int
    ok: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    turns: int = 0
    unanswered: int = 0
    p50: float | None = None             # speech turns: end of speech → first reply frame, s
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    dtmf_p50: float | None = None        # key press → first reply frame, s
    dtmf_p95: float | None = None
    latencies: list[float] = field(default_factory=list)
    call_minutes: float = 0.0
    wall: float = 0.0
    daemon_cpu_s: float = 0.0
    cpu_per_call_minute: float | None = None
    daemon_cpu_pct_peak: float | None = None   # CPU use over the full-load window
    daemon_lag_p99_ms: float | None = None     # its event loop's lag then (stub daemon only)
    daemon_lag_max_ms: float | None = None
    daemon_gc: dict[str, Any] = field(default_factory=dict)  # its GC pauses then, by generation
    daemon_gc_objects: int | None = None   # objects its GC tracks, with every call up
    peak_live: int = 0
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    rss_per_call_kib: float | None = None
    jitter_ms: float | None = None       # median over calls of the RFC 3550 jitter
    interval_p95_ms: float | None = None  # p95 over calls of the p95 inter-arrival time
    interval_max_ms: float | None = None
    underruns: int = 0                   # the caller's playout buffer ran dry mid-reply
    sim_procs: int = 1
    sim_cpu_pct: float = 0.0             # the simulator's CPU / wall (all its processes)
    sim_late_p99_ms: float | None = None  # its clock: last call ticked, behind the deadline
    sim_late_max_ms: float | None = None
    sim_steady_late_p99_ms: float | None = None   # the same over the full-load window
    sim_gc_max_ms: float | None = None    # its longest garbage collection
    sim_rounds_over_period: float = 0.0   # share of rounds that took longer than 20 ms
    sim_slips: int = 0
    others_cpu_pct: float | None = None   # the daemon's core used by others or stolen
    load_others_pct: float | None = None  # the simulator's core used by others or stolen
    daemon_warnings: list[str] = field(default_factory=list)


def speech_steps(pcm_files: list[Path]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"kind": "listen"}]
    for path, text in zip(pcm_files, UTTERANCES):
        steps += [{"kind": "say", "pcm": str(path), "text": text}, {"kind": "listen"}]
    # the agent says goodbye and hangs up; the caller stays on the line meanwhile
    return steps + [{"kind": "dtmf", "digits": "9"}, {"kind": "listen"},
                    {"kind": "wait", "seconds": 5.0}]


def run_once(scenario: str, n: int, index: int, args: argparse.Namespace, workdir: Path,
             pcm_files: list[Path], profile: Path | None = None) -> Run:
    """Start a daemon, place ``n`` calls from ``args.sim_procs`` processes, measure, stop."""
    stub = scenario == "A"
    procs = max(1, min(args.sim_procs if n >= args.split_above else 1, n))
    name = f"{scenario}-{n}-{index}"
    daemon = Daemon(workdir, name, stub, args.daemon_cpu, level=args.log_level,
                    max_calls=max(1000, 2 * n), gc_freeze=args.gc_freeze)
    proxy: RestProxy | None = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        daemon.start()
        time.sleep(args.settle)
        pids = tree(daemon.pid)
        idle = rss_kib(daemon.pid).get("VmRSS", 0)
        ramp = (args.ramp if stub else args.ramp_b) if n > 1 else 0.0
        stagger = ramp / n if n > 1 else 0.0
        targets: dict[str, int] = {}
        jobs = []
        start_at = time.time() + args.worker_start
        for j in range(procs):
            share = n // procs + (1 if j < n % procs else 0)
            job: dict[str, Any] = {
                "config": str(daemon.config), "url": daemon.base, "calls": share,
                "stagger": stagger * procs, "offset": stagger * j, "pid": daemon.pid,
                "steps": speech_steps(pcm_files), "start_at": start_at, "timeout": 120.0,
                "window": [start_at + ramp + 1.0, start_at + ramp + 9.0],
                "sim_gc_off": not args.sim_gc, "clock_yield": not args.sim_clock_as_shipped,
                "out": str(workdir / f"{name}-w{j}.json")}
            if procs > 1:
                job["sid_prefix"] = f"{j:02x}"
                targets[job["sid_prefix"]] = port = free_port()
                job["api_base_url"] = f"http://127.0.0.1:{port}"
            path = workdir / f"{name}-w{j}.job.json"
            path.write_text(json.dumps(job))
            jobs.append(job)
            workers.append(subprocess.Popen(
                [*taskset(args.load_cpu), sys.executable, str(Path(__file__).resolve()),
                 "--sim-worker", str(path)], cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=(workdir / f"{name}-w{j}.err").open("wb"), preexec_fn=die_with_parent))
        if procs > 1:
            proxy = RestProxy(daemon.api_port, targets)
            proxy.start()
            proxy.ready.wait(10)
            if proxy.error is not None:
                raise RuntimeError(f"the REST proxy failed: {proxy.error}")
        sampler = Sampler(daemon)
        wait = start_at - time.time()
        if wait > 0:
            time.sleep(wait)
        cpu0, busy0 = tree_cpu(pids), cpu_ticks(args.daemon_cpu)
        load0 = cpu_ticks(args.load_cpu)
        t0 = time.monotonic()
        sampler.start()
        spy = None
        if profile is not None:
            spy = start_pyspy(daemon.pid, profile, args.profile_seconds,
                              delay=ramp + args.profile_delay, cpu=args.load_cpu)
        # the daemon's CPU over the full-load window: from the end of the ramp, for 8 s
        window: list[tuple[float, float]] = []

        lag: dict[str, Any] = {}

        def sample_window() -> None:
            time.sleep(ramp + 1.0)
            window.append((time.monotonic(), tree_cpu(pids)))
            if stub:
                daemon.loop_lag()   # forget the ramp
            time.sleep(8.0)
            window.append((time.monotonic(), tree_cpu(pids)))
            if stub:
                lag.update(daemon.loop_lag(objects=True))
        threading.Thread(target=sample_window, daemon=True).start()
        deadline = time.monotonic() + 180 + ramp
        for w in workers:
            w.wait(timeout=max(1.0, deadline - time.monotonic()))
        wall = time.monotonic() - t0
        cpu1, busy1 = tree_cpu(pids), cpu_ticks(args.daemon_cpu)
        load1 = cpu_ticks(args.load_cpu)
        sampler.stop()
        if spy is not None:
            finish_pyspy(spy)
        results = []
        for j, (w, job) in enumerate(zip(workers, jobs)):
            if w.returncode != 0 or not Path(job["out"]).exists():
                err = (workdir / f"{name}-w{j}.err").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"simulator process {j} failed ({w.returncode}): {err}")
            results.append(json.loads(Path(job["out"]).read_text()))
        run = summarize_run(scenario, n, index, results, procs)
        run.wall = round(wall, 2)
        run.daemon_cpu_s = round(cpu1 - cpu0, 2)
        run.cpu_per_call_minute = (round(run.daemon_cpu_s / run.call_minutes, 4)
                                   if run.call_minutes else None)
        if len(window) == 2:
            run.daemon_cpu_pct_peak = round(100 * (window[1][1] - window[0][1])
                                            / (window[1][0] - window[0][0]), 1)
        run.others_cpu_pct = round(max(0.0, 100 * ((busy1[0] - busy0[0]) / CLK_TCK
                                                    - (cpu1 - cpu0)) / wall
                                       + 100 * (busy1[1] - busy0[1]) / CLK_TCK / wall), 1)
        run.peak_live = sampler.peak_live
        if lag.get("p99") is not None:
            run.daemon_lag_p99_ms = round(1000 * lag["p99"], 1)
            run.daemon_lag_max_ms = round(1000 * lag["max"], 1)
            run.daemon_gc = lag.get("gc", {})
            run.daemon_gc_objects = lag.get("objects")
        run.rss_idle_kib = idle
        run.rss_peak_kib = sampler.rss_at_peak_live or sampler.peak_rss
        if n:
            run.rss_per_call_kib = round((run.rss_peak_kib - idle) / n, 1)
        run.sim_cpu_pct = round(100 * sum(r["cpu"] for r in results)
                                / max(r["wall"] for r in results), 1)
        sim_cpu = sum(r["cpu"] for r in results)
        run.load_others_pct = round(max(0.0, 100 * ((load1[0] - load0[0]) / CLK_TCK - sim_cpu)
                                        / wall + 100 * (load1[1] - load0[1]) / CLK_TCK / wall),
                                    1)
        daemon.stop()
        run.daemon_warnings = _distinct_warnings(daemon.warnings())
        return run
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        if proxy is not None:
            proxy.stop()
        daemon.stop()


def _distinct_warnings(lines: list[str], keep: int = 5) -> list[str]:
    seen: dict[str, int] = {}
    for ln in lines:
        try:
            event = json.loads(ln).get("event", ln)
        except ValueError:
            event = ln[:120]
        seen[str(event)] = seen.get(str(event), 0) + 1
    return [f"{k} x{v}" for k, v in list(seen.items())[:keep]]


def summarize_run(scenario: str, n: int, index: int, results: list[dict[str, Any]],
                  procs: int) -> Run:
    from patterd.simulate.results import HUNG_UP, percentile

    run = Run(scenario, n, index, sim_procs=procs)
    calls = [c for r in results for c in r["calls"]]
    speech, dtmf, jit, p95i, maxi = [], [], [], [], []
    minutes = 0.0
    for c in calls:
        why = ""
        if not c["ok"]:
            why = c["outcome"] + (f": {c['errors'][0]}" if c["errors"] else
                                  f": {c['detail']}" if c["detail"] else "")
        elif c["outcome"] != HUNG_UP:
            why = f"{c['outcome']} (expected the agent to hang up): {c['detail']}"
        turns = c["turns"]
        said = [t for t in turns if t[0] == "speech"]
        if not why and (len(said) < len(UTTERANCES) or any(t[1] is None for t in turns)):
            why = "a turn got no reply"
        if why:
            run.failures[why[:160]] = run.failures.get(why[:160], 0) + 1
        run.outcomes[c["outcome"]] = run.outcomes.get(c["outcome"], 0) + 1
        run.turns += len(turns)
        run.unanswered += sum(1 for t in turns if t[1] is None)
        speech += [t[1] for t in said if t[1] is not None]
        dtmf += [t[1] for t in turns if t[0] == "dtmf" and t[1] is not None]
        if c["jitter"]:
            jit.append(c["jitter"]["rfc3550"])
            p95i.append(c["jitter"]["p95_interval"])
            maxi.append(c["jitter"]["max_interval"])
        run.underruns += c["underruns"]
        run.sim_slips += c["clock_slips"]
        minutes += c["duration"] / 60.0
    run.failed = sum(run.failures.values())
    run.ok = len(calls) - run.failed
    run.latencies = [round(x, 4) for x in speech]
    run.p50, run.p95 = percentile(speech, 50), percentile(speech, 95)
    run.p99, run.max = percentile(speech, 99), (max(speech) if speech else None)
    run.dtmf_p50, run.dtmf_p95 = percentile(dtmf, 50), percentile(dtmf, 95)
    run.call_minutes = round(minutes, 3)
    run.jitter_ms = statistics.median(jit) if jit else None
    run.interval_p95_ms = percentile(p95i, 95)
    run.interval_max_ms = max(maxi) if maxi else None
    clocks = [r["clock"] for r in results]
    p99s = [c["end"]["p99"] for c in clocks if c["end"]["p99"] is not None]
    maxes = [c["end"]["max"] for c in clocks if c["end"]["max"] is not None]
    run.sim_late_p99_ms = 1000 * max(p99s) if p99s else None
    run.sim_late_max_ms = 1000 * max(maxes) if maxes else None
    steady = [c["steady"]["p99"] for c in clocks if c["steady"]["p99"] is not None]
    run.sim_steady_late_p99_ms = 1000 * max(steady) if steady else None
    run.sim_gc_max_ms = round(1000 * max(c.get("gc_max", 0.0) for c in clocks), 1)
    rounds = sum(c["rounds"] for c in clocks)
    run.sim_rounds_over_period = round(100 * sum(c["over_period"] for c in clocks)
                                       / max(rounds, 1), 2)
    return run


# --------------------------------------------------------------------------- profiling


def start_pyspy(pid: int, out: Path, seconds: float, delay: float, cpu: int
                ) -> subprocess.Popen[str]:
    """py-spy on the daemon from ``delay`` s on (the calls are all up), for ``seconds``."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    cmd = ["sh", "-c", f'sleep {delay:.1f} && exec "$@"', "py-spy", *taskset(cpu), pyspy,
           "record", "--pid", str(pid), "--rate", "100", "--duration", str(int(seconds)),
           "--format", "raw", "--nonblocking", "--threads", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=die_with_parent)


def finish_pyspy(spy: subprocess.Popen[str]) -> None:
    try:
        spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.communicate()


def summarize_profile(path: Path, top: int) -> dict[str, Any] | None:
    """Own/total time from py-spy's collapsed stacks, the event loop thread apart from the
    VAD worker thread (``--threads`` puts the thread name first)."""
    if not path.exists():
        return None
    text = path.read_text(errors="replace").splitlines()
    by_thread: dict[str, list[str]] = {}
    for line in text:   # "thread (TID): NAME;frame;frame… COUNT"
        head, _, rest = line.partition(";")
        if head.startswith("thread (") and rest:
            by_thread.setdefault(head.partition(": ")[2] or head, []).append(rest)
        else:
            by_thread.setdefault("?", []).append(line)
    out: dict[str, Any] = {"file": str(path), "threads": {}}
    total = 0
    for thread, lines in by_thread.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        summary = summarize_collapsed(tmp, top)
        tmp.unlink()
        total += summary["samples"]
        out["threads"][thread] = summary
    out["samples"] = total
    return out


# --------------------------------------------------------------------------- the benchmark


def synthesize_utterances(workdir: Path) -> list[Path]:
    """The caller's lines, spoken by espeak once (8 kHz s16le)."""
    from patterd.simulate import say

    async def make() -> list[Path]:
        paths = []
        for i, text in enumerate(UTTERANCES):
            step = await say(text)
            path = workdir / f"say{i}.pcm"
            path.write_bytes(step.pcm)
            paths.append(path)
        return paths
    return asyncio.run(make())


def level_summary(runs: list[Run], base_p95: float | None) -> dict[str, Any]:
    """Medians over the runs of one N, and the verdict."""
    def med(attr: str) -> float | None:
        vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else None
    p95 = med("p95")
    failed = sum(r.failed for r in runs)
    within = (p95 is not None and base_p95 is not None and p95 <= base_p95 + LATENCY_SLACK)
    keeps_up = all(r.sim_slips == 0 for r in runs)
    return {"calls": runs[0].calls, "runs": len(runs), "failed": failed,
            "ok": sum(r.ok for r in runs), "p50": med("p50"), "p95": p95, "p99": med("p99"),
            "p95_min": min((r.p95 for r in runs if r.p95 is not None), default=None),
            "p95_max": max((r.p95 for r in runs if r.p95 is not None), default=None),
            "dtmf_p95": med("dtmf_p95"),
            "cpu_per_call_minute": med("cpu_per_call_minute"),
            "daemon_cpu_pct_peak": med("daemon_cpu_pct_peak"),
            "daemon_lag_p99_ms": med("daemon_lag_p99_ms"),
            "rss_per_call_kib": med("rss_per_call_kib"), "rss_idle_kib": med("rss_idle_kib"),
            "rss_peak_kib": med("rss_peak_kib"), "peak_live": med("peak_live"),
            "jitter_ms": med("jitter_ms"), "interval_p95_ms": med("interval_p95_ms"),
            "interval_max_ms": max((r.interval_max_ms for r in runs
                                    if r.interval_max_ms is not None), default=None),
            "underruns": sum(r.underruns for r in runs),
            "sim_cpu_pct": med("sim_cpu_pct"), "sim_late_p99_ms": med("sim_late_p99_ms"),
            "sim_steady_late_p99_ms": med("sim_steady_late_p99_ms"),
            "sim_rounds_over_period": med("sim_rounds_over_period"),
            "others_cpu_pct": med("others_cpu_pct"), "load_others_pct": med("load_others_pct"),
            "sim_keeps_up": keeps_up, "meets": failed == 0 and within}


def bench_a(args: argparse.Namespace, workdir: Path, pcm: list[Path]) -> dict[str, Any]:
    levels: list[dict[str, Any]] = []
    all_runs: list[Run] = []
    base_p95: float | None = None
    todo = list(args.levels)
    refined = not args.refine
    while todo:
        n = todo.pop(0)
        runs = []
        for i in range(1, args.runs + 1):
            log(f"[A] {n} calls, run {i}/{args.runs} …")
            run = run_once("A", n, i, args, workdir, pcm)
            log(f"[A] {n} calls, run {i}: ok {run.ok}/{n}, p95 {_ms(run.p95)}, "
                f"CPU/call-min {_f(run.cpu_per_call_minute, 3)} s, RSS/call "
                f"{_f(run.rss_per_call_kib, 0)} KiB, simulator CPU {run.sim_cpu_pct:.0f}% "
                f"(clock p99 late {_f(run.sim_late_p99_ms, 1)} ms)"
                + (f"; failures: {run.failures}" if run.failures else ""))
            runs.append(run)
        all_runs += runs
        if base_p95 is None:
            # the single-call figure: p95 over every speech turn of all its runs
            from patterd.simulate.results import percentile
            base_p95 = percentile([x for r in runs for x in r.latencies], 95)
        summary = level_summary(runs, base_p95)
        levels.append(summary)
        if not summary["meets"] and n > 1:
            why = "failed calls" if summary["failed"] else "latency"
            below = [lv["calls"] for lv in levels if lv["meets"] and lv["calls"] < n]
            if not refined and below and n - max(below) >= 50:
                # one bisection step between the last passing level and this one
                refined = True
                todo = [int(round((max(below) + n) / 2 / 25) * 25)]
                log(f"[A] {n} calls: criterion broken ({why}); trying {todo[0]} calls")
                continue
            log(f"[A] {n} calls: criterion broken ({why}); stopping the ramp")
            break
    levels.sort(key=lambda lv: lv["calls"])
    passing = [lv["calls"] for lv in levels if lv["meets"]]
    best = max(passing) if passing else None
    profile = None
    if args.profile:
        n = args.profile
        log(f"[A] profiling the daemon with py-spy at {n} calls …")
        out = Path(args.profile_dir).resolve() / "calls-profile.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        run = run_once("A", n, 0, args, workdir, pcm, profile=out)
        profile = summarize_profile(out, args.top)
        if profile is not None:
            profile["run"] = asdict(run)
    return {"base_p95": base_p95, "levels": levels, "max_calls": best,
            "runs": [asdict(r) for r in all_runs], "profile": profile}


def bench_b(args: argparse.Namespace, workdir: Path, pcm: list[Path]) -> dict[str, Any]:
    runs = []
    for i in range(1, args.runs_b + 1):
        log(f"[B] {args.b_calls} calls (offline default backends), run {i}/{args.runs_b} …")
        run = run_once("B", args.b_calls, i, args, workdir, pcm)
        log(f"[B] run {i}: ok {run.ok}/{run.calls}, p95 {_ms(run.p95)}"
            + (f"; failures: {run.failures}" if run.failures else ""))
        runs.append(run)
    summary = level_summary(runs, None)
    summary["meets"] = summary["failed"] == 0 and summary["p95"] is not None \
        and summary["p95"] < B_P95
    return {"level": summary, "runs": [asdict(r) for r in runs]}


# --------------------------------------------------------------------------- report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f} ms"


def _f(v: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def print_report(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(f"\npatterd live-calls benchmark: daemon on CPU {s['daemon_cpu']}, simulator on CPU "
          f"{s['load_cpu']}; {s['runs']} run(s) per N, medians; {s['python']}")
    print("each call: greeting, 2 spoken questions (reply each), key 9 → goodbye + REST "
          "hang-up by the agent; latency = caller's end of speech → first agent audio frame "
          "received")
    a = report.get("a")
    head = (f"{'calls':>5}  {'ok':>5}  {'failed':>6}  {'p50':>6}  {'p95':>6}  {'p99':>6}  "
            f"{'p95 min–max':>11}  {'CPU s/call-min':>14}  {'daemon CPU':>10}  "
            f"{'loop lag p99':>12}  {'RSS/call':>9}  {'jitter':>7}  {'ival max':>8}  "
            f"{'underruns':>9}  {'sim CPU':>7}  {'sim late p99':>12}  {'others d/s':>10}  "
            f"verdict")

    def row(lv: dict[str, Any]) -> str:
        rng = (f"{1000 * lv['p95_min']:.0f}–{1000 * lv['p95_max']:.0f}"
               if lv["p95_min"] is not None else "-")
        others = f"{_f(lv['others_cpu_pct'], 0)}/{_f(lv['load_others_pct'], 0)}%"
        sim_late = lv["sim_steady_late_p99_ms"]
        verdict = "ok" if lv["meets"] else "FAILS"
        if sim_late is not None and sim_late > SIM_LATE_MS:
            verdict += " (sim late)"
        return (f"{lv['calls']:>5}  {lv['ok']:>5}  {lv['failed']:>6}  {_ms(lv['p50'])[:-3]:>6}"
                f"  {_ms(lv['p95'])[:-3]:>6}  {_ms(lv['p99'])[:-3]:>6}  {rng:>11}  "
                f"{_f(lv['cpu_per_call_minute'], 3):>14}  "
                f"{_f(lv['daemon_cpu_pct_peak'], 0, '%'):>10}  "
                f"{_f(lv['daemon_lag_p99_ms'], 1, ' ms'):>12}  "
                f"{_f(lv['rss_per_call_kib'], 0, ' KiB'):>9}  "
                f"{_f(lv['jitter_ms'], 1, ' ms'):>7}  "
                f"{_f(lv['interval_max_ms'], 0, ' ms'):>8}  {lv['underruns']:>9}  "
                f"{_f(lv['sim_cpu_pct'], 0, '%'):>7}  "
                f"{_f(sim_late, 1, ' ms'):>12}  {others:>10}  {verdict}")

    if a:
        print(f"\nA. gateway path: stub STT/TTS (instant), rules LLM, batched Silero VAD "
              f"(ok/failed: calls summed over runs; the rest: medians over runs)")
        print(head)
        print("-" * len(head))
        for lv in a["levels"]:
            print(row(lv))
        base = a["base_p95"]
        print(f"single-call p95: {_ms(base)}; criterion: no failed call and p95 ≤ "
              f"{_ms(base + LATENCY_SLACK) if base is not None else '-'}")
        best = a["max_calls"]
        lv = next((x for x in a["levels"] if x["calls"] == best), None)
        top = "" if best is None or best < max(x["calls"] for x in a["levels"]) else \
            " — the highest tested: add --levels to go further"
        print(f"most concurrent calls meeting it: {best if best is not None else 'none'}"
              f" (floor {FLOOR_CALLS}: {'met' if best and best >= FLOOR_CALLS else 'NOT met'})"
              + top)
        if lv:
            cpu, rss = lv["cpu_per_call_minute"], lv["rss_per_call_kib"]
            print(f"at {best} calls: {_f(cpu, 3)} CPU-s per call-minute (floor ≤ {FLOOR_CPU}: "
                  f"{'met' if cpu is not None and cpu <= FLOOR_CPU else 'NOT met'}), "
                  f"{_f(rss and rss / 1024, 3)} MiB RSS per call (floor ≤ {FLOOR_RSS_MIB}: "
                  f"{'met' if rss is not None and rss / 1024 <= FLOOR_RSS_MIB else 'NOT met'})")
        for r in a["runs"]:
            if r["failures"]:
                print(f"  failures at {r['calls']} calls, run {r['n']}: "
                      + "; ".join(f"{v} x {k}" for k, v in r["failures"].items()))
            if r["daemon_warnings"]:
                print(f"  daemon log at {r['calls']} calls, run {r['n']}: "
                      + "; ".join(r["daemon_warnings"]))
        if any(not x["sim_keeps_up"] for x in a["levels"]):
            print("  note: the simulator's clock slipped (over 1 s behind): it was overloaded")
        prof = a.get("profile")
        if prof:
            print_profile(prof)
    b = report.get("b")
    if b:
        lv = b["level"]
        print(f"\nB. offline default backends (pocketsphinx + espeak + rules + Silero), "
              f"{lv['calls']} concurrent calls, {lv['runs']} run(s)")
        print(head)
        print("-" * len(head))
        print(row(lv))
        print(f"p95 {_ms(lv['p95'])}: {'under' if lv['meets'] else 'NOT under'} "
              f"{B_P95:g} s with no failed call")
        for r in b["runs"]:
            if r["failures"]:
                print(f"  failures in run {r['n']}: "
                      + "; ".join(f"{v} x {k}" for k, v in r["failures"].items()))
    print("\ncolumns (latencies in ms): ok/failed = calls over all runs, the rest medians over "
          "runs; CPU s/call-min = the daemon's CPU over the run / minutes of call; daemon CPU "
          "= its use of its core over 8 s with every call up; loop lag = how late a 20 ms timer "
          "fires in the (stub) daemon then; RSS/call = (RSS with every call up − idle RSS) / "
          "calls; jitter = RFC 3550 jitter of the daemon's 40 ms frames as the simulator "
          "received them (median call); ival max = longest gap between two frames of a reply; "
          "underruns = times a caller's playout buffer ran dry inside a reply; sim CPU = the "
          "simulator's CPU / wall time; sim late = how far behind its 20 ms deadline the "
          "simulator ticked its last call (p99 over the full-load window: above "
          f"{SIM_LATE_MS:.0f} ms the simulator itself lags, and latency, jitter and underruns "
          "include its delay); others d/s = the daemon's / the simulator's core used by other "
          "processes or stolen by the hypervisor")


def print_profile(prof: dict[str, Any]) -> None:
    run = prof.get("run") or {}
    print(f"\nprofile (py-spy, {prof['samples']} samples, {run.get('calls')} calls, "
          f"daemon CPU {_f(run.get('daemon_cpu_pct_peak'), 0)}% at full load; {prof['file']})")
    for thread, summary in prof["threads"].items():
        print(f"  thread {thread}: {summary['samples']} samples; own time:")
        for f, _, pct in summary["own"]:
            print(f"    {pct:5.1f}%  {f}")
        print("  total time (with callees):")
        for f, _, pct in summary["total"][:10]:
            print(f"    {pct:5.1f}%  {f}")


# --------------------------------------------------------------------------- main


def start_otlp_sink(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    """``--otlp``: the receiver (benchmarks/otlp_sink.py) on the load CPU; the daemons'
    configs name it."""
    global OTLP_ENDPOINT
    port = free_port()
    proc = subprocess.Popen([*taskset(args.load_cpu), sys.executable,
                             str(REPO / "benchmarks" / "otlp_sink.py"), str(port)],
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if http_get(f"http://127.0.0.1:{port}/count")[0] == 200:
                OTLP_ENDPOINT = f"http://127.0.0.1:{port}"
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the OTLP receiver did not start")


def stop_otlp_sink(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    """What the receiver got, then stop it."""
    counts: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        status, body = http_get(f"http://127.0.0.1:{port}/count")
        counts = json.loads(body) if status == 200 else {}
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,50,100,200,300,400,500,600",
                   help="A: numbers of concurrent calls, ramped in order until the criterion "
                        "breaks (1,50,100,200,300,400,500,600); the first is the baseline")
    p.add_argument("--runs", type=int, default=3, help="A: runs per number of calls (3)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="A: do not try the midpoint between the last passing and the first "
                        "failing number of calls")
    p.add_argument("--runs-b", type=int, default=3, help="B: runs (3)")
    p.add_argument("--b-calls", type=int, default=B_CALLS, help=f"B: calls ({B_CALLS})")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="1 run per N, N in 1,100,300 (and B once): a few minutes")
    p.add_argument("--ramp", type=float, default=5.0,
                   help="A: seconds over which the calls start (5)")
    p.add_argument("--ramp-b", type=float, default=5.0,
                   help="B: seconds over which the calls start (5); 1 makes every caller "
                        "speak within the same second")
    p.add_argument("--sim-procs", type=int, default=1,
                   help="simulator processes (all on --load-cpu) sharing the calls (1)")
    p.add_argument("--sim-gc", action="store_true",
                   help="leave the simulator's garbage collector on during a run (by default "
                        "it is off: its pauses would count against the daemon)")
    p.add_argument("--sim-clock-as-shipped", action="store_true",
                   help="run the simulator's clock as shipped: late rounds back to back, "
                        "without reading the daemon's frames in between (by default the "
                        "benchmark's clock yields to the event loop between late rounds)")
    p.add_argument("--split-above", type=int, default=2,
                   help="use --sim-procs only from this many calls (2)")
    p.add_argument("--daemon-cpu", type=int, default=1, help="CPU the daemon is pinned to (1)")
    p.add_argument("--load-cpu", type=int, default=0, help="CPU the simulator runs on (0)")
    p.add_argument("--log-level", default="warning", help="daemon logging.level (warning)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="idle seconds after start-up before the idle RSS (1)")
    p.add_argument("--worker-start", type=float, default=3.0,
                   help="seconds the simulator processes get to start (3)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="A: one more run at N calls with py-spy on the daemon")
    p.add_argument("--profile-seconds", type=float, default=15.0)
    p.add_argument("--profile-delay", type=float, default=1.0,
                   help="seconds after the ramp before sampling (1)")
    p.add_argument("--profile-dir", default=".", help="where calls-profile.txt goes (.)")
    p.add_argument("--top", type=int, default=15, help="hot spots listed (15)")
    p.add_argument("--otlp", action="store_true",
                   help="trace every call (telemetry.otlp_endpoint) to a local OTLP/HTTP "
                        "receiver on the load CPU: the hot-path cost of tracing")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--serve-stub", metavar="CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--stt-text", default=STUB_HEARS, help=argparse.SUPPRESS)
    p.add_argument("--gc-freeze", action="store_true",
                   help="A, an experiment: the stub daemon calls gc.freeze() once started "
                        "(full garbage collections then skip its ~50,000 start-up objects)")
    p.add_argument("--sim-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if args.levels == p.get_default("levels"):
            args.levels = "1,100,300"
        args.runs = args.runs_b = 1
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_stub:
        return serve_stub(args.serve_stub, args.stt_text, args.gc_freeze)
    if args.sim_worker:
        return sim_worker(args.sim_worker)
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs: the daemon and the simulator share one")
    with contextlib.suppress(OSError):   # this script's own work goes with the load
        os.sched_setaffinity(0, {args.load_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="patterd-calls-"))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    report: dict[str, Any] = {"setup": {
        "daemon_cpu": args.daemon_cpu, "load_cpu": args.load_cpu, "runs": args.runs,
        "runs_b": args.runs_b, "levels": args.levels, "ramp": args.ramp,
        "ramp_b": args.ramp_b, "b_calls": args.b_calls,
        "sim_procs": args.sim_procs, "log_level": args.log_level,
        "gc_freeze": args.gc_freeze, "sim_gc": args.sim_gc,
        "sim_clock_as_shipped": args.sim_clock_as_shipped,
        "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "command": " ".join(sys.argv)}
    from environment import describe, format_environment
    report["environment"] = describe()
    log(format_environment(report["environment"]))
    started = time.monotonic()
    sink = start_otlp_sink(args) if args.otlp else None
    try:
        pcm = synthesize_utterances(workdir)
        if not args.skip_a:
            report["a"] = bench_a(args, workdir, pcm)
        if not args.skip_b:
            report["b"] = bench_b(args, workdir, pcm)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if sink is not None:
            report["setup"]["otlp"] = stop_otlp_sink(*sink)
    report["setup"]["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
