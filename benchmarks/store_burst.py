#!/usr/bin/env python3
"""Benchmark: a burst of signed Twilio "completed" callbacks against the real daemon while a
few calls are live — are all records stored, how many 503s, how long until the store catches
up.

Starts ``python -m patterd --config <temp yaml>`` (SQLite store in a temp dir, the default
``store.max_pending`` unless ``--max-pending``), pinned to one CPU with ``taskset``; places
``--live-calls`` simulated calls that stay up through the burst (greeting, keys, a reply, a
goodbye); then sends ``--callbacks`` pre-signed ``completed`` status callbacks, each for its
own CallSid, open-loop at ``--rate`` per second. A 503 is retried after its ``Retry-After``
(as a carrier with retries would), up to ``--max-tries`` deliveries each; ``--no-retry``
models Twilio's default (a 5xx is not retried). Reports: callbacks sent, answered 204 at
first try, 503s, deliveries given up, the daemon's ``patterd_store_backpressure_total``,
peak backlog (``patterd_store_pending``) and RSS, the time from the last callback to an empty
backlog, rows in the database after shutdown vs calls expected, and the live calls' outcomes.

    .venv/bin/python benchmarks/store_burst.py                       # 20,000 at 1,000/s, 4 live
    .venv/bin/python benchmarks/store_burst.py --no-retry
    .venv/bin/python benchmarks/store_burst.py --callbacks 5000 --max-pending 1000 --json

Not a test: about a minute. Talks only to 127.0.0.1, stops by itself, always stops the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webhooks import (ACCOUNT_SID, AUTH_TOKEN, PHONE, REPO, STATUS_PATH,  # noqa: E402
                      die_with_parent, free_port, http_get, status_params, taskset,
                      twilio_signature, voice_params)

RULES = [{"dtmf": "1", "reply": "You pressed one."},
         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Figures:
    """What one burst measured."""

    callbacks: int
    rate: float
    max_pending: int
    retry: bool
    sent_seconds: float = 0.0
    first_try_204: int = 0
    refused_503: int = 0                # 503 answers, counting each retry
    callbacks_refused: int = 0          # callbacks that met at least one 503
    given_up: int = 0                   # callbacks never answered 204
    other_answers: dict[str, int] = field(default_factory=dict)
    daemon_delayed: int = 0             # patterd_store_backpressure_total{outcome="delayed"}
    daemon_refused: int = 0
    peak_pending: int = 0
    drain_seconds: float | None = None  # last callback answered → backlog empty
    peak_rss_mib: float = 0.0
    rows_stored: int = 0
    rows_expected: int = 0
    live_ok: int = 0
    live_calls: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    retry_after_s: dict[str, int] = field(default_factory=dict)   # Retry-After → 503s


def metric(text: str, name: str, **labels: str) -> float:
    for m in re.finditer(rf'^{name}(?:\{{([^}}]*)\}})? ([0-9.e+-]+)$', text, re.MULTILINE):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


async def start_daemon(workdir: Path, port: int, api_port: int, store_url: str,
                       max_pending: int | None, cpu: int) -> subprocess.Popen[bytes]:
    base = f"http://127.0.0.1:{port}"
    store: dict[str, Any] = {"url": store_url}
    if max_pending is not None:
        store["max_pending"] = max_pending
    raw = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": base, "drain_timeout": 5},
        "phone_number": PHONE,
        "carrier": {"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                    "configure_number": False, "api_base_url": f"http://127.0.0.1:{api_port}"},
        "llm": {"provider": "rules", "rules": RULES},
        "store": store,
        "logging": {"level": "warning", "format": "json"},
    }
    (workdir / "patterd.yaml").write_text(json.dumps(raw, indent=2))
    logfile = (workdir / "patterd.log").open("wb")
    proc = subprocess.Popen([*taskset(cpu), sys.executable, "-m", "patterd", "--config",
                             str(workdir / "patterd.yaml")], cwd=REPO, stdout=logfile,
                            stderr=logfile, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {(workdir / 'patterd.log').read_text()}")
        with contextlib.suppress(OSError):
            if (await asyncio.to_thread(http_get, base + "/readyz"))[0] == 200:
                return proc
        await asyncio.sleep(0.2)
    proc.kill()
    raise RuntimeError("the daemon did not become ready")


class LatencyProxy:
    """127.0.0.1:<port> → ``target``, each chunk delivered ``delay`` seconds after it came (a
    database one round trip of ``2 * delay`` away)."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def deliver() -> None:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    dst.write(data)
                    await dst.drain()

            sender = asyncio.create_task(deliver())
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    queue.put_nowait((time.monotonic() + self.delay, data))
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await sender
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def burst(args: argparse.Namespace, base: str, pid: int, fig: Figures) -> None:
    import aiohttp

    from patterd.config import build_config
    from patterd.simulate import Dtmf, Wait, WaitForAgent, make_api, simulate_call

    raw = json.loads((Path(args.workdir) / "patterd.yaml").read_text())
    cfg = build_config(raw, env={})
    api = make_api(cfg)
    await api.start()
    hold = max(5.0, args.callbacks / args.rate / 2)     # live through the burst
    steps = [WaitForAgent(), Wait(hold), Dtmf("1"), WaitForAgent(), Wait(hold), Dtmf("9"),
             WaitForAgent(required=False)]
    calls = [asyncio.create_task(simulate_call(cfg, base, steps, api=api,
                                               timeout=4 * hold + 120))
             for _ in range(args.live_calls)]
    tag = f"{os.getpid()}-{time.time_ns()}"
    requests = []
    for n in range(args.callbacks):
        params = status_params(voice_params(n, tag))
        requests.append((urlencode(params).encode(),
                         {"X-Twilio-Signature": twilio_signature(base + STATUS_PATH, params),
                          "Content-Type": "application/x-www-form-urlencoded"}))
    await asyncio.sleep(3.0)                          # the live calls are up and greeted
    latencies: list[float] = []
    answers: dict[str, int] = {}
    last_answer = 0.0
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=20)) as http:
        async def deliver(body: bytes, headers: dict[str, str]) -> None:
            """Until a 204, retrying each 503 after its Retry-After (unless --no-retry)."""
            nonlocal last_answer
            refused = False
            for attempt in range(args.max_tries):
                began = time.perf_counter()
                try:
                    async with http.post(base + STATUS_PATH, data=body,
                                         headers=headers) as resp:
                        await resp.read()
                        status = str(resp.status)
                        retry_after = float(resp.headers.get("Retry-After", "1"))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, retry_after = type(exc).__name__, 1.0
                latencies.append(time.perf_counter() - began)
                if status == "204":
                    fig.first_try_204 += attempt == 0
                    break
                if status == "503":
                    fig.refused_503 += 1
                    key = f"{retry_after:g}"
                    fig.retry_after_s[key] = fig.retry_after_s.get(key, 0) + 1
                    refused = True
                else:
                    answers[status] = answers.get(status, 0) + 1
                if not args.retry or attempt == args.max_tries - 1:
                    fig.given_up += 1
                    break
                await asyncio.sleep(retry_after)
            fig.callbacks_refused += refused
            last_answer = time.monotonic()

        async def watch(stop: asyncio.Event) -> None:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(base + "/metrics") as resp:
                        pending = metric(await resp.text(), "patterd_store_pending")
                    fig.peak_pending = max(fig.peak_pending, int(pending))
                await asyncio.sleep(0.1)

        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(watch(stop_watch))
        began = time.monotonic()
        tasks = []
        for i, (body, headers) in enumerate(requests):
            delay = began + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(deliver(body, headers)))
        fig.sent_seconds = round(time.monotonic() - began, 2)
        await asyncio.gather(*tasks)
        while True:                                   # until the backlog is written
            async with http.get(base + "/metrics") as resp:
                text = await resp.text()
            if metric(text, "patterd_store_pending") == 0:
                fig.drain_seconds = round(time.monotonic() - last_answer, 2)
                break
            await asyncio.sleep(0.1)
        stop_watch.set()
        await watcher
        fig.daemon_delayed = int(metric(text, "patterd_store_backpressure_total",
                                        outcome="delayed"))
        fig.daemon_refused = int(metric(text, "patterd_store_backpressure_total",
                                        outcome="refused"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    await api.close()
    fig.live_calls = len(results)
    for r in results:
        if isinstance(r, BaseException):
            log(f"live call failed: {r!r}")
        elif r.ok and r.outcome == "hung_up_by_agent" and not r.warnings:
            fig.live_ok += 1
        else:
            log(f"live call not as scripted: outcome {r.outcome}, {len(r.latencies)} of 2 "
                f"turns answered, errors {r.errors}, warnings {r.warnings}")
    fig.other_answers = answers
    fig.peak_rss_mib = round(peak_rss_mib(pid), 1)
    latencies.sort()
    if latencies:
        fig.latency_p50_ms = round(1000 * latencies[len(latencies) // 2], 1)
        fig.latency_p99_ms = round(1000 * latencies[int(len(latencies) * 0.99)], 1)


async def run(args: argparse.Namespace, tmp: Path, fig: Figures) -> list[str]:
    """Start the store (and proxy), the daemon, the burst; the daemon's log lines."""
    port, api_port = free_port(), free_port()
    proxy: LatencyProxy | None = None
    pg_db = ""
    if args.postgres:
        import asyncpg
        admin = urlsplit(args.postgres)
        pg_db = f"patterd_burst_{os.getpid()}"
        conn = await asyncpg.connect(args.postgres)
        await conn.execute(f"CREATE DATABASE {pg_db}")
        await conn.close()
        proxy = LatencyProxy((admin.hostname or "127.0.0.1", admin.port or 5432),
                             args.rtt_ms / 2000)
        store_url = admin._replace(netloc=f"{admin.username}@127.0.0.1:{await proxy.start()}",
                                   path=f"/{pg_db}").geturl()
    else:
        store_url = f"sqlite:///{tmp}/calls.db"
    try:
        proc = await start_daemon(tmp, port, api_port, store_url, args.max_pending,
                                  args.daemon_cpu)
        try:
            await burst(args, f"http://127.0.0.1:{port}", proc.pid, fig)
        finally:
            await asyncio.to_thread(stop_daemon, proc)
        if pg_db:
            conn = await asyncpg.connect(admin._replace(path=f"/{pg_db}").geturl())
            fig.rows_stored = int(await conn.fetchval("SELECT count(*) FROM calls"))
            await conn.close()
        else:
            with sqlite3.connect(tmp / "calls.db") as db:
                fig.rows_stored = int(db.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        if proxy is not None:
            await proxy.stop()
        if pg_db:
            conn = await asyncpg.connect(args.postgres)
            await conn.execute(f"DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)")
            await conn.close()
    return (tmp / "patterd.log").read_text(errors="replace").splitlines()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--callbacks", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=1000.0, help="callbacks sent per second")
    p.add_argument("--live-calls", type=int, default=4)
    p.add_argument("--max-pending", type=int, default=None,
                   help="store.max_pending (default: the daemon's own default)")
    p.add_argument("--postgres", metavar="ADMIN_URL", default="",
                   help="store the records in a fresh database of this local PostgreSQL "
                        "server (e.g. postgresql://postgres@127.0.0.1:5432/test) instead of "
                        "SQLite, reached through a proxy adding --rtt-ms")
    p.add_argument("--rtt-ms", type=float, default=0.0,
                   help="round trip added between the daemon and PostgreSQL")
    p.add_argument("--no-retry", dest="retry", action="store_false",
                   help="a 503 is not retried (Twilio's default retry policy)")
    p.add_argument("--max-tries", type=int, default=60)
    p.add_argument("--daemon-cpu", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    fig = Figures(args.callbacks, args.rate, args.max_pending or 10_000, args.retry)
    with contextlib.suppress(OSError):   # the load (and the proxy) on the other CPU
        os.sched_setaffinity(0, {0 if args.daemon_cpu else 1})
    with tempfile.TemporaryDirectory(prefix="patterd-burst-") as tmp:
        args.workdir = tmp
        daemon_log = asyncio.run(run(args, Path(tmp), fig))
    fig.rows_expected = args.callbacks - fig.given_up + args.live_calls
    dropped = [line for line in daemon_log if '"store_queue_full"' in line]
    if args.json:
        print(json.dumps(asdict(fig), indent=2))
    else:
        store = f"PostgreSQL, +{args.rtt_ms:g} ms round trip" if args.postgres else "SQLite"
        print(f"callbacks sent          {fig.callbacks} in {fig.sent_seconds} s "
              f"({fig.callbacks / max(fig.sent_seconds, 1e-9):.0f}/s), {fig.live_calls} live "
              f"calls, store {store}")
        print(f"204 at first try        {fig.first_try_204}")
        print(f"503 answers             {fig.refused_503} (daemon counted "
              f"{fig.daemon_refused}); delayed then let in: {fig.daemon_delayed}")
        print(f"Retry-After (s: 503s)   {dict(sorted(fig.retry_after_s.items(), key=lambda kv: float(kv[0]))) or '-'}")
        print(f"never answered 204      {fig.given_up}"
              f"{'' if fig.retry else ' (no retries: Twilio default)'}")
        print(f"other answers           {fig.other_answers or 'none'}")
        print(f"peak backlog            {fig.peak_pending} (max_pending {fig.max_pending})")
        print(f"drain after last answer {fig.drain_seconds} s")
        print(f"answer latency          p50 {fig.latency_p50_ms} ms, p99 {fig.latency_p99_ms} ms")
        print(f"peak RSS                {fig.peak_rss_mib} MiB")
        print(f"rows stored             {fig.rows_stored} of {fig.rows_expected} expected "
              f"(callbacks answered 204 + live calls)")
        print(f"live calls ok           {fig.live_ok} of {fig.live_calls}")
        if dropped:
            print(f"store_queue_full lines  {len(dropped)}")
    ok = fig.rows_stored == fig.rows_expected and fig.live_ok == fig.live_calls
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
