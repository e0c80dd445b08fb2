"""Running the daemon: listen, tell systemd, drain on SIGTERM/SIGINT, reload on SIGHUP
(:mod:`patterd.reload`)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .app import build_app
from .carriers.base import Carrier
from .config import Config
from .call import handoff
from .gateway import GATEWAY, Gateway
from .ops.logging import get_logger
from .reload import Reloader
from .startup import StartupError
from .web.connections import ConnectionGuard, GuardedSite, connection_limits

log = get_logger("patterd.server")

LINGER_SECONDS = 2.0
DRAIN_GOODBYE = "We are closing this line for maintenance now. Please call again. Goodbye."


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's ``NOTIFY_SOCKET`` when there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False


async def serve(config: Config, carrier: Carrier, *, config_path: str | Path | None = None,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[Gateway], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain and return (exit 0).
    ``on_ready(gateway)`` is called once the daemon listens."""
    gw = Gateway(config=config)
    app = build_app(config, carrier, gateway=gw)
    runner = make_runner(app)
    await runner.setup()
    srv = config.server
    total, per_ip, nofile = connection_limits(srv.max_connections, srv.max_connections_per_ip,
                                              srv.max_calls)
    gw.connections = ConnectionGuard(total, per_ip, gw.metrics)
    # Everything loaded so far (models, modules, config) lives as long as the process: keep
    # it out of the collector so full collections stay short under load (measured: 56–95 ms
    # pauses at 400 calls without, ~21 ms with).
    gc.collect()
    gc.freeze()
    site = GuardedSite(runner, srv.host, srv.port, gw.connections, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError("server", f"cannot listen on {srv.host}:{srv.port}: {why.lower()}",
                           path=f"{srv.host}:{srv.port}") from exc
    log.info("listening", host=srv.host, port=srv.port, public_url=srv.public_url,
             carrier=carrier.name, phone_number=config.phone_number, max_connections=total,
             max_connections_per_ip=per_ip, nofile=nofile)
    if total <= srv.max_calls:
        log.warning("connection_limit_below_max_calls", max_connections=total,
                    max_calls=srv.max_calls, nofile=nofile,
                    detail="raise the file-descriptor limit (LimitNOFILE=, ulimit -n)")
    sd_notify("READY=1\nSTATUS=accepting calls")

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        reloader = Reloader(gw, Path(config_path))
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
    else:   # SIGHUP's default action would kill the process and drop the live calls
        loop.add_signal_handler(signal.SIGHUP, _no_reload)
    watchdog = _start_watchdog(gw)
    if on_ready is not None:
        on_ready(gw)
    try:
        await stop.wait()
        await drain(gw)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")


def make_runner(app: web.Application) -> web.AppRunner:
    """The daemon's aiohttp runner. A handler is not cancelled when its client hangs up (a
    webhook half-processed would be worse); a client that hangs up mid-body is answered 499
    by the body reader instead. After an early answer (408, 413) the rest of a body is read
    and dropped for at most ``LINGER_SECONDS``. A connection with no complete request head
    ``server.idle_timeout`` seconds after it opened or after its previous answer is closed
    (aiohttp's keep-alive timer: idle keep-alive and slow heads alike)."""
    idle = app[GATEWAY].config.server.idle_timeout
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                         handler_cancellation=False, lingering_time=LINGER_SECONDS,
                         keepalive_timeout=idle)


async def drain(gw: Gateway) -> None:
    """Stop taking calls (``/readyz`` 503) and wait for live media sessions, up to
    ``server.drain_timeout``; with replicas, move them to a ready one meanwhile
    (:mod:`patterd.call.handoff`)."""
    gw.draining = True
    if gw.cluster is not None:   # other replicas see it too
        gw.cluster.set_draining(True)
    sd_notify("STOPPING=1\nSTATUS=draining")
    deadline = asyncio.get_running_loop().time() + gw.config.server.drain_timeout
    moving = handoff.enabled(gw)
    log.info("draining", live_sessions=len(gw.sessions),
             timeout=gw.config.server.drain_timeout, handoff=moving)
    mover = gw.spawn(handoff.hand_off_all(gw, deadline), name="handoff") if moving else None
    while gw.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05 if moving else 0.2)
    if mover is not None:
        mover.cancel()
    if gw.sessions:
        # Out of time: the agent says goodbye and each call is hung up through the carrier.
        log.warning("drain_timeout", live_sessions=len(gw.sessions))
        ending = [s.end("drained", DRAIN_GOODBYE) for s in list(gw.sessions)]
        try:
            await asyncio.wait_for(asyncio.gather(*ending, return_exceptions=True), 30)
        except asyncio.TimeoutError:
            log.error("drain_goodbye_timeout", live_sessions=len(gw.sessions))


def _no_reload() -> None:
    log.warning("reload_unavailable", detail="configured in Python, not from a file: nothing "
                                             "to re-read; restart to change the configuration")


def _start_watchdog(gw: Gateway) -> asyncio.Task[None] | None:
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or not os.environ.get("NOTIFY_SOCKET"):
        return None
    interval = int(usec) / 2e6

    async def ping() -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return gw.supervise("systemd_watchdog", ping)


__all__ = ["serve", "drain", "make_runner", "sd_notify", "GATEWAY"]
