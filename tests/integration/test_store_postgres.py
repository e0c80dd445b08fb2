"""The PostgreSQL store against a real server: the shared behaviour, replicas, outages.

The server is ``PATTERD_TEST_PG_URL`` (a superuser URL; default: this machine's
``postgresql://postgres@127.0.0.1:5432/test``). When nothing answers there, a throwaway server
is started from the installed binaries instead: never a skip. Each run works in its own
database ``patterd_test_<random>`` (with an ICU en-US default collation, so that the call-id
order cannot lean on the server's locale), each test in its own schema; both are dropped
afterwards. The outage test always runs its own throwaway server, which it stops and restarts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from patterd.store import SCHEMA_VERSION, StoreUnavailable, StoreWriter, open_store
from tests.unit.store.conformance import BASE, CHECKS, make_call, record_of
from tests.unit.store.pg_server import ThrowawayPostgres, free_port

DEFAULT_URLS = ("postgresql://postgres@127.0.0.1:5432/test",
                "postgresql://root@127.0.0.1:5432/test")


def with_db(url: str, database: str, query: str = "") -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", query, ""))


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _admin(url: str, *sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    """A superuser URL of a running server: the configured one, or a throwaway one."""
    given = os.environ.get("PATTERD_TEST_PG_URL")
    for url in ([given] if given else DEFAULT_URLS):
        if asyncio.run(_reachable(url)):
            yield url
            return
    server = ThrowawayPostgres()   # nothing answers: start our own (fails loudly if it can't)
    try:
        server.start()
        sys.stderr.write(f"no PostgreSQL at {given or DEFAULT_URLS[0]}: started a throwaway "
                         f"server from {server.bindir} on port {server.port}\n")
        yield server.admin_url
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def pg_database(pg_server: str) -> Iterator[str]:
    """A database of this run's own, dropped at the end."""
    name = f"patterd_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_server, f"CREATE DATABASE {name} LOCALE_PROVIDER icu "
                                  "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"))
    try:
        yield with_db(pg_server, name)
    finally:
        asyncio.run(_admin(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def pg_url(pg_database: str) -> AsyncIterator[str]:
    """A store URL whose tables land in a fresh schema of their own."""
    schema = f"t_{secrets.token_hex(4)}"
    await _admin(pg_database, f"CREATE SCHEMA {schema}")
    try:
        yield with_db(pg_database, urlsplit(pg_database).path.lstrip("/"),
                      f"search_path={schema}")
    finally:
        await _admin(pg_database, f"DROP SCHEMA {schema} CASCADE")


def raw_for(url: str) -> Any:
    async def raw(sql: str) -> list[tuple[Any, ...]]:
        schema = urlsplit(url).query.partition("=")[2]
        conn = await asyncpg.connect(url.partition("?")[0],
                                     server_settings={"search_path": schema})
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    return raw


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_behaviour(check: Any, pg_url: str) -> None:
    await check(pg_url, raw_for(pg_url))


async def test_replicas_share_one_history_and_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(open_store(pg_url.replace("postgresql://", scheme))
                                    for scheme in ("postgresql://", "postgres://",
                                                   "postgresql://")))
    try:
        assert {s.kind for s in stores} == {"postgresql"}
        await stores[0].upsert_call(record_of(make_call("CAa", BASE)))
        await stores[1].upsert_call(record_of(make_call("CAb", BASE + 1)))
        calls, _ = await stores[2].list_calls(10)
        assert [c["call_id"] for c in calls] == ["CAb", "CAa"]
        rows = await raw_for(pg_url)("SELECT version FROM schema_version ORDER BY version")
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        for store in stores:
            await store.close()


async def test_replicas_writing_parts_of_one_call_lose_nothing(pg_url: str) -> None:
    """The webhook replica knows the status history, the media replica the transcript and
    the transfer, a third got the carrier's price: the stored call has all of it, whichever
    wrote last, and each one's later snapshots replace only its own part."""
    webhook, media, pricing = await asyncio.gather(*(open_store(pg_url) for _ in range(3)))
    try:
        base = {"call_id": "CAmerge", "carrier": "twilio", "direction": "inbound",
                "created_at": BASE, "status": "in-progress", "outcome": None}
        await media.upsert_call({**base, "from": "+15550001111", "to": "+15550002222",
                                 "updated_at": BASE + 5, "status": "in-progress",
                                 "transcript": [{"role": "agent", "text": "Hello", "at": BASE + 1},
                                                {"role": "caller", "text": "", "dtmf": "1",
                                                 "at": BASE + 3}],
                                 "events": [{"type": "transfer", "to": "+1555", "at": BASE + 4}],
                                 "turns": [{"response": 0.4}], "outcome": "transferred",
                                 "ended_at": BASE + 6, "status_history": [],
                                 "cost": {"carrier": 0.0085, "stt": 0.001, "llm": 0.0,
                                          "tts": 0.0, "total": 0.0095, "currency": "USD",
                                          "carrier_source": "estimate",
                                          "billed_seconds": 60.0}})
        await webhook.upsert_call({**base, "updated_at": BASE + 7, "status": "completed",
                                   "outcome": "completed", "ended_at": BASE + 7,
                                   "status_history": [
                                       {"status": "ringing", "sequence": 0, "at": BASE},
                                       {"status": "completed", "sequence": 3, "at": BASE + 7}]})
        await pricing.upsert_call({**base, "updated_at": BASE + 60, "status": "completed",
                                   "cost": {"carrier": 0.017, "stt": 0.0, "llm": 0.0,
                                            "tts": 0.0, "total": 0.017, "currency": "USD",
                                            "carrier_source": "carrier", "billed_seconds": 0}})
        call = await webhook.get_call("CAmerge")
        assert call is not None
        assert call["status"] == "completed" and call["outcome"] == "transferred"
        assert call["from"] == "+15550001111" and call["to"] == "+15550002222"
        assert [h["status"] for h in call["status_history"]] == ["ringing", "completed"]
        assert [t["text"] for t in call["transcript"]] == ["Hello", ""]
        assert call["dtmf"] == "1" and call["events"][0]["type"] == "transfer"
        assert call["turns"] == [{"response": 0.4}]
        assert call["cost"]["carrier"] == 0.017 and call["cost"]["stt"] == 0.001
        assert call["cost"]["carrier_source"] == "carrier"
        assert call["ended_at"] == BASE + 7
        # A later snapshot from the media replica replaces its own part only.
        await media.upsert_call({**base, "updated_at": BASE + 61, "status": "in-progress",
                                 "transcript": [{"role": "agent", "text": "Hello",
                                                 "at": BASE + 1}], "outcome": "transferred"})
        call = await pricing.get_call("CAmerge")
        assert [h["status"] for h in call["status_history"]] == ["ringing", "completed"]
        assert call["status"] == "completed" and call["cost"]["carrier"] == 0.017
        # Retention removes a call's parts with it.
        await webhook.sweep(0)
        assert await webhook.get_call("CAmerge") is None
        assert await raw_for(pg_url)("SELECT count(*) FROM call_parts") == [(0,)]
    finally:
        for store in (webhook, media, pricing):
            await store.close()


async def test_unreachable_server_at_open_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailable, match=rf"cannot connect to PostgreSQL at "
                       rf"postgresql://patterd:\*\*\*@127.0.0.1:{port}/calls"):
        await open_store(f"postgresql://patterd:s3cret@127.0.0.1:{port}/calls")


async def test_terminated_connections_are_replaced(pg_url: str, pg_database: str) -> None:
    async with await open_store(pg_url) as store:
        writer = StoreWriter(store, retry_base=0.05, retry_max=0.2)
        rec = make_call("CAterm", BASE)
        writer.submit(record_of(rec))
        assert await writer.flush(10)
        database = urlsplit(pg_database).path.lstrip("/")
        admin = await asyncpg.connect(pg_database)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = 'patterd'", database)
        finally:
            await admin.close()
        assert killed >= 1
        rec.status = "completed"
        rec.ended_at = BASE + 30
        writer.submit(record_of(rec))
        assert await writer.flush(10)
        assert (await store.get_call("CAterm"))["status"] == "completed"
        await writer.close()


async def test_outage_writes_are_kept_and_land_when_the_server_returns() -> None:
    server = await asyncio.to_thread(ThrowawayPostgres)
    try:
        await asyncio.to_thread(server.start)
        store = await open_store(server.admin_url)
        writer = StoreWriter(store, retry_base=0.05, retry_max=0.4)
        recs = [make_call(f"CAo{i}", BASE + i) for i in range(20)]
        for rec in recs[:10]:
            writer.submit(record_of(rec))
        assert await writer.flush(10) and writer.written == 10

        await asyncio.to_thread(server.stop)               # the database goes away
        with capture_logs() as logs:
            started = time.perf_counter()
            for step in range(50):                         # updates to old calls, new calls
                for rec in recs:
                    rec.status = f"s{step}"
                    writer.submit(record_of(rec))
            submit_seconds = time.perf_counter() - started
            deadline = time.monotonic() + 20
            while writer.failed_attempts < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert writer.failed_attempts >= 3 and writer.pending == 20
            with pytest.raises(StoreUnavailable):
                await store.get_call("CAo0")
            await asyncio.sleep(0.5)                       # down for a while
            await asyncio.to_thread(server.start)          # and back
            assert await writer.flush(30), writer.stats()
        assert submit_seconds < 0.5
        assert writer.written == 30 and writer.dropped == 0 and writer.pending == 0
        for rec in recs:
            assert (await store.get_call(rec.call_id))["status"] == "s49"
        events = [e["event"] for e in logs]
        assert "store_write_failed" in events and events.count("store_recovered") == 1
        await writer.close()
        await store.close()
    finally:
        await asyncio.to_thread(server.destroy)


async def test_a_periodic_job_runs_on_one_replica_at_a_time(pg_url: str) -> None:
    """``exclusive(name)``: one store (replica) at a time gets True; the lock is released
    when the block ends, also when it fails, and other job names are independent."""
    a, b = await open_store(pg_url), await open_store(pg_url)
    try:
        async with a.exclusive("price-sweep") as mine:
            assert mine
            async with b.exclusive("price-sweep") as theirs:
                assert not theirs
            async with b.exclusive("another-job") as other:
                assert other
        async with b.exclusive("price-sweep") as theirs:
            assert theirs
        with pytest.raises(RuntimeError):
            async with b.exclusive("price-sweep") as theirs:
                raise RuntimeError("the job failed")
        async with a.exclusive("price-sweep") as mine:
            assert mine
    finally:
        await a.close()
        await b.close()
