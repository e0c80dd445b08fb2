"""``store.retention_days``: the daemon's periodic sweep, against SQLite and the real
PostgreSQL (isolated like tests/integration/test_store_postgres.py: a database of this module's
own, a schema per test; a throwaway server when none answers).

The sweep deletes the calls that *ended* more than the retention period ago, never a live one,
logs how many it deleted, and outlives a store outage (logged, tried again the next round).
The loop's intervals are shortened through ``patterd.store.retention``'s module constants.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml
from structlog.testing import capture_logs

from patterd.reload import Reloader
from patterd.store import open_store, retention
from patterd.store.queries import Queries
from patterd.store.records import to_row
from tests.conftest import config, gateway_of, twilio_raw
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.signing import PUBLIC_URL, call_sid, twilio_form
from tests.unit.store.conformance import make_call, record_of

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = 86_400.0


@pytest.fixture(autouse=True)
def fast_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "RETENTION_FIRST_DELAY", 0.05)
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/calls.db"
    return str(request.getfixturevalue("pg_url"))


async def until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def sweeps(logs: list[dict[str, Any]]) -> list[int]:
    return [e["deleted"] for e in logs if e["event"] == "store_retention_swept"]


async def seed(url: str, now: float) -> None:
    """Calls of every age, written the way the daemon writes them."""
    old = make_call("CAold-ended", now - 10 * DAY, "completed", "completed", ended=True)
    old.ended_at = now - 9 * DAY
    recent = make_call("CArecent-ended", now - 3 * DAY, "completed", "completed", ended=True)
    recent.ended_at = now - 2 * DAY
    # Started long ago and never ended, but updated a minute ago: live, never swept.
    long_live = make_call("CAlong-live", now - 10 * DAY)
    long_live.updated_at = now - 60
    # Never ended and untouched for a month: a crashed replica's leftover.
    abandoned = make_call("CAabandoned", now - 31 * DAY)
    abandoned.updated_at = now - 30 * DAY
    async with await open_store(url) as store:
        await store.upsert_calls([record_of(r) for r in (old, recent, long_live, abandoned)])


async def voice(client: Any, sid: str) -> None:
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/voice", {
        "CallSid": sid, "From": "+15551112222", "To": "+15550001234",
        "CallStatus": "ringing", "Direction": "inbound"})
    assert (await client.post("/webhooks/twilio/voice", data=body, headers=headers)).status == 200


async def completed(client: Any, sid: str) -> None:
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/status", {
        "CallSid": sid, "CallStatus": "completed", "SequenceNumber": "3",
        "CallDuration": "12", "Direction": "inbound"})
    assert (await client.post("/webhooks/twilio/status", data=body,
                              headers=headers)).status == 204


async def listed(client: Any) -> set[str]:
    resp = await client.get("/v1/calls?limit=100", headers=AUTH)
    assert resp.status == 200, await resp.text()
    return {c["call_id"] for c in (await resp.json())["calls"]}


async def test_sweep_deletes_calls_ended_before_the_period_never_live_ones(
        daemon, store_url: str) -> None:  # type: ignore[no-untyped-def]
    await seed(store_url, time.time())
    with capture_logs() as logs:
        client = await daemon(config(twilio_raw(admin={"token": TOKEN}, store={
            "url": store_url, "retention_days": 7})))
        await voice(client, call_sid(1))                 # a live call of this daemon
        await until(lambda: len(sweeps(logs)) >= 2)
    assert sweeps(logs)[0] == 2 and set(sweeps(logs)[1:]) == {0}
    started = next(e for e in logs if e["event"] == "store_retention_started")
    assert started["retention_days"] == 7
    assert await listed(client) == {"CArecent-ended", "CAlong-live", call_sid(1)}
    assert (await client.get("/v1/calls/CAold-ended", headers=AUTH)).status == 404


async def test_a_call_is_swept_once_it_ended_and_not_while_it_is_live(
        daemon, store_url: str) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(admin={"token": TOKEN}, store={
        "url": store_url, "retention_days": 0.5 / DAY})))        # half a second
    store = gateway_of(client).store_writer.store
    sid = call_sid(2)
    with capture_logs() as logs:
        await voice(client, sid)
        assert await gateway_of(client).store_writer.flush(5)
        seen = len(sweeps(logs))
        await until(lambda: len(sweeps(logs)) >= seen + 10)   # a second of sweeps
        assert await store.get_call(sid) is not None           # live: kept
        await completed(client, sid)
        assert await gateway_of(client).store_writer.flush(5)
        assert (await store.get_call(sid))["ended_at"] is not None
        await until(lambda: 1 in sweeps(logs)[seen + 10:])
    assert await store.get_call(sid) is None
    assert sid not in await listed(client)


async def test_unended_calls_are_kept_while_they_could_still_be_live(
        daemon, store_url: str) -> None:  # type: ignore[no-untyped-def]
    """With calls allowed to last two days, a call not updated for three may still be live
    (it is not swept as abandoned); with the default hour-long calls, it is."""
    now = time.time()
    quiet = make_call("CAquiet", now - 3 * DAY)
    quiet.updated_at = now - 3 * DAY
    async with await open_store(store_url) as store:
        await store.upsert_call(record_of(quiet))
    with capture_logs() as logs:
        client = await daemon(config(twilio_raw(
            admin={"token": TOKEN}, agent={"max_call_seconds": 2 * DAY},
            store={"url": store_url, "retention_days": 1})))
        await until(lambda: len(sweeps(logs)) >= 2)
    assert set(sweeps(logs)) == {0}
    assert await listed(client) == {"CAquiet"}
    store = gateway_of(client).store_writer.store
    assert await store.sweep(DAY, 4 * DAY) == 0
    assert await store.sweep(DAY) == 1


async def test_retention_is_off_by_default(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await seed(f"sqlite:///{tmp_path}/c.db", time.time())
    with capture_logs() as logs:
        client = await daemon(config(twilio_raw(admin={"token": TOKEN},
                                                store={"url": f"sqlite:///{tmp_path}/c.db"})))
        await asyncio.sleep(0.5)                     # five rounds of the shortened loop
    assert gateway_of(client).config.store.retention_days == 0
    assert sweeps(logs) == []
    assert await listed(client) == {"CAold-ended", "CArecent-ended", "CAlong-live",
                                    "CAabandoned"}


async def test_a_reload_turns_retention_on_and_changes_its_period(
        daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGHUP re-reads ``store.retention_days``: off → 7 days sweeps the old call, then
    1 day sweeps the recent one too, without a restart."""
    url = f"sqlite:///{tmp_path}/c.db"
    await seed(url, time.time())
    raw = twilio_raw(admin={"token": TOKEN}, store={"url": url})
    path = tmp_path / "patter.yaml"
    with capture_logs() as logs:
        client = await daemon(config(raw))
        gw = gateway_of(client)
        await asyncio.sleep(0.3)
        assert sweeps(logs) == []
        path.write_text(yaml.safe_dump({**raw, "store": {"url": url, "retention_days": 7}}))
        await Reloader(gw, path).request()
        await until(lambda: 2 in sweeps(logs))
        assert await listed(client) == {"CArecent-ended", "CAlong-live"}
        path.write_text(yaml.safe_dump({**raw, "store": {"url": url, "retention_days": 1}}))
        await Reloader(gw, path).request()
        await until(lambda: 1 in sweeps(logs))
    assert await listed(client) == {"CAlong-live"}
    changes = [(e["was"], e["retention_days"]) for e in logs
               if e["event"] == "store_retention_changed"]
    assert changes == [(0, 7), (7, 1)]


async def test_a_reload_cannot_move_the_store(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The store is opened at start: a changed ``store.url`` is reported and ignored."""
    raw = twilio_raw(store={"url": f"sqlite:///{tmp_path}/a.db"})
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump({**raw, "store": {"url": f"sqlite:///{tmp_path}/b.db",
                                                     "retention_days": 3}}))
    client = await daemon(config(raw))
    gw = gateway_of(client)
    with capture_logs() as logs:
        await Reloader(gw, path).request()
    assert gw.config.store.url == f"sqlite:///{tmp_path}/a.db"
    assert gw.config.store.retention_days == 3             # the rest of the section applies
    partial = next(e for e in logs if e["event"] == "reload_partial")
    assert "store.url" in partial["detail"]


async def test_a_swept_call_leaves_the_daemons_memory_too(
        daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A call this daemon served and the sweep deleted is no longer answered from memory."""
    client = await daemon(config(twilio_raw(admin={"token": TOKEN}, store={
        "url": f"sqlite:///{tmp_path}/c.db", "retention_days": 0.5 / DAY})))
    gw = gateway_of(client)
    sid = call_sid(3)
    with capture_logs() as logs:
        await voice(client, sid)
        await completed(client, sid)
        assert await gw.store_writer.flush(5)
        await until(lambda: 1 in sweeps(logs))
        await until(lambda: gw.registry.get(sid) is None)
    assert (await client.get(f"/v1/calls/{sid}", headers=AUTH)).status == 404


async def test_sweep_survives_a_locked_sqlite_file(daemon, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("patterd.store.sqlite.BUSY_TIMEOUT", 0.05)
    path = tmp_path / "calls.db"
    with capture_logs() as logs:
        client = await daemon(config(twilio_raw(admin={"token": TOKEN}, store={
            "url": f"sqlite:///{path}", "retention_days": 7})))
        await until(lambda: sweeps(logs))
        other = sqlite3.connect(path, isolation_level=None)   # another process's writer
        try:
            other.execute("BEGIN EXCLUSIVE")
            await until(lambda: any(e["event"] == "store_retention_failed" for e in logs))
            now = time.time()
            old = make_call("CAold", now - 10 * DAY, "completed", "completed", ended=True)
            old.ended_at = now - 9 * DAY
            other.execute(Queries("sqlite").upsert, to_row(record_of(old)))
            other.execute("COMMIT")
        finally:
            other.close()
        after = len(sweeps(logs))
        await until(lambda: 1 in sweeps(logs)[after:])
    failed = next(e for e in logs if e["event"] == "store_retention_failed")
    assert "locked" in failed["error"]
    assert await listed(client) == set()


async def test_sweep_survives_a_postgresql_outage(daemon, pg_url: str,  # noqa: F811
                                                  pg_server: str) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    database = urlsplit(pg_url).path.lstrip("/")
    with capture_logs() as logs:
        client = await daemon(config(twilio_raw(admin={"token": TOKEN}, store={
            "url": pg_url, "retention_days": 7})))
        await until(lambda: sweeps(logs))
        admin = await asyncpg.connect(pg_server)   # the server's own database, not ours
        try:
            # The database refuses connections and the daemon's are cut: an outage.
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = 'patterd'", database)
            await until(lambda: any(e["event"] == "store_retention_failed" for e in logs))
        finally:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await admin.close()
        await seed(pg_url, time.time())
        after = len(sweeps(logs))
        await until(lambda: 2 in sweeps(logs)[after:])
    failed = next(e for e in logs if e["event"] == "store_retention_failed")
    assert "PostgreSQL" in failed["error"]
    assert await listed(client) == {"CArecent-ended", "CAlong-live"}
