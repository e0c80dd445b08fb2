"""The churn soak's instruments: a daemon process per carrier, and its resources sampled over
time — RSS, open file descriptors and threads from ``/proc``; asyncio tasks, event-loop lag
and live calls from its ``/metrics`` — with the trends the soak judges."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAG = "patterd_event_loop_lag_seconds"


def die_with_parent() -> None:
    """In the child: SIGTERM it if the soak dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- /proc


def status_fields(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads of one process; {} when it is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    """Open file descriptors of one process (-1 when it cannot be read)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and its reaped children (0 when gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct and indirect child processes (the pocketsphinx decoders)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = (entry / "stat").read_text()
                ppid = int(text[text.rindex(")") + 2:].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(parents.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def core_ticks(cpu: int | None) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU (all CPUs for None) so far, from /proc/stat."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == name:
                ticks = [int(x) for x in parts[1:]]
                idle = ticks[3] + ticks[4]                  # idle + iowait
                return sum(ticks) - idle, sum(ticks)
    return 0, 0


# --------------------------------------------------------------------------- /metrics


def parse_metrics(text: str) -> dict[str, Any]:
    """The figures the soak reads: tasks, live calls, the lag histogram's cumulative buckets,
    internal errors by component and calls ended by outcome."""
    out: dict[str, Any] = {"tasks": None, "calls_active": None, "lag": {}, "internal": {},
                           "ended": {}}
    for fam in text_string_to_metric_families(text):
        if fam.name == "patterd_asyncio_tasks":
            out["tasks"] = int(fam.samples[0].value)
        elif fam.name == "patterd_calls_active":
            out["calls_active"] = int(fam.samples[0].value)
        elif fam.name == LAG:
            out["lag"] = {float(s.labels["le"]): s.value for s in fam.samples
                          if s.name.endswith("_bucket")}
        elif fam.name == "patterd_internal_errors":
            out["internal"] = {s.labels["component"]: s.value for s in fam.samples
                               if s.name.endswith("_total")}
        elif fam.name == "patterd_calls":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out["ended"][s.labels["outcome"]] = \
                        out["ended"].get(s.labels["outcome"], 0) + s.value
    return out


def histogram_quantile(q: float, before: dict[float, float],
                       after: dict[float, float]) -> float | None:
    """The ``q`` quantile of the observations between two scrapes of a histogram (linear
    within a bucket, as Prometheus' ``histogram_quantile``); None without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width
                                                        if width > 0 else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound


# --------------------------------------------------------------------------- the daemon


@dataclass
class Daemon:
    """``python -m patterd --config …`` for one carrier, pinned to ``cpu`` when possible."""

    carrier: str
    config_path: Path
    port: int
    log_path: Path
    cpu: int | None
    proc: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> None:
        """Start it and wait for ``/readyz`` 200."""
        import shutil
        import urllib.error
        import urllib.request
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None and \
            shutil.which("taskset") else []
        # SOAK_DAEMON_WRAPPER: a command to run the daemon under (a memory profiler, say
        # "heaptrack -o /tmp/daemon"): its figures then include the wrapper's own cost.
        wrapper = shlex.split(os.environ.get("SOAK_DAEMON_WRAPPER", ""))
        self.command = [*pin, *wrapper, sys.executable, "-m", "patterd", "--config",
                        str(self.config_path)]
        with self.log_path.open("ab") as logfile:
            self.proc = subprocess.Popen(self.command, cwd=REPO, stdout=logfile,
                                         stderr=logfile, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.carrier} daemon exited with "
                                   f"{self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"the {self.carrier} daemon did not become ready:\n"
                           + self.log_tail())

    def stop(self) -> int | None:
        """SIGTERM (its process group killed after 20 s); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_problems(self) -> dict[str, Any]:
        """Log lines at error level (by event, with a first example) and tracebacks."""
        events: dict[str, dict[str, Any]] = {}
        tracebacks = 0
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("Traceback"):
                    tracebacks += 1
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(doc, dict) or doc.get("level") not in ("error", "critical"):
                    continue
                name = str(doc.get("event"))
                entry = events.setdefault(name, {"count": 0, "example": doc})
                entry["count"] += 1
        return {"errors": events, "tracebacks": tracebacks}


@dataclass
class Sample:
    """One look at a daemon."""

    t: float                        # seconds since the load started (negative: before)
    rss_kib: int
    children_rss_kib: int
    fds: int
    threads: int
    tasks: int | None
    calls_active: int | None
    live_sim: int                   # calls the soak had in flight
    lag_p99: float | None           # seconds, since the previous sample
    lag_max_bucket: float | None    # the longest lag since the previous sample was ≤ this
    cpu: float                      # share of one core since the previous sample (tree)
    core_busy: float | None = None  # how busy the daemons' core was (every process on it)
    load_avg: float | None = None   # the machine's 1-minute load average
    internal: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


class Watcher:
    """Samples one daemon (call :meth:`sample` every N seconds)."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.d, self.session = daemon, session
        self.samples: list[Sample] = []
        self._lag: dict[float, float] = {}
        self._cpu: tuple[float, float] | None = None

    async def metrics(self) -> dict[str, Any]:
        try:
            async with self.session.get(self.d.url + "/metrics",
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return parse_metrics(await resp.text())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return {"tasks": None, "calls_active": None, "lag": {}, "internal": {},
                    "ended": {}}

    async def sample(self, t: float, live_sim: int, keep: bool = True) -> Sample:
        pid = self.d.pid
        kids = children(pid)
        st = status_fields(pid)
        m = await self.metrics()
        now = time.monotonic()
        cpu_total = cpu_seconds(pid) + sum(cpu_seconds(k) for k in kids)
        cpu = 0.0
        if self._cpu is not None and now > self._cpu[0]:
            cpu = (cpu_total - self._cpu[1]) / (now - self._cpu[0])
        self._cpu = (now, cpu_total)
        lag = m["lag"]
        p99 = histogram_quantile(0.99, self._lag, lag) if lag else None
        top = None
        if lag:
            inf = float("inf")
            total = lag.get(inf, 0.0) - self._lag.get(inf, 0.0)
            if total > 0:   # the smallest bound holding every new observation: max lag ≤ it
                top = next((b for b in sorted(lag)
                            if lag[b] - self._lag.get(b, 0.0) >= total), inf)
            self._lag = lag
        s = Sample(t, st.get("VmRSS", 0), sum(status_fields(k).get("VmRSS", 0) for k in kids),
                   open_fds(pid), st.get("Threads", 0), m["tasks"], m["calls_active"], live_sim,
                   p99, top, cpu, internal=dict(m["internal"]))
        if keep:
            self.samples.append(s)
        return s


def rss_growth(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """RSS growth over [start, end] (seconds of load): the least-squares line through the
    samples, its rise over the window as a share of its value at the start; and the plain
    first/last medians (of 3) for comparison."""
    pts = [(s.t, s.rss_kib) for s in samples if start <= s.t <= end and s.rss_kib > 0]
    if len(pts) < 3:
        return {"samples": len(pts), "growth_pct": None}
    n = len(pts)
    mx = sum(t for t, _ in pts) / n
    my = sum(v for _, v in pts) / n
    sxx = sum((t - mx) ** 2 for t, _ in pts)
    slope = sum((t - mx) * (v - my) for t, v in pts) / sxx if sxx else 0.0
    at_start = my + slope * (pts[0][0] - mx)
    rise = slope * (pts[-1][0] - pts[0][0])
    first = sorted(v for _, v in pts[:3])[1]
    last = sorted(v for _, v in pts[-3:])[1]
    return {"samples": n, "window_s": round(pts[-1][0] - pts[0][0], 1),
            "growth_pct": round(100 * rise / at_start, 2) if at_start > 0 else None,
            "slope_kib_per_min": round(slope * 60, 1),
            "first_mib": round(first / 1024, 1), "last_mib": round(last / 1024, 1)}
