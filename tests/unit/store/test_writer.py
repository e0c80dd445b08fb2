"""The store writer: never blocks the caller, coalesces, retries through outages, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

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
    assert writer.written == 100 and writer.dropped == 0 and writer.pending == 0
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


async def test_full_queue_drops_oldest_in_progress_snapshots_first(flaky: FlakyStore) -> None:
    flaky.down = True
    writer = StoreWriter(flaky, max_queue=4, retry_base=0.01, retry_max=0.02)
    live = {n: make_call(n, BASE) for n in ("a", "b", "c", "f")}
    final = {n: make_call(n, BASE, "completed", "completed", ended=True) for n in ("d", "e", "g")}
    for name in ("a", "b", "c"):
        writer.submit(record_of(live[name]))
    writer.submit(record_of(final["d"]))
    writer.submit(record_of(live["a"]))                # a again: now the newest
    writer.submit(record_of(final["e"]))               # 5 > 4: b (oldest live) goes
    writer.submit(record_of(final["g"]))               # then c
    assert writer.dropped == 2 and writer.pending == 4
    await until(lambda: writer.failed_attempts >= 2)   # retries keep the survivors
    writer.submit(record_of(live["f"]))                # a goes, f stays (the newest)
    assert writer.dropped == 3
    flaky.down = False
    assert await writer.flush(5)
    calls, _ = await flaky.list_calls(10)
    assert sorted(c["call_id"] for c in calls) == ["d", "e", "f", "g"]
    await writer.close()


async def test_only_final_snapshots_left_drops_the_oldest(flaky: FlakyStore) -> None:
    flaky.down = True
    writer = StoreWriter(flaky, max_queue=2, retry_base=5, retry_max=5)
    for name in ("x", "y", "z"):
        writer.submit(record_of(make_call(name, BASE, "completed", "completed", ended=True)))
    assert writer.dropped == 1 and writer.pending == 2
    await until(lambda: writer.failed_attempts == 1)   # now in a 3.75-5 s backoff
    flaky.down = False
    started = time.monotonic()
    assert await writer.flush(2)                       # flush cuts the backoff short
    assert time.monotonic() - started < 1.0
    assert sorted(c["call_id"] for c in (await flaky.list_calls(10))[0]) == ["y", "z"]
    await writer.close()


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
