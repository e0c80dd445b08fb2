#!/usr/bin/env python3
"""Benchmark: calls per second a load-balanced cluster accepts, 3 replicas versus 1.

Starts N real ``patterd`` replicas sharing one PostgreSQL database (a fresh one on
``--pg-url``'s server, dropped afterwards) behind HAProxy running a templated copy of
``deploy/haproxy/haproxy.cfg`` (tests/support/cluster.py), then drives signed Twilio voice
webhooks, each for a new CallSid, at HAProxy with ``wrk`` (or the Python load generator), reusing
benchmarks/webhooks.py's request pool and load generators. A call is accepted when its voice
webhook answers 200 (TwiML); anything else is counted as bad. Prints accepted calls/s per
cluster size and the ratio.

    .venv/bin/python benchmarks/cluster.py                    # 1 and 3 replicas, 3 runs x 10 s
    .venv/bin/python benchmarks/cluster.py --sizes 1,2,3 --duration 5 --json

Not a test. On a machine with few CPUs the replicas, HAProxy and the load generator share
them: the ratio then measures contention as much as scaling (the report prints the CPU count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from benchmarks import webhooks as wh  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402


async def make_database(admin_url: str) -> tuple[str, str]:
    """A fresh database on the server: (its URL, its name)."""
    name = f"patterd_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")), name


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def bench_size(size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    store, name = await make_database(args.pg_url)
    try:
        extra = {"carrier": {"account_sid": wh.ACCOUNT_SID, "auth_token": wh.AUTH_TOKEN},
                 "server": {"max_calls": 1_000_000}}
        async with Cluster(work / f"cluster-{size}", store, replicas=size,
                           log_level="warning", extra=extra) as cluster:
            pool = wh.write_pool(work / f"pool-{size}.txt", cluster.lb_url, args.calls, 0)
            lua = work / "pool.lua"
            lua.write_text(wh.WRK_LUA)
            use_wrk = shutil.which("wrk") is not None and not args.python_loadgen
            url = cluster.lb_url + wh.PATH
            runs = []
            offset = 0
            for n in range(args.runs + 1):             # the first run warms up
                load = wh.run_wrk if use_wrk else wh.run_python
                result = await asyncio.to_thread(
                    load, url, pool.path, lua, args.duration, args.connections, None,
                    offset) if use_wrk else await asyncio.to_thread(
                    load, url, pool.path, args.duration, args.connections, None, offset)
                offset += result["requests"]
                if n == 0:
                    continue
                accepted = result["requests"] - result["bad"]
                runs.append({"calls_per_s": accepted / result["duration_s"],
                             "bad": result["bad"], "socket_errors": result["socket_errors"],
                             "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"]})
                wh.log(f"{size} replica(s), run {n}: {runs[-1]['calls_per_s']:.0f} calls/s, "
                       f"bad {result['bad']}, p99 {result['p99_ms']:.1f} ms")
            per_replica = {}
            for r in cluster.replicas:
                status, text = wh.http_get(r.url + "/metrics")
                per_replica[r.name] = sum(
                    int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                    if line.startswith("patterd_webhook_requests_total{")
                    and 'endpoint="voice"' in line and 'code="200"' in line)
        rates = [r["calls_per_s"] for r in runs]
        return {"replicas": size, "loadgen": "wrk" if use_wrk else "python",
                "median_calls_per_s": statistics.median(rates), "min": min(rates),
                "max": max(rates), "runs": runs, "voice_200_per_replica": per_replica}
    finally:
        await drop_database(args.pg_url, name)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="patterd-cluster-bench-") as tmp:
        results = [await bench_size(size, args, Path(tmp)) for size in sizes]
    base = results[0]["median_calls_per_s"]
    for r in results:
        r["vs_first"] = r["median_calls_per_s"] / base if base else None
    return {"cpus": os.cpu_count(), "duration_s": args.duration, "connections": args.connections,
            "results": results}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,3", help="cluster sizes to compare (default 1,3)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--calls", type=int, default=200_000, help="distinct CallSids in the pool")
    p.add_argument("--pg-url", default=os.environ.get(
        "PATTERD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--python-loadgen", action="store_true", help="do not use wrk")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['cpus']} CPUs, {args.connections} connections, "
              f"{args.runs} x {args.duration:g} s per size")
        for r in report["results"]:
            print(f"{r['replicas']} replica(s): {r['median_calls_per_s']:.0f} calls/s accepted "
                  f"(min {r['min']:.0f}, max {r['max']:.0f}; x{r['vs_first']:.2f}), "
                  f"per replica {r['voice_200_per_replica']}, load generator {r['loadgen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
