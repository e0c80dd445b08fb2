"""Running the daemon: listen, tell systemd, drain on SIGTERM/SIGINT, reload on SIGHUP."""

from __future__ import annotations

import asyncio
from dataclasses import replace
import gc
import os
import signal
import socket
from pathlib import Path

from aiohttp import web

from .app import build_app
from .carriers.base import Carrier
from .config import Config, ConfigError, load_config
from .gateway import GATEWAY, Gateway
from .ops.logging import get_logger
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


async def serve(config: Config, carrier: Carrier, *, config_path: str | Path | None = None
                ) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return (exit 0)."""
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
    await site.start()
    log.info("listening", host=srv.host, port=srv.port, public_url=srv.public_url,
             carrier=carrier.name, phone_number=config.phone_number, max_connections=total,
             max_connections_per_ip=per_ip, nofile=nofile)
    if total <= srv.max_calls:
        log.warning("connection_limit_below_max_calls", max_connections=total,
                    max_calls=srv.max_calls, nofile=nofile,
                    detail="raise the file-descriptor limit (LimitNOFILE=, ulimit -n)")
    sd_notify("READY=1\nSTATUS=accepting calls")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gw, Path(config_path)))
    else:   # SIGHUP's default action would kill the process and drop the live calls
        loop.add_signal_handler(signal.SIGHUP, _no_reload)
    watchdog = _start_watchdog(gw)
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
    ``server.drain_timeout``."""
    gw.draining = True
    if gw.cluster is not None:   # other replicas see it too
        gw.cluster.set_draining(True)
    sd_notify("STOPPING=1\nSTATUS=draining")
    deadline = asyncio.get_running_loop().time() + gw.config.server.drain_timeout
    log.info("draining", live_sessions=len(gw.sessions),
             timeout=gw.config.server.drain_timeout)
    while gw.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
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


def _reload(gw: Gateway, path: Path) -> None:
    """Apply the agent and backend sections of a re-read file to new calls."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload_rejected", path=str(path), problems=exc.problems,
                  detail="keeping the running configuration")
        return
    old = gw.config
    fixed = [k for k in ("server", "carrier", "phone_number") if getattr(new, k) != getattr(old, k)]
    if new.store.url != old.store.url:
        fixed.append("store.url")
    if fixed:
        log.warning("reload_partial", detail=f"{', '.join(fixed)}: changes need a restart; "
                                             "applying the other sections")
        new = replace(new, server=old.server, carrier=old.carrier,
                      phone_number=old.phone_number,
                      store=replace(new.store, url=old.store.url))
    if not _backends_change(old, new):
        gw.config = new
        log.info("reloaded", path=str(path))
        return
    gw.spawn(_swap_backends(gw, new, path), name="reload-backends")


def _backends_change(old: Config, new: Config) -> bool:
    """Whether new providers are needed (the offline recogniser's vocabulary and the rules
    agent's variables come from the agent section too)."""
    return any(getattr(old, k) != getattr(new, k) for k in ("stt", "llm", "tts", "vad", "agent"))


async def _swap_backends(gw: Gateway, new: Config, path: Path) -> None:
    """Start the new config's providers beside the running ones, then switch new calls to
    them; calls already live finish on the old ones, which close once the last has ended."""
    from .call.backends import Backends
    try:
        fresh = await Backends.from_config(new, on_error=gw.backend_failed,
                                             supervisor=gw.supervisor)
    except Exception as exc:  # noqa: BLE001 - a provider that cannot start: keep the old set
        log.error("reload_rejected", path=str(path), problems=[f"backends: {exc}"],
                  detail="keeping the running configuration")
        return
    old = gw.backends
    gw.backends, gw.config = fresh, new
    if old is not None:
        gw.retired.append(old)
        await gw.release_retired()
    log.info("reloaded", path=str(path), backends="restarted")


def _start_watchdog(gw: Gateway) -> asyncio.Task[None] | None:
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or not os.environ.get("NOTIFY_SOCKET"):
        return None
    interval = int(usec) / 2e6

    async def ping() -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return gw.spawn(ping(), name="watchdog")


__all__ = ["serve", "drain", "make_runner", "sd_notify", "GATEWAY"]
