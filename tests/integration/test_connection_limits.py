"""Bounded connections: no client can take them all. Slowloris against a daemon process
with a low file-descriptor limit leaves /healthz and signed webhooks answering; media sockets
that never send ``start`` are closed after ``server.media_start_timeout``; idle and half-sent
connections end after ``server.idle_timeout``; at a limit an idle connection makes room, a
busy one (a live call) never does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from patterd.app import build_app
from patterd.carriers.twilio.signature import compute_signature
from patterd.gateway import GATEWAY, Gateway
from patterd.patter import carrier_for
from patterd.server import make_runner
from patterd.web.connections import ConnectionGuard, GuardedSite
from tests.conftest import config, twilio_raw
from tests.integration.test_twilio_webhooks import voice_params
from tests.support.net import ROOT, free_port, readyz
from tests.support.raw_http import parse_response, request_bytes
from tests.support.signing import TWILIO_TOKEN, twilio_form
from tests.support.stub_backends import stub_backends

PARTIAL_HEAD = b"POST /webhooks/twilio/voice HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "


@contextlib.contextmanager
def daemon_process(tmp_path: Path, port: int, server: dict[str, Any],
                   nofile: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``python -m patterd`` on ``port`` (Twilio, offline backends), optionally under
    ``ulimit -n nofile``; its log in a file (read it after the block)."""
    public = f"http://127.0.0.1:{port}"
    cfg = {"server": {"public_url": public, "host": "127.0.0.1", "port": port, **server},
           "phone_number": "+15550001234",
           "carrier": {"provider": "twilio", "account_sid": "AC" + "0" * 32,
                       "auth_token": TWILIO_TOKEN, "configure_number": False,
                       "api_base_url": "http://127.0.0.1:9"},
           "vad": {"provider": "energy"}, "tts": {"provider": "espeak"},
           "llm": {"provider": "rules", "rules": [], "fallback": "Sorry?"},
           "store": {"url": f"sqlite:///{tmp_path / 'calls.db'}"}}
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATTERD_", "TWILIO_", "TELNYX_"))}
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "patterd", "--config", str(path)],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=limit)
    try:
        deadline = time.monotonic() + 60
        while readyz(port) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the daemon did not start: " + log.read_text()[-3000:])
            time.sleep(0.1)
        yield proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextlib.contextmanager
def more_descriptors(n: int) -> Iterator[None]:
    """This (the attacker's) process may open ``n`` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def signed_voice(port: int, public: str, n: int) -> int:
    body, headers = twilio_form(public + "/webhooks/twilio/voice", voice_params(n))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("POST", "/webhooks/twilio/voice", body, headers))
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return parse_response(raw).status


async def test_slowloris_leaves_healthz_and_webhooks_answering(tmp_path: Path) -> None:
    """1,100 partial request heads against a daemon allowed 256 file descriptors (the review
    took all 1,024 of a daemon's with as many): the daemon keeps what it can afford, closes
    the longest-idle half-sent ones for room, and goes on answering."""
    port = free_port()
    attackers: list[asyncio.StreamWriter] = []
    with more_descriptors(1400), daemon_process(tmp_path, port, {"max_calls": 20,
                                                                 "idle_timeout": 300},
                                                nofile=256) as (_, log):
        for _ in range(1100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue        # the kernel's accept queue was full at that instant
            writer.write(PARTIAL_HEAD)
            attackers.append(writer)
        await asyncio.sleep(0.5)
        statuses = [await asyncio.to_thread(healthz, port) for _ in range(20)]
        assert statuses == [200] * 20
        assert await signed_voice(port, f"http://127.0.0.1:{port}", 7) == 200
        assert metric(port, "patterd_connections_evicted_total") >= 1100 - 256
        assert metric(port, "patterd_connections_open") < 256
        for writer in attackers:
            writer.close()
    text = log.read_text()
    assert "out of system resource" not in text and "Too many open files" not in text
    limited = [json.loads(line) for line in text.splitlines()
               if '"connections_limited"' in line]
    assert 1 <= len(limited) <= 3, len(limited)        # logged, rate-limited
    listening = next(json.loads(line) for line in text.splitlines() if '"listening"' in line)
    assert listening["nofile"] == 256 and listening["max_connections"] <= 256 - 64 - 3 * 20


async def test_media_sockets_without_a_start_are_closed_after_the_timeout(tmp_path: Path
                                                                          ) -> None:
    port = free_port()
    sig = compute_signature(TWILIO_TOKEN.encode(), f"ws://127.0.0.1:{port}/media/twilio",
                            []).decode()
    upgrade = ("GET /media/twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               f"X-Twilio-Signature: {sig}\r\n\r\n").encode()
    with more_descriptors(1000), daemon_process(tmp_path, port,
                                                {"media_start_timeout": 1.0}) as (_, log):
        socks = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(upgrade)
            socks.append((reader, writer))
        began = time.monotonic()
        heads = await asyncio.gather(*(r.readuntil(b"\r\n\r\n") for r, _ in socks))
        assert all(h.startswith(b"HTTP/1.1 101") for h in heads)

        async def closed(reader: asyncio.StreamReader) -> bytes:
            frames = b""
            while chunk := await reader.read(4096):
                frames += chunk
            return frames
        frames = await asyncio.wait_for(asyncio.gather(*(closed(r) for r, _ in socks)), 15)
        took = time.monotonic() - began
        # Each got a close frame with 4408 (0x1138), within about the timeout.
        assert all(f[:1] == b"\x88" and f[2:4] == b"\x11\x38" for f in frames), frames[0]
        assert took < 8, took
        assert metric(port, "patterd_connections_open") <= 1
        for _, writer in socks:
            writer.close()
        assert healthz(port) == 200


@contextlib.asynccontextmanager
async def guarded(cfg: Any, total: int, per_ip: int) -> AsyncIterator[tuple[Gateway, int]]:
    """The app behind the daemon's runner and a ConnectionGuard of the given limits."""
    app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
    gw = app[GATEWAY]
    runner = make_runner(app)
    await runner.setup()
    gw.connections = ConnectionGuard(total, per_ip, gw.metrics)
    site = GuardedSite(runner, "127.0.0.1", 0, gw.connections)
    await site.start()
    try:
        yield gw, site.port
    finally:
        await runner.cleanup()


async def get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return parse_response(raw).status if raw else 0


async def test_idle_and_half_sent_connections_end_after_the_idle_timeout() -> None:
    async with guarded(config(twilio_raw(server={"idle_timeout": 0.5})), 64, 64) as (gw, port):
        half_reader, half = await asyncio.open_connection("127.0.0.1", port)
        half.write(PARTIAL_HEAD)
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
        idle.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")        # then stays
        head = await idle_reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert await asyncio.wait_for(half_reader.read(), 5) == b""
        await asyncio.wait_for(idle_reader.read(), 5)
        assert time.monotonic() - began < 2
        for _ in range(50):
            if len(gw.connections) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(gw.connections) == 0


async def test_at_a_limit_idle_connections_make_room_busy_ones_never() -> None:
    cfg = config(twilio_raw(server={"idle_timeout": 60, "media_start_timeout": 30}))
    async with guarded(cfg, 4, 4) as (gw, port):
        sig = compute_signature(TWILIO_TOKEN.encode(), "wss://voice.example.com/media/twilio",
                                []).decode()
        import aiohttp
        async with aiohttp.ClientSession() as http:
            # Two media sockets (handlers running: busy) and two half-sent heads (idle).
            media = [await http.ws_connect(f"http://127.0.0.1:{port}/media/twilio",
                                           headers={"X-Twilio-Signature": sig})
                     for _ in range(2)]
            halves = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(PARTIAL_HEAD)
                halves.append((reader, writer))
            await asyncio.sleep(0.1)
            assert len(gw.connections) == 4
            # Full: /healthz still answers, the oldest half-sent head made room.
            assert await get(port, "/healthz") == 200
            assert await asyncio.wait_for(halves[0][0].read(), 5) == b""
            assert gw.metrics.connections_evicted._value.get() >= 1
            # Fill the room left with busy media sockets: then a new connection is refused,
            # and the live ones are untouched.
            media += [await http.ws_connect(f"http://127.0.0.1:{port}/media/twilio",
                                            headers={"X-Twilio-Signature": sig})
                      for _ in range(2)]
            await asyncio.sleep(0.1)
            assert await get(port, "/healthz") == 0
            refused = sum(gw.metrics.connections_refused.labels(limit)._value.get()
                          for limit in ("max_connections", "max_connections_per_ip"))
            assert refused >= 1
            assert not any(ws.closed for ws in media[:2])
            for ws in media:
                await ws.close()
            for _, writer in halves:
                writer.close()
        await asyncio.sleep(0.1)
        assert await get(port, "/healthz") == 200
