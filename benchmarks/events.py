#!/usr/bin/env python3
"""Benchmark: live events with 200 calls — how many events per second ``GET /v1/events``
delivers, how late, and at what CPU cost to the daemon.

A daemon process (the real app: registry → call events → bus → SSE route, pinned to one CPU)
holds 200 live calls whose transcripts grow by a synthetic producer inside it (each line is a
record change, as a session's are); SSE readers in this process (on the other CPU) read the
stream over HTTP on 127.0.0.1 and time each line from its ``at`` to its arrival.

1. steady: 200 calls each saying a line every second (200 events/s), 5 readers, 20 s: the
   delivery latency (p50/p95/p99) and the daemon's CPU;
2. flat out: the producer publishes as fast as the loop lets it (in rounds of one line per
   call), 10 s, with 1 and then 10 readers: events delivered per second per reader.

    .venv/bin/python benchmarks/events.py [--calls 200] [--json]

Not a test: about a minute. It stops by itself and ends the process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from webhooks import die_with_parent, free_port, taskset  # noqa: E402

TOKEN = "events-benchmark-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the daemon side

def serve(port: int, calls: int) -> int:
    """``--serve PORT``: the app with ``calls`` live calls and a producer driven over HTTP."""
    from aiohttp import web

    from patterd.app import build_app
    from patterd.cli import run_async
    from patterd.gateway import GATEWAY
    from patterd.patter import carrier_for
    from tests.conftest import config, twilio_raw
    from tests.support.stub_backends import stub_backends

    cfg = config(twilio_raw(admin={"token": TOKEN}, server={"public_url": "http://127.0.0.1",
                                                           "port": port}))

    async def main() -> None:
        app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
        gw = app[GATEWAY]
        records: list[Any] = []

        def say_round() -> None:
            for rec in records:
                rec.transcript.append({"role": "caller" if len(rec.transcript) % 2 else "agent",
                                       "text": "when are you open", "at": time.time()})
                gw.registry.touch(rec)

        async def produce(request: web.Request) -> web.Response:
            rate = float(request.query.get("per_call", "0"))     # lines per call per second
            seconds = float(request.query.get("seconds", "5"))
            start = time.monotonic()
            first = gw.bus.published
            if rate > 0:
                step = 1.0 / (rate * len(records))             # one record at a time, evenly
                n = 0
                while time.monotonic() - start < seconds:
                    rec = records[n % len(records)]
                    rec.transcript.append({"role": "caller", "text": "when are you open",
                                           "at": time.time()})
                    gw.registry.touch(rec)
                    n += 1
                    delay = start + n * step - time.monotonic()
                    await asyncio.sleep(max(0.0, delay))
            else:
                while time.monotonic() - start < seconds:
                    say_round()
                    await asyncio.sleep(0)
            for rec in records:            # keep memory flat between scenarios
                rec.transcript.clear()
                seen = gw.events._live.get(rec.call_id)
                if seen is not None:
                    seen.lines, seen.shown = 0, []
            return web.json_response({"published": gw.bus.published - first,
                                      "seconds": time.monotonic() - start})

        app.router.add_get("/_bench/produce", produce)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        records.extend(gw.registry.ensure(f"CA{i:032x}", "twilio", direction="inbound",
                                          from_number="+15557654321", to_number="+15550001234")
                       for i in range(calls))
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    run_async(main())
    return 0


# --------------------------------------------------------------------------- the readers

class Reader:
    """One SSE reader: counts events and times lines from their ``at``."""

    def __init__(self) -> None:
        self.events = 0
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def run(self, session: Any, base: str) -> None:
        async with session.get(f"{base}/v1/events", headers=AUTH,
                               timeout=None) as resp:
            self.ready.set()
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *blocks, buffer = buffer.split(b"\n\n")
                now = time.time()
                for block in blocks:
                    if not block.startswith(b"id:"):
                        continue          # a comment
                    self.events += 1
                    data = block[block.index(b"data: ") + 6:]
                    at = json.loads(data).get("at")
                    if isinstance(at, float):
                        self.lags.append(now - at)


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def scenario(base: str, pid: int, readers: int, per_call: float, seconds: float
                   ) -> dict[str, Any]:
    import aiohttp
    async with aiohttp.ClientSession() as session:
        crowd = [Reader() for _ in range(readers)]
        for r in crowd:
            r.task = asyncio.ensure_future(r.run(session, base))
        await asyncio.wait_for(asyncio.gather(*(r.ready.wait() for r in crowd)), 10)
        await asyncio.sleep(0.3)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        async with session.get(f"{base}/_bench/produce",
                               params={"per_call": str(per_call), "seconds": str(seconds)},
                               timeout=aiohttp.ClientTimeout(total=seconds + 60)) as resp:
            produced = await resp.json()
        # let the readers drain what is in flight
        for _ in range(100):
            if all(r.events >= produced["published"] for r in crowd):
                break
            await asyncio.sleep(0.05)
        wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        for r in crowd:
            assert r.task is not None
            r.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await r.task
    lags = [x for r in crowd for x in r.lags]
    delivered = [r.events for r in crowd]
    return {"readers": readers, "per_call_per_s": per_call or "max",
            "published": produced["published"],
            "published_per_s": round(produced["published"] / produced["seconds"]),
            "delivered_per_reader_per_s": round(statistics.mean(delivered) / wall),
            "delivered_total_per_s": round(sum(delivered) / wall),
            "lost": produced["published"] * readers - sum(delivered),
            "lag_ms": {k: (round(v * 1000, 1) if v is not None else None)
                       for k, v in (("p50", pct(lags, 50)), ("p95", pct(lags, 95)),
                                    ("p99", pct(lags, 99)))},
            "daemon_cpu_pct": round(100 * cpu / wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--daemon-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args.serve, args.calls)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.load_cpu})
    port = free_port()
    proc = subprocess.Popen([*taskset(args.daemon_cpu), sys.executable, __file__, "--serve",
                             str(port), "--calls", str(args.calls)], cwd=REPO,
                            preexec_fn=die_with_parent)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request
        for _ in range(300):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            time.sleep(0.1)
        report = {"calls": args.calls, "scenarios": [
            asyncio.run(scenario(base, proc.pid, 5, 1.0, 20.0)),
            asyncio.run(scenario(base, proc.pid, 1, 0.0, 10.0)),
            asyncio.run(scenario(base, proc.pid, 10, 0.0, 10.0)),
        ]}
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"live events, {args.calls} live calls (daemon on CPU {args.daemon_cpu}, "
          f"readers on CPU {args.load_cpu})")
    for s in report["scenarios"]:
        print(f"  {s['readers']:>2} reader(s), {s['per_call_per_s']} line/call/s: published "
              f"{s['published_per_s']}/s, delivered {s['delivered_per_reader_per_s']}/s per "
              f"reader ({s['delivered_total_per_s']}/s in all), lost {s['lost']}, lag p50 "
              f"{s['lag_ms']['p50']} ms p95 {s['lag_ms']['p95']} ms p99 {s['lag_ms']['p99']} "
              f"ms, daemon CPU {s['daemon_cpu_pct']}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
