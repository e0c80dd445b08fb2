"""The PostgreSQL store: ``asyncpg`` with a small connection pool, on the event loop.

Connections lost to a restart, a failover or ``pg_terminate_backend`` are dropped by the pool
and replaced on the next call; every such failure surfaces as ``StoreUnavailable`` so the
writer retries. Migrations take a transaction-scoped advisory lock, so replicas starting
together migrate once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .base import Store, StoreDataError, StoreError, StoreUnavailable
from .migrations import SCHEMA_VERSION_TABLE, pending
from .queries import STALE_AFTER, Queries
from .merge import merge_parts
from .records import detail_of, dumps, loads, page, to_row

Q = Queries("postgresql")
MIGRATION_LOCK = 0x7061_7474_6572_64   # "patterd": one advisory lock id for every replica
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
_DATA_CLASSES = ("22", "23")   # data exception, integrity constraint violation


def redact(url: str) -> str:
    """``postgresql://user:***@host:port/db``: the URL without its password or query."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}{':***' if parts.password else ''}@{netloc}"
        return f"{parts.scheme}://{netloc}{parts.path}"
    except ValueError:
        return "postgresql://…"


def classify(exc: BaseException, where: str) -> StoreError:
    """Our error for an ``asyncpg`` (or socket) one."""
    import asyncpg

    if isinstance(exc, StoreError):
        return exc
    state = getattr(exc, "sqlstate", "") or ""
    if isinstance(exc, asyncpg.PostgresError) and state[:2] in _DATA_CLASSES:
        return StoreDataError(f"postgresql: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return StoreDataError(f"postgresql: {exc}")   # an argument the driver cannot encode
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"store.url: PostgreSQL at {where}: {detail}")


PART_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
PART_UPSERT = ("INSERT INTO call_parts (call_id, writer, first_at, updated_at, data) "
               "VALUES ($1, $2, $3, $3, $4) ON CONFLICT (call_id, writer) DO UPDATE "
               "SET updated_at = excluded.updated_at, data = excluded.data")
PARTS = "SELECT data FROM call_parts WHERE call_id = $1 ORDER BY first_at, writer"
PARTS_ORPHANED = ("DELETE FROM call_parts p WHERE NOT EXISTS "
                  "(SELECT 1 FROM calls c WHERE c.call_id = p.call_id)")


class PostgresStore(Store):
    """Call records in a PostgreSQL database shared by every replica."""

    kind = "postgresql"

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self.where = where
        self._closed = False
        # this process among the replicas writing the same calls
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 4) -> PostgresStore:
        """Connect (failing clearly if the server is unreachable or refuses us) and migrate."""
        try:
            import asyncpg
        except ImportError as exc:   # pragma: no cover - asyncpg is a dependency
            raise StoreError("store.url: PostgreSQL needs the asyncpg package "
                             "(pip install asyncpg)") from exc
        where = redact(url)
        try:
            pool = await asyncpg.create_pool(
                dsn=url, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, max_inactive_connection_lifetime=300.0,
                server_settings={"application_name": "patterd"})
        except (OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store.url: cannot connect to PostgreSQL at {where}: "
                                   f"{exc or type(exc).__name__}") from exc
        except ValueError as exc:   # a DSN asyncpg cannot parse
            raise StoreError(f"store.url: {exc}") from exc
        store = cls(pool, where)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(SCHEMA_VERSION_TABLE["postgresql"])
                current = await conn.fetchval(Q.current_version)
                for migration in pending(current):
                    for statement in migration.statements("postgresql"):
                        await conn.execute(statement)
                    await conn.execute(Q.record_version, migration.version, time.time())
        except StoreError:
            raise
        except Exception as exc:
            raise classify(exc, self.where) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._check_open()
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                return list(await conn.fetch(sql, *args))
        except Exception as exc:
            raise classify(exc, self.where) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("store: closed")

    async def upsert_calls(self, records: Sequence[dict[str, Any]]) -> None:
        """Store this process's snapshots of the calls in one transaction.

        Several replicas may each hold part of a call: each one's latest snapshot is kept in
        ``call_parts`` and the ``calls`` row becomes their merge (:mod:`.merge`), so one
        replica's write never erases what another recorded. Writes of one call are
        serialised with an advisory lock on its id."""
        rows = [(r, to_row(r)) for r in records]
        if not rows:
            return
        self._check_open()
        now = time.time()
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                for record, row in rows:
                    call_id = row[0]
                    await conn.execute(PART_LOCK, call_id)
                    await conn.execute(PART_UPSERT, call_id, self.writer, now, dumps(record))
                    parts = await conn.fetch(PARTS, call_id)
                    if len(parts) > 1:
                        row = to_row(merge_parts([loads(p["data"], {}) for p in parts]))
                    await conn.execute(Q.upsert, *row)
        except Exception as exc:
            raise classify(exc, self.where) from exc

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The full record, or None."""
        rows = await self._fetch(Q.get, call_id)
        return detail_of(rows[0]) if rows else None

    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of summaries, newest first (see ``Store.list_calls``)."""
        sql, params = Q.page_args(limit, status, cursor)
        return page(await self._fetch(sql, *params), limit)

    async def sweep(self, older_than_seconds: float, stale_after: float = STALE_AFTER) -> int:
        """Delete calls ended (or abandoned) more than ``older_than_seconds`` ago."""
        self._check_open()
        older_than = float(older_than_seconds)
        now = time.time()
        cutoff, stale_cutoff = Q.cutoffs(now, older_than, float(stale_after))
        total = 0
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                for sql, before in ((Q.sweep_ended, cutoff), (Q.sweep_stale, stale_cutoff)):
                    while True:   # short transactions, one chunk each
                        status = await conn.execute(sql, before)
                        deleted = int(status.rsplit(" ", 1)[-1])
                        total += deleted
                        if deleted <= 0:
                            break
                await conn.execute(PARTS_ORPHANED)
                async with conn.transaction():
                    await conn.execute(Q.trim_sweeps, cutoff)
                    await conn.execute(Q.log_sweep, now, older_than, cutoff, total)
        except Exception as exc:
            raise classify(exc, self.where) from exc
        return total

    async def schema_version(self) -> int:
        """The highest migration applied."""
        rows = await self._fetch(Q.current_version)
        return int(rows[0][0])

    async def close(self) -> None:
        """Close the pool (waiting briefly for borrowed connections); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5.0)
        except (TimeoutError, OSError):
            self._pool.terminate()
