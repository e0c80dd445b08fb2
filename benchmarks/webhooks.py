#!/usr/bin/env python3
"""Benchmark: signed Twilio voice webhooks per second on one core, and the daemon's memory.

Starts the real daemon (``python -m patterd --config <temp yaml>``) pinned to one CPU with
``taskset``, waits for ``/readyz``, reads its RSS at idle, then drives ``POST
/webhooks/twilio/voice`` from a second process pinned to another CPU: ``wrk`` with a Lua
script cycling through a pool of pre-signed requests, each for a distinct CallSid (so the
daemon's call registry sees distinct calls), or, when ``wrk`` is not installed, a Python
aiohttp load generator doing the same. With ``--live-calls N`` each call is also ended by its
signed "completed" status callback N calls later. Several timed runs; prints median and
min/max webhooks/s, wrong answers (not 200/204), p50/p99 latency, RSS at idle and after load,
and the daemon's CPU time. Every answer is also checked against the daemon's own
``patterd_webhook_requests_total`` counters. With ``--profile`` a last run is sampled with
py-spy (or cProfile) and the hot spots are listed. See benchmarks/README.md.

    .venv/bin/python benchmarks/webhooks.py                      # 5 runs x 10 s, log level warning
    .venv/bin/python benchmarks/webhooks.py --log-level warning,info --profile
    .venv/bin/python benchmarks/webhooks.py --calls 45000 --live-calls 500
    .venv/bin/python benchmarks/webhooks.py --json > result.json

Not a test: it takes about a minute per log level and needs two CPUs for meaningful numbers.
It stops by itself and always cleans up the daemon it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
PATH = "/webhooks/twilio/voice"
STATUS_PATH = "/webhooks/twilio/status"
ACCOUNT_SID = "AC" + "b3" * 16
AUTH_TOKEN = "benchmark-auth-token-0123456789"
PHONE = "+15550001234"
FLOOR = 2000.0  # webhooks/s the daemon must sustain on one core
WARM_CALLS = 100  # calls the warm-up cycles through (so the timed runs get the new ones)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- requests


def twilio_signature(url: str, params: list[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by the sorted name+value pairs."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
                            ).decode()


def voice_params(n: int, run_tag: str) -> list[tuple[str, str]]:
    """The fields of an inbound-call webhook as Twilio sends them (about 1 KB)."""
    sid = "CA" + hashlib.md5(f"{run_tag}:{n}".encode()).hexdigest()
    caller = f"+1415{n % 10_000_000:07d}"
    token = base64.b64encode(hashlib.sha512(sid.encode()).digest() * 4).decode()
    return [
        ("AccountSid", ACCOUNT_SID), ("ApiVersion", "2010-04-01"), ("CallSid", sid),
        ("CallStatus", "ringing"), ("CallToken", token), ("Called", PHONE),
        ("CalledCity", ""), ("CalledCountry", "US"), ("CalledState", "CA"), ("CalledZip", ""),
        ("Caller", caller), ("CallerCity", "SAN FRANCISCO"), ("CallerCountry", "US"),
        ("CallerState", "CA"), ("CallerZip", "94105"), ("Direction", "inbound"),
        ("From", caller), ("FromCity", "SAN FRANCISCO"), ("FromCountry", "US"),
        ("FromState", "CA"), ("FromZip", "94105"), ("StirVerstat", "TN-Validation-Passed-A"),
        ("To", PHONE), ("ToCity", ""), ("ToCountry", "US"), ("ToState", "CA"), ("ToZip", ""),
    ]


def status_params(voice: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The final status callback of the call ``voice`` started."""
    keep = {"AccountSid", "ApiVersion", "CallSid", "Called", "Caller", "Direction", "From",
            "To"}
    return [*[(k, v) for k, v in voice if k in keep], ("CallStatus", "completed"),
            ("CallDuration", "42"), ("CallbackSource", "call-progress-events"),
            ("SequenceNumber", "3"), ("SipResponseCode", "200"),
            ("Timestamp", "Thu, 26 Nov 2026 10:00:42 +0000")]


@dataclass
class Pool:
    """Pre-signed requests, one per line of ``path``: ``path<TAB>signature<TAB>body``."""

    path: Path
    lines: int
    voice_before: list[int]  # voice_before[j]: voice webhooks among lines [0, j)

    def voice_in(self, start: int, count: int) -> int:
        """Voice webhooks among ``count`` requests from position ``start`` (cycling)."""
        def upto(pos: int) -> int:
            cycles, rest = divmod(pos, self.lines)
            return cycles * self.voice_before[-1] + self.voice_before[rest]
        return upto(start + count) - upto(start)

    def new_calls_in(self, start: int, count: int) -> int:
        """Voice webhooks for calls not seen before: those in the first pass."""
        end = min(start + count, self.lines)
        return max(0, self.voice_before[end] - self.voice_before[min(start, end)])


def write_pool(path: Path, public_url: str, calls: int, live: int) -> Pool:
    """``calls`` pre-signed voice webhooks, each for a new CallSid; with ``live`` > 0, each
    followed by the "completed" status callback of the call ``live`` calls earlier."""
    base = public_url.rstrip("/")
    tag = f"{os.getpid()}-{time.time_ns()}"
    voices: list[list[tuple[str, str]]] = []
    voice_before = [0]
    with path.open("w") as out:
        for n in range(calls):
            params = voice_params(n, tag)
            voices.append(params)
            sig = twilio_signature(base + PATH, params)
            if n == 0:  # once: the same signature as Twilio's own library
                with contextlib.suppress(ImportError):
                    from twilio.request_validator import RequestValidator
                    ref = RequestValidator(AUTH_TOKEN).compute_signature(base + PATH,
                                                                         dict(params))
                    assert ref == sig, "signature differs from twilio-python's"
            out.write(f"{PATH}\t{sig}\t{urlencode(params)}\n")
            voice_before.append(voice_before[-1] + 1)
            if live > 0 and n >= live:
                done = status_params(voices[n - live])
                out.write(f"{STATUS_PATH}\t{twilio_signature(base + STATUS_PATH, done)}\t"
                          f"{urlencode(done)}\n")
                voice_before.append(voice_before[-1])
    return Pool(path, len(voice_before) - 1, voice_before)


# --------------------------------------------------------------------------- the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """The daemon subprocess."""

    workdir: Path
    level: str
    cpu: int
    wrapper: list[str] = field(default_factory=list)   # e.g. python -m cProfile -o …
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.port = self.port or free_port()
        cfg = self.workdir / f"patterd-{self.level}.yaml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": self.base,
                       "max_calls": 1_000_000, "drain_timeout": 1},
            "phone_number": PHONE,
            "carrier": {"provider": "twilio", "account_sid": ACCOUNT_SID,
                        "auth_token": AUTH_TOKEN, "configure_number": False},
            "store": {"url": f"sqlite:///{self.workdir}/patterd-{self.level}.db"},
            "logging": {"level": self.level, "format": "json"},
        }, indent=2))
        self.log_path = self.workdir / f"patterd-{self.level}.log"
        python = self.wrapper or [sys.executable]
        cmd = [*taskset(self.cpu), *python, "-m", "patterd", "--config", str(cfg)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as logfile:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=logfile,
                                         env=env, start_new_session=True,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            with contextlib.suppress(OSError, urllib.error.URLError):
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
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) from /proc/<pid>/status."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def live_calls(self) -> int:
        status, text = http_get(self.base + "/readyz")
        return int(json.loads(text).get("calls", -1)) if status == 200 else -1

    def webhook_counts(self) -> Counter[tuple[str, str]]:
        """``patterd_webhook_requests_total`` by (endpoint, code)."""
        status, text = http_get(self.base + "/metrics")
        assert status == 200, status
        counts: Counter[tuple[str, str]] = Counter()
        for m in re.finditer(r'^patterd_webhook_requests_total\{([^}]*)\} ([0-9.e+]+)$', text,
                             re.MULTILINE):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[(labels.get("endpoint", "?"), labels.get("code", "?"))] += \
                int(float(m.group(2)))
        return counts


def die_with_parent() -> None:
    """In the child: SIGTERM it if this script dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, steal) clock ticks of one CPU so far, from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal
                return v[0] + v[1] + v[2] + v[5] + v[6], v[7]
    return 0, 0


def taskset(cpu: int | None) -> list[str]:
    if cpu is None or cpu < 0 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def check_one(daemon: Daemon, pool: Path) -> None:
    """One webhook by hand: 200 with <Connect><Stream> before measuring anything."""
    with pool.open() as f:
        _, sig, body = f.readline().rstrip("\n").split("\t")
    req = urllib.request.Request(daemon.base + PATH, data=body.encode(), method="POST",
                                 headers={"X-Twilio-Signature": sig,
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
        if resp.status != 200 or "<Connect><Stream" not in text:
            raise RuntimeError(f"a signed voice webhook got {resp.status}: {text[:300]}")


# --------------------------------------------------------------------------- load generators

WRK_LUA = r"""
-- pre-signed POSTs, one per line of the pool file: path<TAB>signature<TAB>body
local pool, n, i = {}, 0, 0
local threads = {}
bad = 0  -- a global, so that done() can read it through thread:get()

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local t1 = line:find("\t", 1, true)
    local t2 = line:find("\t", t1 + 1, true)
    n = n + 1
    pool[n] = wrk.format("POST", line:sub(1, t1 - 1), {
      ["X-Twilio-Signature"] = line:sub(t1 + 1, t2 - 1),
      ["Content-Type"] = "application/x-www-form-urlencoded"}, line:sub(t2 + 1))
  end
  -- continue where the previous run stopped (args[2]); threads start at different calls
  i = (tonumber(args[2] or "0") + tid * 7919) % n
end

function request()
  i = i % n + 1
  return pool[i]
end

function response(status, headers, body)
  -- voice webhooks answer 200 (TwiML), status callbacks 204
  if status ~= 200 and status ~= 204 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, t in ipairs(threads) do total_bad = total_bad + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_s": %.6f, "bad": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, total_bad, e.connect + e.read + e.write,
    e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


@dataclass
class Run:
    """One timed run."""

    n: int
    requests: int           # all webhooks answered
    voice: int              # of which voice webhooks (the others: status callbacks)
    seconds: float
    rps: float
    voice_rps: float
    bad: int                # answers other than 200 (voice) or 204 (status)
    socket_errors: int
    p50_ms: float | None
    p99_ms: float | None
    daemon_cpu_s: float
    daemon_cpu_pct: float
    cpu_ms_per_request: float | None
    metrics_bad: int        # the same, from the daemon's patterd_webhook_requests_total
    metrics_total: int
    new_calls: int          # requests for a CallSid the daemon had not seen yet
    live_calls: int         # the daemon's live calls after the run (/readyz)
    loadgen_cpu_pct: float | None = None
    other_cpu_pct: float | None = None   # the daemon's CPU busy with other processes
    steal_pct: float | None = None       # the daemon's CPU taken by the hypervisor


def run_wrk(url: str, pool: Path, lua: Path, duration: float, connections: int, cpu: int | None,
            offset: int) -> dict[str, Any]:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = [*taskset(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(lua), url, "--", str(pool), str(offset)]
    started = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    ended = os.times()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-800:]} {out.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    child = (ended.children_user + ended.children_system
             - started.children_user - started.children_system)
    result["loadgen_cpu_pct"] = 100 * child / result["duration_s"]
    return result


async def _python_load(url: str, pool_path: str, duration: float, connections: int,
                       offset: int) -> dict[str, Any]:
    import aiohttp

    parts = urllib.parse.urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"  # each pool line names its path
    pool = []
    for line in Path(pool_path).read_text().splitlines():
        path, sig, body = line.split("\t")
        pool.append((base + path, {"X-Twilio-Signature": sig,
                                   "Content-Type": "application/x-www-form-urlencoded"},
                     body.encode()))
    latencies: list[float] = []
    counts = {"bad": 0, "socket_errors": 0, "next": offset}
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                target, headers, body = pool[counts["next"] % len(pool)]
                counts["next"] += 1
                try:
                    async with http.post(target, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status not in (200, 204):
                            counts["bad"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    counts["socket_errors"] += 1
                    continue
                latencies.append(time.perf_counter() - now)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return 1e3 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] \
            if latencies else 0.0

    return {"requests": len(latencies), "duration_s": elapsed,
            "bad": counts["bad"], "socket_errors": counts["socket_errors"],
            "timeouts": 0, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": 1e3 * latencies[-1] if latencies else 0.0}


def loadgen_worker(args: argparse.Namespace) -> int:
    """``--loadgen-worker``: the Python load generator, run in its own pinned process."""
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    started = time.process_time()
    result = asyncio.run(_python_load(args.url, args.pool, args.duration, args.connections,
                                      args.offset))
    result["loadgen_cpu_pct"] = 100 * (time.process_time() - started) / result["duration_s"]
    print("PY_RESULT " + json.dumps(result), flush=True)
    return 0


def run_python(url: str, pool: Path, duration: float, connections: int, cpu: int | None,
               offset: int) -> dict[str, Any]:
    cmd = [*taskset(cpu), sys.executable, str(Path(__file__).resolve()), "--loadgen-worker",
           "--url", url, "--pool", str(pool), "--duration", str(duration),
           "--connections", str(connections), "--offset", str(offset)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PY_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"the Python load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(line.split(" ", 1)[1]))


# --------------------------------------------------------------------------- profiling


def summarize_collapsed(path: Path, top: int) -> dict[str, Any]:
    """Top functions by own and by total samples from py-spy's ``raw`` (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [_short(f) for f in frames]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    inner = [(f, n) for f, n in total.most_common() if not f.startswith(ENTRY_FRAMES)]
    return {"samples": samples,
            "own": [(f, n, 100 * n / max(samples, 1)) for f, n in own.most_common(top)],
            "total": [(f, n, 100 * n / max(samples, 1)) for f, n in inner[:top]]}


# Frames every sample of the event loop passes through: left out of the "total" table.
ENTRY_FRAMES = ("<module> (", "_run_code (", "_run_module_as_main (", "main (patterd/cli.py",
                "run_async (", "cmd_serve (", "Runner.run (", "run (asyncio/runners.py",
                "run_until_complete (", "run_forever (", "_run_once (", "_run (asyncio/events",
                "run (stdlib/asyncio/runners.py",
                "serve (patterd/", "Patter.serve (", "<built-in method builtins.exec>",
                "run_module (", "<method 'run_until_complete'")


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py)`` → ``func (pkg/mod.py)``."""
    m = re.match(r"^(.*) \((.*?)(:\d+)?\)$", frame)
    if not m:
        return frame
    func, path, line = m.groups()
    for marker in ("site-packages/", "/lib/python3.", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/python3."):
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{func} ({path}{line or ''})"


def profile_pyspy(daemon: Daemon, load: Any, seconds: float, out_dir: Path, top: int,
                  cpu: int | None) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    raw = out_dir / "webhooks-profile.txt"
    cmd = [*taskset(cpu), pyspy, "record", "--pid", str(daemon.pid), "--rate", "200",
           "--duration", str(int(seconds)), "--format", "raw", "--nonblocking",
           "--output", str(raw)]
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=die_with_parent)
    time.sleep(0.5)
    try:
        result = load(seconds)
    except BaseException:
        spy.kill()
        spy.wait()
        raise
    out, _ = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed: {out[-1000:]}")
    summary = summarize_collapsed(raw, top)
    summary.update(tool="py-spy", file=str(raw), rps=result["requests"] / result["duration_s"])
    return summary


def profile_cprofile(workdir: Path, level: str, cpu: int, port: int, load: Any,
                     seconds: float, out_dir: Path, top: int) -> dict[str, Any]:
    """Profile a fresh daemon (on the same port: the pool is signed for its URL) under
    cProfile, which writes its file when the daemon exits on SIGTERM."""
    import pstats

    prof = out_dir / "webhooks-profile.pstats"
    daemon = Daemon(workdir, level, cpu, port=port,
                    wrapper=[sys.executable, "-m", "cProfile", "-o", str(prof)])
    try:
        daemon.start()
        result = load(seconds, daemon)
    finally:
        daemon.stop()
    stats = pstats.Stats(str(prof))
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((_short(f"{func} ({file}:{line})"), tt, ct, nc))
    total = max(sum(r[1] for r in rows), 1e-9)
    own = sorted(rows, key=lambda r: -r[1])[:top]
    cum = sorted((r for r in rows if not r[0].startswith(ENTRY_FRAMES)),
                 key=lambda r: -r[2])[:top]
    return {"tool": "cProfile", "file": str(prof), "samples": None,
            "rps": result["requests"] / result["duration_s"],
            "own": [(f, round(tt, 3), 100 * tt / total) for f, tt, _, _ in own],
            "total": [(f, round(ct, 3), 100 * ct / total) for f, _, ct, _ in cum]}


# --------------------------------------------------------------------------- the benchmark


def bench_level(level: str, args: argparse.Namespace, workdir: Path, use_wrk: bool
                ) -> dict[str, Any]:
    daemon = Daemon(workdir, level, args.daemon_cpu)
    lua = workdir / "webhooks.lua"
    lua.write_text(WRK_LUA)
    try:
        log(f"[{level}] starting the daemon on CPU {args.daemon_cpu} …")
        daemon.start()
        pool = workdir / f"pool-{level}.txt"
        log(f"[{level}] pre-signing {args.calls} distinct calls …")
        book = write_pool(pool, daemon.base, args.calls, args.live_calls)
        warm_pool = workdir / f"warm-{level}.txt"  # the warm-up reuses a few calls only
        warm_lines = min(WARM_CALLS, args.calls, args.live_calls or args.calls)
        with pool.open() as src, warm_pool.open("w") as dst:
            for _ in range(warm_lines):
                dst.write(src.readline())
        time.sleep(args.settle)
        idle = daemon.memory_kib()
        check_one(daemon, pool)

        # Requests so far: each run goes on through the pool where the previous one stopped,
        # after the calls the warm-up used.
        sent = warm_lines

        def load(seconds: float, target: Daemon = daemon, warm: bool = False
                 ) -> dict[str, Any]:
            nonlocal sent
            url = target.base + PATH
            source, offset = (warm_pool, 0) if warm else (pool, sent % book.lines)
            if use_wrk:
                result = run_wrk(url, source, lua, seconds, args.connections, args.load_cpu,
                                 offset)
            else:
                result = run_python(url, source, seconds, args.connections, args.load_cpu,
                                    offset)
            if not warm:
                result["new_calls"] = book.new_calls_in(sent, int(result["requests"]))
                result["voice"] = book.voice_in(sent, int(result["requests"]))
                sent += int(result["requests"])
            return result

        if args.warmup > 0:
            log(f"[{level}] warm-up {args.warmup:g} s …")
            load(args.warmup, warm=True)
        runs: list[Run] = []
        for n in range(1, args.runs + 1):
            before_counts, before_cpu = daemon.webhook_counts(), daemon.cpu_seconds()
            busy0, steal0 = cpu_ticks(args.daemon_cpu)
            result = load(args.duration)
            cpu = daemon.cpu_seconds() - before_cpu
            busy1, steal1 = cpu_ticks(args.daemon_cpu)
            after_counts = daemon.webhook_counts()
            delta = after_counts - before_counts
            requests, seconds = int(result["requests"]), float(result["duration_s"])
            expected = {("voice", "200"), ("status", "204")}
            run = Run(
                n=n, requests=requests, voice=int(result["voice"]), seconds=round(seconds, 3),
                rps=round(requests / seconds, 1),
                voice_rps=round(int(result["voice"]) / seconds, 1), bad=int(result["bad"]),
                socket_errors=int(result["socket_errors"]) + int(result.get("timeouts", 0)),
                p50_ms=result.get("p50_ms"), p99_ms=result.get("p99_ms"),
                daemon_cpu_s=round(cpu, 2), daemon_cpu_pct=round(100 * cpu / seconds, 1),
                cpu_ms_per_request=round(1e3 * cpu / requests, 3) if requests else None,
                metrics_total=sum(delta.values()),
                metrics_bad=sum(v for k, v in delta.items() if k not in expected),
                new_calls=int(result["new_calls"]), live_calls=daemon.live_calls(),
                loadgen_cpu_pct=round(result.get("loadgen_cpu_pct") or 0, 1),
                other_cpu_pct=round(max(0.0, 100 * ((busy1 - busy0) / CLK_TCK - cpu)
                                        / seconds), 1),
                steal_pct=round(100 * (steal1 - steal0) / CLK_TCK / seconds, 1))
            runs.append(run)
            log(f"[{level}] run {n}/{args.runs}: {run.rps:,.0f} req/s, bad answers {run.bad}, "
                f"p99 {_fmt(run.p99_ms)} ms, daemon CPU {run.daemon_cpu_pct:.0f}%")
            time.sleep(args.pause)
        time.sleep(args.settle)
        after = daemon.memory_kib()
        profile = None
        if args.profile and level == args.levels[0]:
            log(f"[{level}] profiling a {args.profile_seconds:g} s run ({args.profiler}) …")
            out_dir = Path(args.profile_dir).resolve()
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                if args.profiler == "py-spy":
                    profile = profile_pyspy(daemon, load, args.profile_seconds, out_dir,
                                            args.top, args.load_cpu)
            except (FileNotFoundError, RuntimeError) as exc:
                log(f"[{level}] py-spy unavailable ({exc}); falling back to cProfile")
                args.profiler = "cprofile"
            if args.profiler == "cprofile":
                daemon.stop()
                profile = profile_cprofile(workdir, level, args.daemon_cpu, daemon.port, load,
                                           args.profile_seconds, out_dir, args.top)
        rps = [r.rps for r in runs]
        return {
            "log_level": level,
            "runs": [asdict(r) for r in runs],
            "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "voice_rps_median": statistics.median(r.voice_rps for r in runs),
            "bad_total": sum(r.bad for r in runs),
            "socket_errors_total": sum(r.socket_errors for r in runs),
            "metrics_bad_total": sum(r.metrics_bad for r in runs),
            # The daemon may also have answered the requests still in flight when the load
            # generator stopped counting: at most one per connection.
            "metrics_match": all(0 <= r.metrics_total - r.requests <= args.connections
                                 for r in runs),
            "p50_ms_median": _median([r.p50_ms for r in runs]),
            "p99_ms_median": _median([r.p99_ms for r in runs]),
            "rss_idle_kib": idle.get("VmRSS"), "rss_after_kib": after.get("VmRSS"),
            "rss_peak_kib": after.get("VmHWM"),
            "daemon_cpu_s_total": round(sum(r.daemon_cpu_s for r in runs), 2),
            "cpu_ms_per_request_median": _median([r.cpu_ms_per_request for r in runs]),
            "floor_rps": FLOOR, "meets_floor": statistics.median(rps) >= FLOOR,
            "profile": profile,
        }
    finally:
        daemon.stop()


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def print_report(report: dict[str, Any]) -> None:
    meta = report["setup"]
    mix = (f"each call ended by a signed 'completed' status callback {meta['live_calls']:,} "
           f"calls later (POST {STATUS_PATH})" if meta["live_calls"]
           else "calls never ended (no status callbacks)")
    print(f"\npatterd webhook benchmark: signed Twilio voice webhooks "
          f"(POST {PATH}, ~{meta['body_bytes']} B forms, {meta['calls']:,} distinct CallSids); "
          f"{mix}")
    print(f"daemon on CPU {meta['daemon_cpu']}, load generator ({meta['loadgen']}) on CPU "
          f"{meta['load_cpu']}, {meta['connections']} keep-alive connections, "
          f"{meta['runs']} x {meta['duration']:g} s per log level; {meta['python']}")
    for lv in report["levels"]:
        print(f"\nlogging.level = {lv['log_level']}")
        head = (f"{'run':>3}  {'requests':>9}  {'new calls':>9}  {'req/s':>8}  {'voice/s':>8}  "
                f"{'bad':>5}  "
                f"{'sock err':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'daemon CPU':>10}  "
                f"{'CPU ms/req':>10}  {'live calls':>10}  {'loadgen CPU':>11}  "
                f"{'others on CPU':>13}")
        print(head)
        print("-" * len(head))
        for r in lv["runs"]:
            print(f"{r['n']:>3}  {r['requests']:>9,}  {r['new_calls']:>9,}  {r['rps']:>8,.0f}  "
                  f"{r['voice_rps']:>8,.0f}  "
                  f"{r['bad']:>5}  {r['socket_errors']:>8}  {_fmt(r['p50_ms']):>7}  "
                  f"{_fmt(r['p99_ms']):>7}  {r['daemon_cpu_pct']:>9.0f}%  "
                  f"{_fmt(r['cpu_ms_per_request']):>10}  {r['live_calls']:>10,}  "
                  f"{r['loadgen_cpu_pct']:>10.0f}%  "
                  f"{r['other_cpu_pct'] + r['steal_pct']:>12.0f}%")
        verdict = "meets" if lv["meets_floor"] else "BELOW"
        print(f"webhooks/s: median {lv['rps_median']:,.0f} (min {lv['rps_min']:,.0f}, "
              f"max {lv['rps_max']:,.0f}; voice webhooks/s median "
              f"{lv['voice_rps_median']:,.0f}): {verdict} the {FLOOR:,.0f}/s floor")
        print(f"bad answers (not 200 for voice / 204 for status): {lv['bad_total']}; the "
              f"daemon's metrics count {lv['metrics_bad_total']} and match the load "
              f"generator's request counts: {'yes' if lv['metrics_match'] else 'NO'}; "
              f"socket errors: {lv['socket_errors_total']}")
        print(f"latency: p50 {_fmt(lv['p50_ms_median'])} ms, p99 {_fmt(lv['p99_ms_median'])} ms"
              f" (medians over runs)")
        print(f"RSS: idle {_mib(lv['rss_idle_kib'])}, after load {_mib(lv['rss_after_kib'])}, "
              f"peak {_mib(lv['rss_peak_kib'])}")
        print(f"daemon CPU: {lv['daemon_cpu_s_total']:.1f} s over the runs, "
              f"{_fmt(lv['cpu_ms_per_request_median'])} ms per webhook")
        busy = max(r["other_cpu_pct"] + r["steal_pct"] for r in lv["runs"])
        if busy >= 5:
            print(f"note: other processes (or the hypervisor) used up to {busy:.0f}% of the "
                  f"daemon's CPU during a run: figures are lower than on a quiet core")
        prof = lv.get("profile")
        if prof:
            unit = "samples" if prof["tool"] == "py-spy" else "s"
            print(f"\nprofile ({prof['tool']}, {prof['samples'] or ''} {unit if prof['samples'] else ''}"
                  f" at {prof['rps']:,.0f} req/s; {prof['file']})")
            print("  own time (the function itself):")
            for f, n, pct in prof["own"]:
                print(f"    {pct:5.1f}%  {f}")
            print("  total time (with callees):")
            for f, n, pct in prof["total"]:
                print(f"    {pct:5.1f}%  {f}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per log level (5)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections (64)")
    p.add_argument("--calls", type=int, default=10_000,
                   help="distinct pre-signed CallSids the load cycles through (10000)")
    p.add_argument("--live-calls", type=int, default=0, metavar="N",
                   help="end each call with a signed 'completed' status callback N calls "
                        "later, so about N calls are live (0: never end calls)")
    p.add_argument("--log-level", default="warning",
                   help="daemon logging.level, or several comma-separated (warning)")
    p.add_argument("--daemon-cpu", type=int, default=1, help="CPU the daemon is pinned to (1)")
    p.add_argument("--load-cpu", type=int, default=0, help="CPU the load runs on (0)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="wrk if installed (auto), or the Python aiohttp generator")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between runs (1)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="idle seconds before reading RSS (2)")
    p.add_argument("--profile", action="store_true",
                   help="after the runs, profile one more run of the first log level")
    p.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--profile-dir", default=".",
                   help="where the profile file is written (.)")
    p.add_argument("--top", type=int, default=15, help="hot spots listed (15)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--loadgen-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.levels = [lv.strip() for lv in args.log_level.split(",") if lv.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen_worker:
        return loadgen_worker(args)
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs: the daemon and the load generator share one")
    have_wrk = shutil.which("wrk") is not None
    if args.loadgen == "wrk" and not have_wrk:
        log("wrk is not installed (apt-get install -y wrk)")
        return 2
    use_wrk = have_wrk and args.loadgen != "python"
    if not use_wrk and args.loadgen == "auto":
        log("wrk is not installed (apt-get install -y wrk); using the Python aiohttp load "
            "generator, which may itself limit the rate it can offer")
    workdir = Path(tempfile.mkdtemp(prefix="patterd-bench-"))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background
    try:
        from environment import describe, format_environment
        environment = describe()
        log(format_environment(environment))
        body_bytes = len(urlencode(voice_params(0, "x")))
        report = {
            "environment": environment, "command": " ".join(sys.argv),
            "setup": {"duration": args.duration, "runs": args.runs,
                      "connections": args.connections, "calls": args.calls,
                      "live_calls": args.live_calls,
                      "daemon_cpu": args.daemon_cpu, "load_cpu": args.load_cpu,
                      "loadgen": "wrk" if use_wrk else "python-aiohttp",
                      "body_bytes": body_bytes,
                      "python": sys.version.split()[0], "cpus": os.cpu_count()},
            "levels": [bench_level(level, args, workdir, use_wrk) for level in args.levels],
        }
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    # Wrong answers, or counts the daemon disagrees with, make the measurement worthless.
    broken = any(lv["bad_total"] or not lv["metrics_match"] for lv in report["levels"])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
