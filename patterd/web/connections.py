"""Bounding the daemon's inbound connections, so that no client can take them all.

Every accepted connection is counted, in total and per source address. At a limit the
daemon first closes the longest-idle connection that is doing nothing — no request in
progress: a partial request head (slowloris), a keep-alive connection between requests —
and only when there is none refuses the new one. A live call's media WebSocket and a request
being answered are never closed for room, so ``/healthz``, webhooks and live calls keep
being served while an attacker holds idle sockets; idle ones also end after
``server.idle_timeout`` (aiohttp's keep-alive timer, which also bounds how long a request
head may take), bodies after ``server.body_timeout``, media sockets without a ``start``
after ``server.media_start_timeout``.

The total is kept below the process's file-descriptor limit (``RLIMIT_NOFILE``, raised to
its hard limit at start), with room left for the backends' own sockets and files: running
out of descriptors would stop ``accept()`` for everyone.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..ops.logging import get_logger
from ..ops.metrics import Metrics

log = get_logger("patterd.connections")

LOG_EVERY = 10.0   # seconds between two log lines about refused or evicted connections


class _Conn:
    __slots__ = ("ip", "busy")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.busy = 0


class ConnectionGuard:
    """Counts connections and applies ``max_total`` / ``max_per_ip``."""

    def __init__(self, max_total: int, max_per_ip: int, metrics: Metrics) -> None:
        self.max_total = max(1, max_total)
        self.max_per_ip = max(1, max_per_ip)
        self._metrics = metrics
        self._conns: dict[Any, _Conn] = {}
        self._per_ip: dict[str, int] = {}
        self._idle: OrderedDict[Any, None] = OrderedDict()           # oldest idle first
        self._idle_by_ip: dict[str, OrderedDict[Any, None]] = {}
        self._next_log = 0.0
        self._unlogged: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """``inner`` (aiohttp's request handler) behind this guard."""
        return _Guarded(self, inner)

    # -- the transport's side ----------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection (closing an idle one for room when at a limit); False
        when it must be refused."""
        ip = _peer_ip(transport)
        if self._per_ip.get(ip, 0) >= self.max_per_ip and not self._evict(ip):
            return self._refuse("max_connections_per_ip", ip)
        if len(self._conns) >= self.max_total and not self._evict(None):
            return self._refuse("max_connections", ip)
        self._conns[transport] = _Conn(ip)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._set_idle(transport, ip)
        self._metrics.connections_open.set(len(self._conns))
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        """The connection closed."""
        conn = self._conns.pop(transport, None)
        if conn is None:
            return
        left = self._per_ip.get(conn.ip, 1) - 1
        if left > 0:
            self._per_ip[conn.ip] = left
        else:
            self._per_ip.pop(conn.ip, None)
        self._clear_idle(transport, conn.ip)
        self._metrics.connections_open.set(len(self._conns))

    # -- the application's side (a request in progress) -------------------------------------

    def busy(self, transport: Any) -> None:
        """A request is being handled on ``transport``: it is not closed for room."""
        conn = self._conns.get(transport)
        if conn is not None:
            conn.busy += 1
            self._clear_idle(transport, conn.ip)

    def done(self, transport: Any) -> None:
        """The request on ``transport`` was handled."""
        conn = self._conns.get(transport)
        if conn is not None:
            conn.busy = max(0, conn.busy - 1)
            if not conn.busy:
                self._set_idle(transport, conn.ip)

    # -- internals ---------------------------------------------------------------------------

    def _set_idle(self, transport: Any, ip: str) -> None:
        self._idle[transport] = None
        self._idle.move_to_end(transport)
        mine = self._idle_by_ip.setdefault(ip, OrderedDict())
        mine[transport] = None
        mine.move_to_end(transport)

    def _clear_idle(self, transport: Any, ip: str) -> None:
        self._idle.pop(transport, None)
        mine = self._idle_by_ip.get(ip)
        if mine is not None:
            mine.pop(transport, None)
            if not mine:
                del self._idle_by_ip[ip]

    def _evict(self, ip: str | None) -> bool:
        """Close the longest-idle connection (of ``ip``, or of anyone)."""
        pool = self._idle if ip is None else self._idle_by_ip.get(ip)
        if not pool:
            return False
        victim = next(iter(pool))
        self.release(victim)
        victim.abort()
        self._metrics.connections_evicted.inc()
        self._note("evicted_idle", _peer_ip(victim))
        return True

    def _refuse(self, limit: str, ip: str) -> bool:
        self._metrics.connections_refused.labels(limit).inc()
        self._note(limit, ip)
        return False

    def _note(self, what: str, ip: str) -> None:
        """One log line per ``LOG_EVERY`` seconds at most, with what happened since."""
        self._unlogged[what] = self._unlogged.get(what, 0) + 1
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + LOG_EVERY
        counts, self._unlogged = self._unlogged, {}
        log.warning("connections_limited", open=len(self._conns), max_total=self.max_total,
                    max_per_ip=self.max_per_ip, last_peer=ip, **counts)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol behind the guard. Data goes straight to the inner protocol (its
    bound method is this object's attribute: no extra call per frame)."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self.data_received = inner.data_received        # type: ignore[method-assign]
        self.eof_received = inner.eof_received          # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing        # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing      # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport):
            transport.abort()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:   # refused: aiohttp never saw it
            return
        self._guard.release(self._transport)
        self._inner.connection_lost(exc)


def _peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return str(peer or "")


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` whose connections pass through a :class:`ConnectionGuard`."""

    __slots__ = ("_host", "_port", "_guard", "_bound_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 *, backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard
        self._bound_port = port

    @property
    def name(self) -> str:
        """``http://host:port``."""
        return f"http://{self._host}:{self._bound_port}"

    @property
    def port(self) -> int:
        """The port listened on (the one bound when 0 was asked for)."""
        return self._bound_port

    async def start(self) -> None:
        """Listen."""
        await super().start()
        handler_factory = self._runner.server
        assert handler_factory is not None
        guard = self._guard
        factory: Callable[[], asyncio.Protocol] = lambda: guard.protocol(handler_factory())
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


def connection_limits(max_connections: int, max_per_ip: int, max_calls: int
                      ) -> tuple[int, int, int]:
    """``(total, per_ip, nofile)``: the limits to apply, after raising the soft
    ``RLIMIT_NOFILE`` to its hard limit. At most half the descriptors go to inbound
    connections when the limit is tight (the rest: each call's backend sockets, the store,
    model files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    reserve = min(soft // 2, 64 + 3 * max_calls)
    total = max(16, min(max_connections, soft - reserve))
    return total, min(max_per_ip, total), soft


@web.middleware
async def mark_busy(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the guard (when the daemon runs one) that this connection is serving a request."""
    from ..gateway import GATEWAY

    guard = request.app[GATEWAY].connections
    transport = request.transport
    if guard is None or transport is None:
        return await handler(request)
    guard.busy(transport)
    try:
        return await handler(request)
    finally:
        guard.done(transport)


__all__ = ["ConnectionGuard", "GuardedSite", "connection_limits", "mark_busy"]
