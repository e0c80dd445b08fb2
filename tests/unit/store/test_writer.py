"""The store writer: never blocks the caller, coalesces, retries through outages, never drops
a snapshot (back-pressure past its watermark instead), contains bugs, restarts its task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from patterd.ops.supervise import Supervisor
from patterd.store import Store, StoreUnavailable, StoreWriter, open_store, run_retention
from tests.unit.store.conformance import BASE, make_call, record_of


class FlakyStore(Store):
    """A real store behind a switch: while ``down`` every write fails like a lost server;
    with ``gate`` set, writes wait for it (a stalled database)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.gate: asyncio.Event | None = None
        self.attempts = 0
        self.batches: list[list[str]] = []

    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("store.url: PostgreSQL at x: connection refused")
        self.batches.append([r["call_id"] for r in records])
        await self.inner.upsert_calls(records, writer)

    async def first_seen(self, key: str, ttl: float) -> bool:
        return await self.inner.first_seen(key, ttl)

    async def unpriced_calls(self, carrier: str, ended_from: float, ended_before: float,
                             limit: int = 100) -> list[str]:
        return await self.inner.unpriced_calls(carrier, ended_from, ended_before, limit)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        return await self.inner.get_call(call_id)

    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        return await self.inner.list_calls(limit, status, cursor)

    async def sweep(self, older_than_seconds: float) -> int:
        if self.down:
            raise StoreUnavailable("down")
        return await self.inner.sweep(older_than_seconds)

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyStore]:
    store = FlakyStore(await open_store("sqlite:///:memory:"))
    yield store
    await store.close()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_outage_submit_never_blocks_and_nothing_is_lost(flaky: FlakyStore) -> None:
    flaky.down = True
    writer = StoreWriter(flaky, retry_base=0.01, retry_max=0.05)
    recs = [make_call(f"CA{i:03d}", BASE + i) for i in range(100)]
    started = time.perf_counter()
    with capture_logs() as logs:
        for step in range(100):                       # 10,000 snapshots while down
            for rec in recs:
                rec.status = f"s{step}"
                writer.submit(record_of(rec))
        elapsed = time.perf_counter() - started
        assert writer.pending == 100                  # coalesced: one per call
        await until(lambda: writer.failed_attempts >= 3)
        assert writer.written == 0 and writer.pending == 100
        flaky.down = False
        assert await writer.flush(5)
    assert elapsed < 1.0, elapsed                     # ~µs each: no I/O, no waiting
    assert writer.written == 100 and writer.pending == 0
    for rec in recs:
        assert (await flaky.get_call(rec.call_id))["status"] == "s99"
    events = [e["event"] for e in logs]
    assert "store_write_failed" in events and "store_recovered" in events
    failed = next(e for e in logs if e["event"] == "store_write_failed")
    assert "connection refused" in failed["error"] and failed["pending"] == 100
    await writer.close()


async def test_backoff_grows_to_the_cap(flaky: FlakyStore) -> None:
    flaky.down = True
    writer = StoreWriter(flaky, retry_base=0.02, retry_max=0.16)
    with capture_logs() as logs:
        writer.submit(record_of(make_call("CAb", BASE)))
        await until(lambda: writer.failed_attempts >= 6)
    delays = [e["retry_in"] for e in logs if e["event"] == "store_write_failed"][:6]
    caps = [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]
    assert all(0.75 * cap - 1e-3 <= d <= cap + 1e-3
               for d, cap in zip(delays, caps, strict=True)), delays
    flaky.down = False
    assert await writer.close(5)


async def test_a_submit_during_a_stalled_write_is_not_overwritten_by_a_retry(
        flaky: FlakyStore) -> None:
    rec = make_call("CAs", BASE)
    flaky.gate = asyncio.Event()
    flaky.down = True
    writer = StoreWriter(flaky, retry_base=0.01, retry_max=0.02)
    writer.submit(record_of(rec))                      # v1, now stuck in flight
    await until(lambda: flaky.attempts == 1)
    rec.status = "completed"
    rec.ended_at = BASE + 10
    writer.submit(record_of(rec))                      # v2 arrives while v1 is in flight
    assert writer.pending == 2
    flaky.gate.set()                                   # v1 fails and must not replace v2
    await until(lambda: writer.failed_attempts >= 1)
    assert writer.pending == 1
    flaky.gate, flaky.down = None, False
    assert await writer.flush(5)
    got = await flaky.get_call("CAs")
    assert got["status"] == "completed" and got["ended_at"] == BASE + 10
    assert flaky.batches == [["CAs"]]
    await writer.close()


async def test_a_stalled_store_never_stalls_submit(flaky: FlakyStore) -> None:
    flaky.gate = asyncio.Event()
    writer = StoreWriter(flaky)
    writer.submit(record_of(make_call("CAfirst", BASE)))
    await until(lambda: flaky.attempts == 1)
    started = time.perf_counter()
    for i in range(1000):
        writer.submit(record_of(make_call(f"CA{i}", BASE + i)))
    assert time.perf_counter() - started < 0.5
    assert writer.pending == 1001
    assert not await writer.flush(0.1)
    flaky.gate.set()
    assert await writer.flush(5) and writer.written == 1001
    await writer.close()


async def test_past_max_queue_nothing_is_dropped_and_back_pressure_is_signalled(
        flaky: FlakyStore) -> None:
    flaky.down = True
    supervisor = Supervisor()
    writer = StoreWriter(flaky, max_queue=4, resume_at=2, supervisor=supervisor,
                         retry_base=0.01, retry_max=0.02)
    live = make_call("CAlive", BASE)
    for n in range(3):
        writer.submit(record_of(make_call(f"CAend{n}", BASE, "completed", "completed",
                                          ended=True)))
    assert not writer.backed_up and supervisor.down == {}
    writer.submit(record_of(live))                     # the 4th pending call: backed up
    assert writer.backed_up and "store" in supervisor.down
    for n in range(3, 10):                             # far past it: all kept
        writer.submit(record_of(make_call(f"CAend{n}", BASE, "completed", "completed",
                                          ended=True)))
    for step in range(50):                             # a live call's updates replace one
        live.status = f"s{step}"
        writer.submit(record_of(live))
    assert writer.pending == 11 and writer.holds("CAlive") and writer.holds("CAend9")
    assert not await writer.room(0.05)                 # callers are told to wait
    await until(lambda: writer.failed_attempts >= 2)
    assert writer.backed_up and writer.pending == 11   # retries keep everything
    flaky.down = False
    assert await writer.room(5)                        # room again once drained
    assert not writer.backed_up and supervisor.down == {}
    assert await writer.flush(5)
    calls, _ = await flaky.list_calls(20)
    assert sorted(c["call_id"] for c in calls) == sorted(
        ["CAlive", *(f"CAend{n}" for n in range(10))])
    assert (await flaky.get_call("CAlive"))["status"] == "s49"
    await writer.close()


async def test_back_pressure_follows_the_watermarks_both_ways(flaky: FlakyStore) -> None:
    flaky.gate = asyncio.Event()
    supervisor = Supervisor()
    writer = StoreWriter(flaky, max_queue=6, resume_at=3, batch_size=2,
                         supervisor=supervisor)
    for n in range(8):
        writer.submit(record_of(make_call(f"CA{n}", BASE)))
    assert writer.backed_up and writer.drain_eta() is None   # no write measured yet
    with capture_logs() as logs:
        waiter = asyncio.create_task(writer.room(5))
        flaky.gate.set()                               # batches of 2: 8 → 6 → 4 → 2
        assert await waiter
        assert writer.pending <= 3 and not writer.backed_up and supervisor.down == {}
        assert await writer.flush(5)
    assert [e["event"] for e in logs].count("store_caught_up") == 1
    assert writer.drain_eta() == 0                     # a rate is known now, nothing to drain
    await writer.close()


async def test_reserved_places_count_toward_the_watermark(flaky: FlakyStore) -> None:
    flaky.gate = asyncio.Event()
    writer = StoreWriter(flaky, max_queue=4, resume_at=2)
    writer.submit(record_of(make_call("CA1", BASE)))
    writer.reserve()
    writer.reserve()
    assert not writer.backed_up
    writer.reserve()                                   # 1 pending + 3 let in: the mark
    assert writer.backed_up and writer.pending == 1
    writer.release()                                   # answered without adding a record
    assert writer.backed_up                            # 1 + 2 > resume_at
    flaky.gate.set()                                   # CA1 written: 0 + 2, room again
    assert await writer.room(5)
    writer.release()
    writer.release()
    assert writer.reserved == 0 and not writer.backed_up
    await writer.close()


class BuggyStore(FlakyStore):
    """Raises a bug (not a StoreError) for the call ids in ``poison``; with ``batch_bug`` set,
    every batch of more than one record raises (a bug in batching itself)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.poison: set[str] = set()
        self.batch_bug = False

    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        if self.batch_bug and len(records) > 1:
            raise RuntimeError("batch encoder bug")
        for record in records:
            if record["call_id"] in self.poison:
                raise TypeError(f"cannot encode {record['call_id']}")
        await super().upsert_calls(records, writer)


@pytest.fixture
async def buggy() -> AsyncIterator[BuggyStore]:
    store = BuggyStore(await open_store("sqlite:///:memory:"))
    yield store
    await store.close()


async def test_a_record_raising_a_bug_is_contained_retried_and_reported(
        buggy: BuggyStore) -> None:
    buggy.poison = {"CAbad"}
    supervisor = Supervisor()
    writer = StoreWriter(buggy, supervisor=supervisor, retry_base=0.02, retry_max=0.05)
    with capture_logs() as logs:
        for name in ("CAa", "CAbad", "CAb"):
            writer.submit(record_of(make_call(name, BASE)))
        await until(lambda: writer.written == 2)      # the others land at once
        task = writer._task
        await until(lambda: writer.set_aside >= 3)    # CAbad alone, retried with back-off
        assert writer.pending == 1 and writer.holds("CAbad")
        assert not await writer.flush(0.5)            # tried again, failed again: said so
        buggy.poison.clear()                          # (a transient bug, say)
        assert await writer.flush(5)
    assert writer._task is task and not task.done()   # the same task, never died
    assert (await buggy.get_call("CAbad")) is not None and writer.written == 3
    assert supervisor.errors["store"] == writer.set_aside >= 3
    reported = [e for e in logs if e["event"] == "internal_error"]
    assert reported[0]["component"] == "store" and reported[0]["call_id"] == "CAbad"
    assert "TypeError: cannot encode CAbad" in reported[0]["error"]
    await writer.close()


async def test_a_newer_snapshot_replaces_one_set_aside(buggy: BuggyStore) -> None:
    buggy.poison = {"CAbad"}
    writer = StoreWriter(buggy, retry_base=30, retry_max=30)   # no retry within the test
    rec = make_call("CAbad", BASE)
    writer.submit(record_of(rec))
    await until(lambda: writer.set_aside == 1)
    buggy.poison.clear()
    rec.status = "completed"
    rec.ended_at = BASE + 5
    writer.submit(record_of(rec))                     # written now, not in 30 s
    await until(lambda: writer.written == 1)
    assert writer.pending == 0
    assert (await buggy.get_call("CAbad"))["status"] == "completed"
    await writer.close()


async def test_a_batch_bug_no_single_record_raises_is_reported_once(
        buggy: BuggyStore) -> None:
    buggy.batch_bug = True
    supervisor = Supervisor()
    writer = StoreWriter(buggy, supervisor=supervisor)
    for n in range(5):
        writer.submit(record_of(make_call(f"CA{n}", BASE)))
    assert await writer.flush(5)
    assert writer.written == 5 and writer.set_aside == 0
    assert supervisor.errors == {"store": 1}
    await writer.close()


async def test_a_writer_loop_that_dies_is_restarted_and_loses_nothing(
        flaky: FlakyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = Supervisor()
    writer = StoreWriter(flaky, supervisor=supervisor)
    real_write = writer._write

    async def dies_once(batch: Any, failed_before: Any) -> None:
        monkeypatch.setattr(writer, "_write", real_write)
        raise KeyError("a bug in the loop, with a batch taken")

    monkeypatch.setattr(writer, "_write", dies_once)
    for n in range(3):
        writer.submit(record_of(make_call(f"CA{n}", BASE)))
    await until(lambda: supervisor.restarts.get("store") == 1)
    assert await writer.flush(5)
    assert writer.written == 3 and len((await flaky.list_calls(5))[0]) == 3
    assert supervisor.errors["store"] == 1
    await writer.close()


async def test_a_cancelled_writer_task_is_restarted_with_its_snapshot(
        flaky: FlakyStore) -> None:
    flaky.gate = asyncio.Event()
    supervisor = Supervisor()
    writer = StoreWriter(flaky, supervisor=supervisor)
    writer.submit(record_of(make_call("CAk", BASE)))
    await until(lambda: flaky.attempts == 1)          # in flight, stalled
    killed = writer._task
    killed.cancel()                                    # killed from outside
    await until(lambda: killed.done())
    await asyncio.sleep(0)
    assert writer._task is not None and writer._task is not killed
    assert writer.pending == 1                         # the in-flight one was put back
    flaky.gate.set()
    assert await writer.flush(5)
    assert (await flaky.get_call("CAk")) is not None
    assert supervisor.errors["store"] == 1             # reported
    await writer.close()


async def test_close_stops_the_task_for_good(flaky: FlakyStore) -> None:
    writer = StoreWriter(flaky)
    writer.submit(record_of(make_call("CAc", BASE)))
    assert await writer.close(5)
    assert writer._task is None
    writer.submit(record_of(make_call("CAlate", BASE)))   # after close: kept, not started
    await asyncio.sleep(0.05)
    assert writer._task is None and writer.pending == 1


async def test_submit_never_raises_and_close_reports_leftovers(flaky: FlakyStore) -> None:
    writer = StoreWriter(flaky, retry_base=0.01, retry_max=0.02)
    with capture_logs() as logs:
        writer.submit("not a record")                  # type: ignore[arg-type]
        writer.submit({"status": "no id"})
        flaky.down = True
        writer.submit(record_of(make_call("CAleft", BASE)))
        assert not await writer.close(0.1)
    assert writer.rejected == 1 and writer.pending == 1
    assert {"store_submit_failed", "store_record_rejected", "store_unflushed"} <= {
        e["event"] for e in logs}


def test_submit_before_the_loop_runs_is_kept_for_later() -> None:
    async def scenario() -> tuple[int, int]:
        store = await open_store("sqlite:///:memory:")
        writer.store = store
        writer.start()
        assert await writer.flush(5)
        got = await store.get_call("CAearly")
        await store.close()
        return writer.written, int(got is not None)

    writer = StoreWriter(FlakyStore(None))   # type: ignore[arg-type]
    writer.submit(record_of(make_call("CAearly", BASE)))   # no running loop: just queued
    assert writer.pending == 1
    assert asyncio.run(scenario()) == (1, 1)


async def test_retention_loop_sweeps_and_survives_failures(flaky: FlakyStore) -> None:
    now = time.time()
    old = make_call("CAold", now - 7200, "completed", "completed", ended=True)
    old.ended_at = now - 7100
    flaky.down = True
    with capture_logs() as logs:
        task = asyncio.create_task(run_retention(flaky, keep_seconds=3600, every_seconds=0.02))
        await until(lambda: any(e["event"] == "store_retention_failed" for e in logs))
        flaky.down = False
        await flaky.upsert_call(record_of(old))
        await flaky.upsert_call(record_of(make_call("CAnew", now)))
        await until(lambda: any(e["event"] == "store_retention_swept" for e in logs))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [c["call_id"] for c in (await flaky.list_calls(5))[0]] == ["CAnew"]


async def test_on_settled_is_told_only_once_a_calls_latest_snapshot_is_stored(
        flaky: FlakyStore) -> None:
    settled: list[tuple[str, int]] = []
    writer = StoreWriter(flaky, retry_base=0.01, retry_max=0.02)
    writer.on_settled = lambda call_id: settled.append((call_id, writer.written))
    rec = make_call("CAv", BASE)
    flaky.gate = asyncio.Event()
    writer.submit(record_of(rec))                      # v1, held in flight
    await until(lambda: flaky.attempts == 1)
    rec.status, rec.ended_at = "completed", BASE + 10
    writer.submit(record_of(rec))                      # v2 comes while v1 is written
    flaky.gate.set()
    assert await writer.flush(5)
    assert flaky.batches == [["CAv"], ["CAv"]]
    assert settled == [("CAv", 2)]                     # not after v1: v2 was waiting
    assert (await flaky.get_call("CAv"))["status"] == "completed"
    await writer.close()


async def test_a_rejected_or_unwritten_snapshot_never_settles(flaky: FlakyStore) -> None:
    settled: list[str] = []
    writer = StoreWriter(flaky, retry_base=0.01, retry_max=0.02)
    writer.on_settled = settled.append
    writer.submit({**record_of(make_call("CAbad", BASE)), "created_at": "not a time"})
    assert await writer.flush(5) and writer.rejected == 1
    flaky.down = True
    writer.submit(record_of(make_call("CAdown", BASE)))
    await until(lambda: writer.failed_attempts >= 1)
    assert settled == []
    flaky.down = False
    assert await writer.flush(5)
    assert settled == ["CAdown"]
    await writer.close()


async def test_an_on_settled_hook_that_raises_is_reported_and_the_writer_goes_on(
        flaky: FlakyStore) -> None:
    supervisor = Supervisor()
    writer = StoreWriter(flaky, supervisor=supervisor)

    def broken(call_id: str) -> None:
        raise RuntimeError("hook bug")

    writer.on_settled = broken
    for name in ("CAh1", "CAh2"):
        writer.submit(record_of(make_call(name, BASE)))
    assert await writer.flush(5) and writer.written == 2
    assert supervisor.errors["store"] == 2
    await writer.close()
