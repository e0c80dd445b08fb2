"""``ClusterNode``: one per process; routes call commands to the replica holding the call.

Flow of a command (e.g. an admin hang-up arriving at replica A for a call whose media socket
is on B): A ``submit``s it, which in one statement finds B as the call's live owner, inserts
the command aimed at B and ``pg_notify``s ``B:<id>`` (delivered at commit). B's listener
hands the id to its dispatcher, which claims it exactly once (``claimed_by IS NULL``), runs
``on_command`` (commands of one call in id order, calls in parallel), stores the result and
notifies ``A:done:<id>``; A's ``wait_result`` wakes up (or finds the result by polling).

Safety nets: every ``poll_every`` and after every listener reconnection a replica claims
whatever is still aimed at it; ``wait_result`` re-reads the row at the same pace.

Dead replicas (heartbeat older than ``dead_after``, judged on the database's clock): the reaper
on each replica locks them with ``FOR UPDATE SKIP LOCKED`` and, in one transaction, moves their
calls to itself, answers their open commands with ``{"ok": false, "error": "replica_lost"}``
(the call is being hung up, and no other replica has its media socket, so re-targeting the
command could not apply it) and deletes the replica row; after commit ``on_orphan`` runs once
per call, then the ownership is dropped. A replica only reaps once its own heartbeats have
succeeded for ``dead_after`` in a row, so after an outage of the database itself, when every
heartbeat looks old, nobody mistakes the others for dead.

Supervision: the listener, dispatch and heartbeat loops run under the process's
:class:`~patterd.ops.supervise.Supervisor` (components ``cluster_listener``,
``cluster_dispatch``, ``cluster_heartbeat``; the heartbeat is critical — a replica that stops
heartbeating is reaped — so ``/readyz`` answers 503 while it restarts). A malformed
notification, a command row that cannot be started, a failed heartbeat round or an orphan
that cannot be ended (``cluster_reaper``) is reported and skipped; a loop that dies anyway is
restarted with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..ops.logging import get_logger
from ..ops.supervise import Supervisor
from . import queries as Q
from .dispatch import CommandDispatch
from .errors import ClusterError, ClusterUnavailable, NoLiveOwner
from .listener import Listener
from .handoffs import CLEAN as HANDOFFS_CLEAN
from .handoffs import KEEP_SECONDS as HANDOFFS_KEEP
from .reaper import take_over_dead
from .schema import ensure_schema

log = get_logger("patterd.cluster")

OnCommand = Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
OnOrphan = Callable[[str, str], Awaitable[Any]]

REPLICA_STOPPED: dict[str, Any] = {"ok": False, "error": "replica_stopped"}
CLEAN_EVERY = 60.0
DELIVERY_TTL = 6 * 3600.0    # seconds a processed delivery key is remembered


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A live replica as the shared table sees it."""

    id: str
    started_at: datetime
    heartbeat_at: datetime
    draining: bool


def default_replica_id() -> str:
    """``<hostname>-<pid>-<random>``: unique even when a container reuses a pid."""
    host = socket.gethostname().replace(":", "-") or "replica"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _unavailable(exc: BaseException) -> ClusterUnavailable:
    return ClusterUnavailable(f"cluster: PostgreSQL: {str(exc) or type(exc).__name__}")


class ClusterNode(CommandDispatch):
    """This process's membership in the cluster. Create it with ``await ClusterNode.start``."""

    def __init__(self, pool: Any, own_pool: bool, replica_id: str, on_command: OnCommand,
                 on_orphan: OnOrphan, *, heartbeat_every: float, dead_after: float,
                 poll_every: float, keep_done: float, dsn: str | None,
                 supervisor: Supervisor | None = None) -> None:
        if ":" in replica_id or not replica_id:
            raise ClusterError(f"cluster: replica id {replica_id!r} must be non-empty, "
                               "without ':'")
        self.replica_id = replica_id
        self.supervisor = supervisor or Supervisor()
        self.draining = False
        self.heartbeat_every = heartbeat_every
        self.dead_after = dead_after
        self.poll_every = poll_every
        self.keep_done = keep_done
        self._pool = pool
        self._own_pool = own_pool
        self._dsn = dsn
        self._on_command = on_command
        self._on_orphan = on_orphan
        self._wanted: set[int] = set()        # ids notified to us, not yet claimed
        self._poll_all = False
        self._wake = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._deferred: dict[tuple[str, str], bool] = {}   # ownership writes to retry
        self._tasks: set[asyncio.Task[Any]] = set()
        self._orphans: set[asyncio.Task[Any]] = set()   # on_orphan runs, awaited by stop
        self._healthy_since: float | None = None
        self._stopped = False
        self._listener = Listener(self._listen_connect, self._listen_release,
                                  self._on_payload, self._on_listen_connected,
                                  check_every=max(1.0, 5 * heartbeat_every))

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, dsn_or_pool: str | Any, replica_id: str | None = None, *,
                    on_command: OnCommand, on_orphan: OnOrphan,
                    heartbeat_every: float = 1.0, dead_after: float = 6.0,
                    poll_every: float = 1.0, keep_done: float = 3600.0,
                    supervisor: Supervisor | None = None) -> ClusterNode:
        """Create the tables if needed, register this replica and start its loops.

        ``dsn_or_pool``: a ``postgresql://`` URL (the node opens a small pool of its own and
        a dedicated LISTEN connection) or an ``asyncpg`` pool (shared; the LISTEN connection
        is then one of its connections, held for the node's life). ``on_command(call_id,
        carrier, kind, args) -> dict`` applies a command to this process's live call;
        ``on_orphan(call_id, carrier)`` ends a call whose replica died. ``keep_done``: seconds
        answered commands are kept. ``supervisor``: the process's (its loops' keeper; the
        node's own when None). Returns once the listener is listening.
        """
        import asyncpg

        if isinstance(dsn_or_pool, str):
            dsn: str | None = dsn_or_pool
            try:
                pool = await asyncpg.create_pool(
                    dsn=dsn, min_size=1, max_size=4, timeout=10.0, command_timeout=30.0,
                    server_settings={"application_name": "patterd-cluster"})
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                raise _unavailable(exc) from exc
            own = True
        else:
            dsn, pool, own = None, dsn_or_pool, False
        node = cls(pool, own, replica_id or default_replica_id(), on_command, on_orphan,
                   heartbeat_every=heartbeat_every, dead_after=dead_after,
                   poll_every=poll_every, keep_done=keep_done, dsn=dsn,
                   supervisor=supervisor)
        try:
            async with pool.acquire() as conn:
                await ensure_schema(conn)
                await conn.execute(Q.REGISTER, node.replica_id, False)
            node._healthy_since = time.monotonic()
            node._supervise("cluster_listener", node._listener.run)
            node._supervise("cluster_dispatch", node._dispatch_loop)
            node._supervise("cluster_heartbeat", node._heartbeat_loop, critical=True)
            await asyncio.wait_for(node._listener.connected.wait(), 10.0)
        except BaseException as exc:
            await node.abort()
            if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                TimeoutError)):
                raise _unavailable(exc) from exc
            raise
        log.info("cluster_joined", replica=node.replica_id)
        return node

    async def stop(self) -> None:
        """Leave cleanly: finish running commands, answer the unclaimed ones with an error,
        delete this replica's ownerships and row, close the connections."""
        if self._stopped:
            return
        self._stopped = True
        if self._orphans:   # a dead replica's calls being hung up: let that finish
            await asyncio.wait(list(self._orphans), timeout=10.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        chains = list(self._chains.values())
        if chains:
            await asyncio.wait(chains, timeout=5.0)
        try:
            async with self._pool.acquire(timeout=10.0) as conn, conn.transaction():
                await conn.fetch(Q.ANSWER_OPEN, self.replica_id, self.replica_id,
                                 json.dumps(REPLICA_STOPPED))
                await conn.execute(Q.DELETE_OWNERS, self.replica_id)
                await conn.execute(Q.DELETE_REPLICA, self.replica_id)
        except Exception as exc:   # the others will reap us after dead_after
            log.warning("cluster_leave_failed", error=str(exc) or type(exc).__name__)
        await self._close()
        log.info("cluster_left", replica=self.replica_id)

    async def abort(self) -> None:
        """Stop without telling the database, as if the process had died (for tests, and for
        a fatal path): the other replicas reap this one after ``dead_after``."""
        self._stopped = True
        for task in [*self._tasks, *self._chains.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._chains.values(), return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        if self._own_pool:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5.0)
            if not self._pool._closed:   # pragma: no cover - a stuck close
                self._pool.terminate()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.replica_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _supervise(self, component: str, run: Callable[[], Awaitable[None]], *,
                   critical: bool = False) -> None:
        """Run a loop of the node under the supervisor (restarted if it dies), as one of the
        node's tasks (cancelled by ``stop``/``abort``)."""
        task = self.supervisor.start(component, run, critical=critical)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster_task_failed", task=task.get_name(),
                      error=repr(task.exception()))

    # ------------------------------------------------------------------ public API

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the LISTEN connection (None while reconnecting)."""
        conn = self._listener.conn
        return conn.get_server_pid() if conn is not None and self._listener.connected.is_set() \
            else None

    @property
    def listener_reconnects(self) -> int:
        """How many times the LISTEN connection was re-established."""
        return self._listener.reconnects

    def set_draining(self, draining: bool) -> None:
        """Mark this replica draining (published with the next heartbeat, sent at once)."""
        self.draining = bool(draining)
        self._beat_now.set()

    async def claim_call(self, call_id: str, carrier: str) -> bool:
        """This replica holds the call's media socket now (it takes over from any previous
        owner, and adopts that owner's unclaimed commands). Never raises on a database outage:
        returns False and retries with the heartbeats."""
        key = (call_id, carrier)
        self._deferred.pop(key, None)
        try:
            await self._write_claim(call_id, carrier)
        except ClusterUnavailable as exc:
            self._deferred[key] = True
            log.warning("cluster_claim_deferred", call_id=call_id, error=str(exc))
            return False
        return True

    async def release_call(self, call_id: str, carrier: str) -> bool:
        """The call's media socket is gone from this replica (only our own ownership is
        removed). Returns False, and retries later, if the database is unreachable."""
        key = (call_id, carrier)
        self._deferred.pop(key, None)
        try:
            await self._execute(Q.RELEASE_CALL, call_id, carrier, self.replica_id)
        except ClusterUnavailable as exc:
            self._deferred[key] = False
            log.warning("cluster_release_deferred", call_id=call_id, error=str(exc))
            return False
        return True

    async def owner_of(self, call_id: str, carrier: str) -> str | None:
        """The live replica holding the call, or None (no owner, or its owner is dead)."""
        rows = await self._fetch(Q.OWNER_OF, call_id, carrier, self.dead_after)
        return rows[0][0] if rows else None

    async def stream_seen(self, call_id: str, carrier: str) -> bool:
        """Whether some replica held a media stream of the call (in the last 6 hours)."""
        rows = await self._fetch(Q.STREAM_SEEN,
                                 Q.STREAM_SEEN_KEY.format(carrier=carrier, call_id=call_id))
        return bool(rows and rows[0][0])

    async def first_delivery(self, key: str) -> bool:
        """True if no replica has processed the webhook delivery ``key`` yet (and now this
        one has): a redelivery that lands on another replica is processed once."""
        rows = await self._fetch(Q.FIRST_DELIVERY, key)
        return bool(rows)

    async def submit(self, call_id: str, carrier: str, kind: str,
                     args: dict[str, Any] | None = None) -> int:
        """Queue a command for the call's live owner and notify it; returns the command id.

        Raises ``NoLiveOwner`` when no live replica holds the call, ``ClusterUnavailable``
        when the database is unreachable.
        """
        rows = await self._fetch(Q.SUBMIT, call_id, carrier, kind, json.dumps(args or {}),
                                 self.dead_after, self.replica_id)
        if not rows:
            raise NoLiveOwner(call_id, carrier)
        return int(rows[0]["id"])

    async def wait_result(self, command_id: int, timeout: float) -> dict[str, Any] | None:
        """The command's result once its owner has applied it, or None after ``timeout``
        seconds. Woken by the owner's notification; re-reads the row every ``poll_every``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                # Registered before the read, so a notification between the two is not lost.
                fut = self._waiters[command_id] = loop.create_future()
                found = await self._read_result(command_id)
                if found is not None:
                    return found
                left = deadline - loop.time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, min(left, self.poll_every))
        finally:
            self._waiters.pop(command_id, None)

    async def live_replicas(self) -> list[ReplicaInfo]:
        """Every replica whose heartbeat is fresh, by id."""
        rows = await self._fetch(Q.LIVE_REPLICAS, self.dead_after)
        return [ReplicaInfo(r["id"], r["started_at"], r["heartbeat_at"], r["draining"])
                for r in rows]

    # ------------------------------------------------------------------ database helpers

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            async with self._pool.acquire(timeout=10.0) as conn:
                return list(await conn.fetch(sql, *args))
        except (ClusterError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._fetch(sql, *args)

    async def _write_claim(self, call_id: str, carrier: str) -> None:
        try:
            async with self._pool.acquire(timeout=10.0) as conn, conn.transaction():
                await conn.execute(Q.CLAIM_CALL, call_id, carrier, self.replica_id)
                await conn.execute(Q.MARK_STREAM,
                                   Q.STREAM_SEEN_KEY.format(carrier=carrier, call_id=call_id))
                adopted = await conn.fetch(Q.ADOPT_COMMANDS, call_id, carrier,
                                           self.replica_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _unavailable(exc) from exc
        if adopted:
            self._want(r[0] for r in adopted)

    async def _read_result(self, command_id: int) -> dict[str, Any] | None:
        try:
            rows = await self._fetch(Q.RESULT, command_id)
        except ClusterUnavailable:
            return None   # keep waiting: the store may come back before the timeout
        return json.loads(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ listening

    async def _listen_connect(self) -> Any:
        import asyncpg
        if self._dsn is not None:
            return await asyncpg.connect(
                self._dsn, timeout=10.0,
                server_settings={"application_name": f"patterd-listen/{self.replica_id}"[:63]})
        return await self._pool.acquire(timeout=10.0)

    async def _listen_release(self, conn: Any) -> None:
        if self._dsn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception:
                conn.terminate()
        else:
            await asyncio.wait_for(self._pool.release(conn), 5.0)

    # ------------------------------------------------------------------ heartbeat and reaper

    async def _heartbeat_loop(self) -> None:
        last_clean = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.heartbeat_every)
            self._beat_now.clear()
            try:
                last_clean = await self._beat(last_clean)
            except ClusterUnavailable as exc:
                self._healthy_since = None
                log.warning("cluster_heartbeat_failed", error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this round only; the next one beats
                self.supervisor.report("cluster_heartbeat", exc)

    async def _beat(self, last_clean: float) -> float:
        """One heartbeat round (and the reaper and the cleaning when due); returns when the
        tables were last cleaned."""
        rows = await self._fetch(Q.HEARTBEAT, self.replica_id, self.draining, self.dead_after)
        if not rows:
            # Declared dead (a long stall) and reaped: our calls were handed over.
            log.error("cluster_replica_was_reaped", replica=self.replica_id)
            await self._execute(Q.REGISTER, self.replica_id, self.draining)
            self._healthy_since = time.monotonic()
            return last_clean
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()
        await self._flush_deferred()
        healthy_for = time.monotonic() - self._healthy_since
        if rows[0]["dead"] and healthy_for >= self.dead_after:
            await self._reap()
        if time.monotonic() - last_clean >= CLEAN_EVERY:
            last_clean = time.monotonic()
            await self._execute(Q.CLEAN_DONE, self.keep_done)
            await self._execute(Q.CLEAN_DELIVERIES, DELIVERY_TTL)
            await self._execute(HANDOFFS_CLEAN, HANDOFFS_KEEP)
        return last_clean

    async def _flush_deferred(self) -> None:
        for (call_id, carrier), claim in list(self._deferred.items()):
            if claim:
                await self._write_claim(call_id, carrier)
            else:
                await self._execute(Q.RELEASE_CALL, call_id, carrier, self.replica_id)
            if self._deferred.get((call_id, carrier)) is claim:
                del self._deferred[(call_id, carrier)]

    async def _reap(self) -> None:
        """Take over the calls of replicas that stopped heartbeating; end each once."""
        taken = await take_over_dead(self._pool, self.replica_id, self.dead_after)
        for dead_id, call_id, carrier in taken:   # after commit: the calls are ours now
            task = self._spawn(self._orphan(dead_id, call_id, carrier), "cluster-orphan")
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def _orphan(self, dead_id: str, call_id: str, carrier: str) -> None:
        try:
            await self._on_orphan(call_id, carrier)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - this call only
            log.error("cluster_orphan_failed", call_id=call_id, replica=dead_id,
                      error=repr(exc))
            self.supervisor.report("cluster_reaper", exc, call_id=call_id, replica=dead_id)
        await self.release_call(call_id, carrier)
