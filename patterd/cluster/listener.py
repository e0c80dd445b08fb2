"""A LISTEN connection that survives drops: reconnect with backoff, then tell the node.

Notifications are only delivered to a session that is listening when they are sent, so after
every (re)connection ``on_connected`` runs and the node polls for what it may have missed.
A dropped socket is noticed through asyncpg's termination callback, and a silent one (no FIN:
a partition) by a periodic ``SELECT 1`` with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ..ops.logging import get_logger
from .queries import CHANNEL

log = get_logger("patterd.cluster")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class Listener:
    """Keeps one connection LISTENing on ``patterd_cluster`` while ``run`` runs."""

    def __init__(self, connect: Callable[[], Awaitable[Any]],
                 release: Callable[[Any], Awaitable[None]],
                 on_payload: Callable[[str], None], on_connected: Callable[[], None],
                 *, check_every: float = 5.0) -> None:
        self._connect = connect
        self._release = release
        self._on_payload = on_payload
        self._on_connected = on_connected
        self._check_every = check_every
        self.conn: Any = None
        self.connected = asyncio.Event()
        self.reconnects = 0   # successful connections after the first

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_payload(payload)

    async def run(self) -> None:
        """Connect, listen, watch the connection; on any failure start over after a backoff."""
        backoff = MIN_BACKOFF
        first = True
        while True:
            lost = asyncio.Event()
            try:
                self.conn = await self._connect()
                self.conn.add_termination_listener(lambda _c: lost.set())
                await self.conn.add_listener(CHANNEL, self._notified)
            except asyncio.CancelledError:
                await self._drop()
                raise
            except Exception as exc:
                log.warning("cluster_listen_failed", error=str(exc) or type(exc).__name__,
                            retry_in=backoff)
                await self._drop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = MIN_BACKOFF
            if not first:
                self.reconnects += 1
                log.info("cluster_listen_reconnected")
            first = False
            self.connected.set()
            try:
                self._on_connected()   # catch up on what was sent while we were not listening
                await self._watch(lost)
            finally:
                self.connected.clear()
                await self._drop()
            log.warning("cluster_listen_lost", retry_in=MIN_BACKOFF)
            await asyncio.sleep(MIN_BACKOFF)

    async def _watch(self, lost: asyncio.Event) -> None:
        """Return when the connection is gone (or stops answering)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_every)
                return
            try:
                await self.conn.fetchval("SELECT 1", timeout=self._check_every)
            except asyncio.CancelledError:
                raise
            except Exception:
                return

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if not conn.is_closed():
                await asyncio.wait_for(conn.remove_listener(CHANNEL, self._notified), 1.0)
        with contextlib.suppress(Exception):
            await self._release(conn)
