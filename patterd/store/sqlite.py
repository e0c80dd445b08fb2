"""The SQLite store: the standard library's ``sqlite3`` on one dedicated worker thread.

Every database call runs on that thread, never on the event loop; records are encoded on the
loop (so a snapshot is read where it is consistent) and handed over as plain tuples. The
file is opened in WAL mode with a busy timeout. A connection that failed with anything but
"busy/locked" is reopened on the next call, so a file made writable again is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import Store, StoreDataError, StoreError, StoreUnavailable
from .migrations import SCHEMA_VERSION_TABLE, pending
from .queries import STALE_AFTER, Queries
from .merge import LEGACY_WRITER, merge_parts, writer_name
from .processes import this_process
from .records import CallFilter, detail_of, dumps, loads, page, stats_of, to_row

T = TypeVar("T")
Q = Queries("sqlite")
BUSY_TIMEOUT = 5.0
_TRANSIENT_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED")


def _name(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", "") or ""


def classify(exc: sqlite3.Error, path: str) -> StoreError:
    """Our error for a ``sqlite3`` one: data errors are the record's; the rest are transient."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return StoreDataError(f"sqlite: {exc}")
    name = _name(exc)
    if name.startswith("SQLITE_READONLY"):
        msg = f"the SQLite database {path} is read-only (check its and its folder's permissions)"
    elif name.startswith("SQLITE_CANTOPEN"):
        msg = (f"cannot open the SQLite database {path} (does its folder exist, and may "
               "patterd write there?)")
    elif name.startswith("SQLITE_NOTADB"):
        msg = f"{path} is not a SQLite database"
    elif name.startswith(_TRANSIENT_NAMES):
        msg = f"the SQLite database {path} is locked by another connection ({exc})"
    else:
        msg = f"SQLite database {path}: {exc}"
    return StoreUnavailable(f"store.url: {msg}")


class SqliteStore(Store):
    """Call records in one SQLite file (or ``:memory:``)."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patterd-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.writer = writer_name()   # this process, among the processes that write the file

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Open (creating the file and its folder if need be), migrate, check it's writable."""
        store = cls(path)
        try:
            await store._run(store._prepare)
            me = this_process()
            now = time.time()
            await store._run(store._write, Q.process_register,
                             (store.writer, me.host, me.pid, me.start, now, now))
        except BaseException:
            await store.close()
            raise
        return store

    # -- the worker thread ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                try:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"store.url: cannot create the folder for {self.path}: "
                                     f"{exc.strerror or exc}") from exc
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                if self.path != ":memory:":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError as exc:
                if not _name(exc).startswith("SQLITE_READONLY"):
                    conn.close()
                    raise
            self._conn = conn
        return self._conn

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on this (the worker) thread, mapping errors."""
        try:
            return fn(self._connection(), *args)
        except sqlite3.Error as exc:
            if self._conn is not None:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.rollback()
                if self.path != ":memory:" and not _name(exc).startswith(_TRANSIENT_NAMES):
                    self._drop_connection()
            raise classify(exc, self.path) from exc

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("store: closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, *args)

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(SCHEMA_VERSION_TABLE["sqlite"])
            current = conn.execute(Q.current_version).fetchone()[0]
            for migration in pending(current):
                for statement in migration.statements("sqlite"):
                    conn.execute(statement)
                conn.execute(Q.record_version, (migration.version, time.time()))
            # A write that changes nothing: a read-only file fails here, at start, not later.
            conn.execute("UPDATE schema_version SET applied_at = applied_at "
                         "WHERE version = (SELECT MAX(version) FROM schema_version)")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    @staticmethod
    def _upsert(conn: sqlite3.Connection, writer: str,
                rows: list[tuple[str, str, tuple[Any, ...]]]) -> None:
        """Each (call id, snapshot JSON, row): the writer's part, then the merged row."""
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for call_id, data, row in rows:
                if conn.execute(Q.part_count, (call_id,)).fetchone()[0] == 0:
                    old = conn.execute(Q.get, (call_id,)).fetchone()
                    if old is not None:   # a row from before parts: it becomes one
                        conn.execute(Q.part_upsert, (call_id, LEGACY_WRITER, 0.0, now,
                                                     dumps(detail_of(old))))
                conn.execute(Q.part_upsert, (call_id, writer, now, now, data))
                parts = conn.execute(Q.parts, (call_id,)).fetchall()
                if len(parts) > 1:
                    row = to_row(merge_parts([loads(p["data"], {}) for p in parts]))
                conn.execute(Q.upsert, row)
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    @staticmethod
    def _write(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
        return conn.execute(sql, params).rowcount

    @staticmethod
    def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]
              ) -> list[sqlite3.Row]:
        return conn.execute(sql, params).fetchall()

    @staticmethod
    def _first_seen(conn: sqlite3.Connection, key: str, ttl: float) -> bool:
        now = time.time()
        conn.execute("DELETE FROM seen_keys WHERE expires_at < ?", (now,))
        cur = conn.execute("INSERT OR IGNORE INTO seen_keys (key, expires_at) VALUES (?, ?)",
                           (key, now + ttl))
        return cur.rowcount == 1

    @staticmethod
    def _unpriced(conn: sqlite3.Connection, params: tuple[Any, ...]) -> list[str]:
        return [r[0] for r in conn.execute(Q.unpriced, params).fetchall()]

    @staticmethod
    def _get(conn: sqlite3.Connection, call_id: str) -> dict[str, Any] | None:
        row = conn.execute(Q.get, (call_id,)).fetchone()
        return None if row is None else detail_of(row)

    @staticmethod
    def _page(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[sqlite3.Row]:
        return conn.execute(sql, params).fetchall()

    @staticmethod
    def _sweep(conn: sqlite3.Connection, older_than: float, stale_after: float) -> int:
        now = time.time()
        cutoff, stale_cutoff = Q.cutoffs(now, older_than, stale_after)
        total = 0
        for sql, before in ((Q.sweep_ended, cutoff), (Q.sweep_stale, stale_cutoff)):
            while True:   # short transactions: the writer never waits long behind a sweep
                deleted = conn.execute(sql, (before,)).rowcount
                total += deleted
                if deleted <= 0:
                    break
        if total:
            conn.execute(Q.parts_orphaned)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(Q.trim_sweeps, (cutoff,))
            conn.execute(Q.log_sweep, (now, older_than, cutoff, total))
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
        return total

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        return int(conn.execute(Q.current_version).fetchone()[0])

    # -- the Store interface ----------------------------------------------------------------

    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        """This process's snapshots, merged with other writers' (see ``Store``)."""
        # encoded here, on the loop: a consistent snapshot
        rows = [(row[0], dumps(r), row) for r in records for row in (to_row(r),)]
        if rows:
            await self._run(self._upsert, writer or self.writer, rows)

    async def first_seen(self, key: str, ttl: float) -> bool:
        """See ``Store.first_seen``."""
        return await self._run(self._first_seen, key, float(ttl))

    async def unpriced_calls(self, carrier: str, ended_from: float, ended_before: float,
                             limit: int = 100) -> list[str]:
        """See ``Store.unpriced_calls``."""
        return await self._run(self._unpriced, (carrier, float(ended_from),
                                                float(ended_before), int(limit)))

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The full record, or None."""
        return await self._run(self._get, call_id)

    async def call_parts(self, call_id: str) -> list[tuple[str, dict[str, Any]]]:
        """See ``Store.call_parts``."""
        rows = await self._run(self._rows, Q.parts_of, (call_id,))
        return [(r["writer"], loads(r["data"], {})) for r in rows]

    # -- the processes writing the file (crash recovery, patterd.call.recovery) -------------

    tracks_processes = True

    async def beat(self) -> None:
        """This process still runs (its row is written again if it went missing)."""
        if await self._run(self._write, Q.process_beat, (time.time(), self.writer)) == 0:
            me = this_process()
            now = time.time()
            await self._run(self._write, Q.process_register,
                            (self.writer, me.host, me.pid, me.start, now, now))

    async def processes(self) -> list[dict[str, Any]]:
        """Every registered writer: writer, host, pid, start_id, started_at, beat_at,
        reaped_by."""
        return [dict(r) for r in await self._run(self._rows, Q.processes, ())]

    async def unended_parts(self) -> list[tuple[str, str, float, dict[str, Any]]]:
        """``(call id, writer, written at, snapshot)`` of every part of every call not marked
        ended."""
        rows = await self._run(self._rows, Q.unended_parts, ())
        return [(r["call_id"], r["writer"], r["updated_at"], loads(r["data"], {}))
                for r in rows]

    async def claim_process(self, writer: str, previous: str | None) -> bool:
        """Take on recovering ``writer``'s calls if ``previous`` (None: nobody) still has
        them; True when this process has them now."""
        return await self._run(self._write, Q.process_claim,
                               (self.writer, writer, previous)) == 1

    async def forget_process(self, writer: str) -> None:
        """``writer`` is gone and holds nothing any more."""
        await self._run(self._write, Q.process_forget, (writer,))

    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None, *, where: CallFilter | None = None,
                         full: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """A page of summaries, newest first (see ``Store.list_calls``)."""
        sql, params = Q.page_args(limit, status, cursor, where, full=full)
        return page(await self._run(self._page, sql, params), limit, full=full)

    async def call_stats(self, where: CallFilter, limit: int) -> list[dict[str, Any]]:
        """See ``Store.call_stats``."""
        sql, params = Q.stats_args(where, limit)
        return [stats_of(r) for r in await self._run(self._page, sql, params)]

    async def sweep(self, older_than_seconds: float, stale_after: float = STALE_AFTER) -> int:
        """Delete calls ended (or abandoned) more than ``older_than_seconds`` ago."""
        return await self._run(self._sweep, float(older_than_seconds), float(stale_after))

    async def schema_version(self) -> int:
        """The highest migration applied."""
        return await self._run(self._version)

    async def close(self) -> None:
        """Close the connection on its thread and let the thread end; idempotent."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(StoreError):   # a clean exit: nothing of ours to recover
            await self._run(self._write, Q.process_forget, (self.writer,))
        try:
            await loop.run_in_executor(self._executor, self._drop_connection)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)
