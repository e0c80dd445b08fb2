"""The SQLite store: the shared behaviour, URLs, the worker thread, read-only and locked files."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from patterd.store import (DEFAULT_URL, StoreError, StoreUnavailable, StoreWriter, open_store,
                           sqlite_path)
from patterd.store import sqlite as sqlite_mod
from patterd.store.migrations import LATEST
from patterd.store.sqlite import SqliteStore
from tests.unit.store.conformance import BASE, CHECKS, make_call, record_of


def raw_for(path: Path) -> Callable[[str], Any]:
    """Run SQL on the file directly (off the loop, like the store)."""
    async def raw(sql: str) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with sqlite3.connect(path, isolation_level=None) as conn:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
        return await asyncio.to_thread(run)
    return raw


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_behaviour(check: Any, tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    await check(f"sqlite:///{path}", raw_for(path))


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path(DEFAULT_URL) == "./patterd.db"
    assert sqlite_path("sqlite:///data/calls.db") == "data/calls.db"
    assert sqlite_path("sqlite:////var/lib/patterd/calls.db") == "/var/lib/patterd/calls.db"
    assert sqlite_path("sqlite:///my%20calls.db") == "my calls.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    for bad, why in [("sqlite://calls.db", "three slashes"), ("sqlite:///", "needs a file"),
                     ("sqlite:///x.db?mode=ro", "no query"), (f"sqlite:///{tmp_path}", "folder")]:
        with pytest.raises(StoreError, match=why):
            sqlite_path(bad)


async def test_default_url_creates_the_file_and_folders_relative_to_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with await open_store() as store:
        assert store.kind == "sqlite"
        await store.upsert_call(record_of(make_call("CA1", BASE)))
    assert (tmp_path / "patterd.db").is_file()
    async with await open_store("sqlite:///nested/deeper/calls.db") as store:
        assert await store.schema_version() == LATEST
    assert (tmp_path / "nested/deeper/calls.db").is_file()
    async with await open_store(f"sqlite:///{tmp_path}/abs.db") as store:   # four slashes
        assert store.path == f"{tmp_path}/abs.db"


async def test_unknown_scheme_is_a_clear_error() -> None:
    for url in ("mysql://root@localhost/db", "calls.db", ""):
        with pytest.raises(StoreError, match=r"store\.url: expected sqlite:///PATH or postgres"):
            await open_store(url)


async def test_memory_store_and_close_is_idempotent() -> None:
    store = await open_store("sqlite:///:memory:")
    await store.upsert_call(record_of(make_call("CAm", BASE)))
    assert (await store.get_call("CAm")) is not None
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get_call("CAm")


async def test_database_work_runs_on_the_worker_thread_not_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = SqliteStore._upsert

    def spy(conn: sqlite3.Connection, writer: str, rows: list[tuple[Any, ...]]) -> None:
        seen.append(threading.current_thread().name)
        original(conn, writer, rows)

    monkeypatch.setattr(SqliteStore, "_upsert", staticmethod(spy))
    async with await open_store(f"sqlite:///{tmp_path}/t.db") as store:
        await store.upsert_call(record_of(make_call("CAt", BASE)))
        await store.upsert_call(record_of(make_call("CAu", BASE)))
    assert len(seen) == 2 and len(set(seen)) == 1
    assert seen[0].startswith("patterd-sqlite") and seen[0] != threading.current_thread().name


def _open_elsewhere(url: str, as_nobody: bool) -> str:
    """Open the store in a forked child (as ``nobody`` when we are root: root may write any
    file); the child's outcome as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        try:
            os.close(r)
            if as_nobody:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                asyncio.run(open_store(url))
                msg = "opened"
            except BaseException as exc:  # reported to the parent
                msg = f"{type(exc).__name__}: {exc}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        out = os.read(r, 65536).decode() if ready else "timed out"
    finally:
        os.close(r)
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    return out


async def test_read_only_file_is_a_clear_error_at_start() -> None:
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="patterd-ro-"))   # nobody may reach it (not tmp_path)
    migrated = folder / "migrated.db"
    async with await open_store(f"sqlite:///{migrated}") as store:
        await store.upsert_call(record_of(make_call("CAro", BASE)))
    empty = folder / "empty.db"
    sqlite3.connect(empty).close()
    for path in (migrated, empty):
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        for path in (migrated, empty):
            out = await asyncio.to_thread(_open_elsewhere, f"sqlite:///{path}", root)
            assert out == (f"StoreUnavailable: store.url: the SQLite database {path} is "
                           "read-only (check its and its folder's permissions)"), out
        out = await asyncio.to_thread(_open_elsewhere, f"sqlite:///{folder}/new.db", root)
        assert out.startswith("StoreUnavailable: store.url: cannot open the SQLite database")
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


async def test_locked_database_is_retried_by_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "BUSY_TIMEOUT", 0.05)
    path = tmp_path / "locked.db"
    async with await open_store(f"sqlite:///{path}") as store:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        writer = StoreWriter(store, retry_base=0.02, retry_max=0.1)
        writer.submit(record_of(make_call("CAlock", BASE)))
        for _ in range(200):
            if writer.failed_attempts >= 2:
                break
            await asyncio.sleep(0.02)
        assert writer.failed_attempts >= 2 and writer.pending == 1
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.upsert_call(record_of(make_call("CAdirect", BASE)))
        other.execute("ROLLBACK")
        other.close()
        assert await writer.flush(5)
        assert (await store.get_call("CAlock")) is not None
        assert writer.written == 1
        await writer.close()
