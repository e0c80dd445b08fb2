"""The PostgreSQL store: ``asyncpg`` with a small connection pool, on the event loop.

Connections lost to a restart, a failover or ``pg_terminate_backend`` are dropped by the pool
and replaced on the next call; every such failure surfaces as ``StoreUnavailable`` so the
writer retries. Migrations take a transaction-scoped advisory lock, so replicas starting
together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from .base import Store, StoreDataError, StoreError, StoreUnavailable
from .migrations import SCHEMA_VERSION_TABLE, pending
from .queries import STALE_AFTER, Queries
from .merge import LEGACY_WRITER, merge_parts, writer_name
from .records import CallFilter, detail_of, dumps, loads, page, stats_of, to_row

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


def from_database(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the database or the way to it (the driver, the socket, a
    timeout) rather than from our own code."""
    import asyncpg

    return isinstance(exc, (StoreError, OSError, TimeoutError, asyncpg.PostgresError,
                            asyncpg.InterfaceError, asyncpg.InternalClientError)) \
        or type(exc).__module__.startswith("asyncpg")


PART_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
# A key that expired may be claimed again; expired rows are deleted now and then.
FIRST_SEEN = """INSERT INTO seen_keys (key, expires_at) VALUES ($1, $2::float8 + $3::float8)
ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at
WHERE seen_keys.expires_at < $2::float8 RETURNING 1"""
FORGET_SEEN = "DELETE FROM seen_keys WHERE expires_at < $1"
JOB_LOCK = "SELECT pg_try_advisory_lock(hashtext('patterd-job:' || $1))"
JOB_UNLOCK = "SELECT pg_advisory_unlock(hashtext('patterd-job:' || $1))"


class PostgresStore(Store):
    """Call records in a PostgreSQL database shared by every replica."""

    kind = "postgresql"

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self.where = where
        self._closed = False
        self._seen_checks = 0
        self.writer = writer_name()   # this process among the replicas writing the calls

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

    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        """Store this process's snapshots of the calls in one transaction, merged with the
        other replicas' (see ``Store``). Writes of one call are serialised with an advisory
        lock on its id."""
        rows = [(r, to_row(r)) for r in records]
        if not rows:
            return
        self._check_open()
        now = time.time()
        name = writer or self.writer
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                for record, row in rows:
                    call_id = row[0]
                    await conn.execute(PART_LOCK, call_id)
                    if await conn.fetchval(Q.part_count, call_id) == 0:
                        old = await conn.fetchrow(Q.get, call_id)
                        if old is not None:   # a row from before parts: it becomes one
                            await conn.execute(Q.part_upsert, call_id, LEGACY_WRITER, 0.0,
                                               now, dumps(detail_of(old)))
                    await conn.execute(Q.part_upsert, call_id, name, now, now, dumps(record))
                    parts = await conn.fetch(Q.parts, call_id)
                    if len(parts) > 1:
                        row = to_row(merge_parts([loads(p["data"], {}) for p in parts]))
                    await conn.execute(Q.upsert, *row)
        except Exception as exc:
            if not from_database(exc):
                raise   # a bug of ours (say in merging), not an outage: the writer contains it
            raise classify(exc, self.where) from exc

    async def first_seen(self, key: str, ttl: float) -> bool:
        """See ``Store.first_seen``."""
        now = time.time()
        rows = await self._fetch(FIRST_SEEN, key, now, float(ttl))
        self._seen_checks += 1
        if self._seen_checks % 1000 == 0:
            await self._fetch(FORGET_SEEN, now)
        return bool(rows)

    async def unpriced_calls(self, carrier: str, ended_from: float, ended_before: float,
                             limit: int = 100) -> list[str]:
        """See ``Store.unpriced_calls``."""
        rows = await self._fetch(Q.unpriced, carrier, float(ended_from), float(ended_before),
                                 int(limit))
        return [r[0] for r in rows]

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """True for one replica at a time: a session advisory lock on ``name``, held on one
        pooled connection for the block (released even if the block fails)."""
        self._check_open()
        try:
            conn = await self._pool.acquire(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise classify(exc, self.where) from exc
        try:
            mine = bool(await conn.fetchval(JOB_LOCK, name))
        except Exception as exc:
            await self._pool.release(conn)
            raise classify(exc, self.where) from exc
        try:
            yield mine
        finally:
            try:
                if mine:
                    await conn.fetchval(JOB_UNLOCK, name)
            except Exception:  # noqa: BLE001 - a lost connection drops the lock anyway
                pass
            await self._pool.release(conn)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The full record, or None."""
        rows = await self._fetch(Q.get, call_id)
        return detail_of(rows[0]) if rows else None

    async def call_parts(self, call_id: str) -> list[tuple[str, dict[str, Any]]]:
        """See ``Store.call_parts``."""
        rows = await self._fetch(Q.parts_of, call_id)
        return [(r["writer"], loads(r["data"], {})) for r in rows]

    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None, *, where: CallFilter | None = None,
                         full: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """A page of summaries, newest first (see ``Store.list_calls``)."""
        sql, params = Q.page_args(limit, status, cursor, where, full=full)
        return page(await self._fetch(sql, *params), limit, full=full)

    async def call_stats(self, where: CallFilter, limit: int) -> list[dict[str, Any]]:
        """See ``Store.call_stats``."""
        sql, params = Q.stats_args(where, limit)
        return [stats_of(r) for r in await self._fetch(sql, *params)]

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
                await conn.execute(Q.parts_orphaned)
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
