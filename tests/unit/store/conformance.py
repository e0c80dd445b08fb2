"""Behaviour every store back end must show, run against SQLite (unit) and PostgreSQL
(integration). Each check takes a store URL for an empty database and a ``raw(sql)`` helper
that runs SQL directly (for what the Store API does not expose)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from patterd.call.registry import CallRecord
from patterd.store import SCHEMA_VERSION, StoreError, StoreWriter, open_store
from patterd.web.admin import detail, summary

Raw = Callable[[str], Awaitable[list[tuple[Any, ...]]]]
BASE = 1_790_000_000.123456


def make_call(call_id: str, created_at: float, status: str = "in-progress",
              outcome: str = "", ended: bool = False) -> CallRecord:
    """A call record as the registry holds it, with every list filled."""
    rec = CallRecord(call_id=call_id, carrier="twilio", direction="outbound",
                     from_number="+15550001234", to_number="+15557654321", status=status,
                     created_at=created_at, updated_at=created_at + 5.25, outcome=outcome,
                     ended_at=created_at + 61.5 if ended else None)
    rec.history = [{"status": "queued", "sequence": None, "at": created_at},
                   {"status": status, "sequence": 3, "at": created_at + 1.0, "AnsweredBy": "human"}]
    rec.events = [{"type": "amd", "at": created_at + 2.0, "verdict": "human", "confidence": 0.93},
                  {"type": "recording", "at": created_at + 60.0, "url": "https://x/r.wav",
                   "duration": 58}]
    rec.transcript = [
        {"role": "agent", "text": "Thanks for calling — ¿qué tal? 👋", "at": created_at + 3.0},
        {"role": "caller", "text": "", "at": created_at + 4.0, "dtmf": "1"},
        {"role": "caller", "text": "billing \"now\"\n", "at": created_at + 5.0,
         "interrupted": True, "dtmf": "#"},
    ]
    rec.turns = [{"endpointing": 0.21, "stt": 0.05, "llm_first_token": 0.0,
                  "tts_first_byte": 0.12, "response": 0.4}]
    return rec


def record_of(rec: CallRecord, cost: Any = None) -> dict[str, Any]:
    """The snapshot the daemon hands the store: ``detail()`` plus cost and updated_at."""
    return {**detail(rec), "cost": cost, "updated_at": rec.updated_at}


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """What reading the record back gives: the same, through JSON."""
    return json.loads(json.dumps(record))


def calls_with_ties(n: int = 40) -> list[CallRecord]:
    """Calls with shared created_at values and ids whose order depends on code points."""
    ids = ["CA{:02d}", "ca{:02d}", "Zé{:02d}", "v3:{:02d}-a", "_{:02d}", "Ω{:02d}"]
    kinds = [("in-progress", "", False), ("completed", "completed", True),
             ("busy", "busy", True), ("completed", "voicemail", True),
             ("ringing", "", False), ("completed", "transferred", True)]
    out = []
    for i in range(n):
        status, outcome, ended = kinds[i % len(kinds)]
        created = BASE + (i // 3) * 0.1 + (1e-6 if i % 7 == 0 else 0.0)
        out.append(make_call(ids[i % len(ids)].format(i), created, status, outcome, ended))
    return out


def admin_pages(recs: list[CallRecord], limit: int, status: str | None
                ) -> list[tuple[list[dict[str, Any]], str | None]]:
    """Every page ``GET /v1/calls`` serves from these records, following each next_cursor
    (the admin endpoint's algorithm over the in-memory registry)."""
    pages: list[tuple[list[dict[str, Any]], str | None]] = []
    cursor = None
    while True:
        records = sorted(recs, key=lambda r: (r.created_at, r.call_id), reverse=True)
        if status:
            records = [r for r in records if r.status == status or r.outcome == status]
        if cursor:
            at, _, after_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
            records = [r for r in records if (r.created_at, r.call_id) < (float(at), after_id)]
        page = records[:limit]
        nxt = None
        if len(records) > limit:
            nxt = base64.urlsafe_b64encode(
                f"{page[-1].created_at!r}|{page[-1].call_id}".encode()).decode()
        pages.append(([summary(r) for r in page], nxt))
        if nxt is None:
            return pages
        cursor = nxt


async def check_round_trip(url: str, raw: Raw) -> None:
    """A full snapshot reads back equal; lists show the admin summary."""
    rec = make_call("CAround", BASE, "completed", "transferred", ended=True)
    record = record_of(rec, cost={"total_usd": 0.0213, "carrier": {"usd": 0.014, "minutes": 2},
                                  "stt": 0.0043, "llm": 0.0, "tts": 0.003})
    async with await open_store(url) as store:
        await store.upsert_call(record)
        assert await store.get_call("CAround") == stored(record)
        assert (await store.get_call("CAround"))["dtmf"] == "1#"
        assert await store.get_call("CAnope") is None
        assert await store.list_calls(10) == ([summary(rec)], None)


async def check_awkward_values(url: str, raw: Raw) -> None:
    """Values PostgreSQL would refuse (NUL, lone surrogates, NaN) are stored made safe, the
    same on every back end, instead of failing the whole write."""
    rec = make_call("CAodd", BASE)
    rec.from_number = "+1555\x00"
    rec.transcript = [{"role": "caller", "text": "a\x00b \ud800x", "at": BASE}]
    rec.events = [{"type": "raw", "at": BASE, "blob": b"\x01", "n": 10**20, "deep": [[[]]]}]
    async with await open_store(url) as store:
        await store.upsert_call(record_of(rec, cost={"x": float("nan"), "y": float("inf")}))
        got = await store.get_call("CAodd")
    assert got is not None and got["from"] == "+1555\ufffd"
    assert got["transcript"] == [{"role": "caller", "text": "a\ufffdb ?x", "at": BASE}]
    assert got["events"] == [{"type": "raw", "at": BASE, "blob": "b'\\x01'", "n": 10**20,
                              "deep": [[[]]]}]
    assert got["cost"] == {"x": None, "y": None}


async def check_upsert_replaces(url: str, raw: Raw) -> None:
    """A later snapshot replaces the earlier one whole (lists are not merged)."""
    rec = make_call("CAup", BASE)
    first = record_of(rec)
    async with await open_store(url) as store:
        await store.upsert_call(first)
        rec.status, rec.outcome, rec.ended_at = "completed", "completed", BASE + 90
        rec.events = rec.events[:1]
        rec.transcript = [*rec.transcript, {"role": "agent", "text": "Bye", "at": BASE + 89}]
        second = record_of(rec, cost={"total_usd": 0.5})
        await store.upsert_calls([second])
        assert await store.get_call("CAup") == stored(second)
        calls, nxt = await store.list_calls(5)
        assert [c["call_id"] for c in calls] == ["CAup"] and nxt is None
        assert calls[0]["outcome"] == "completed" and calls[0]["ended_at"] == BASE + 90
        assert (await raw("SELECT count(*) FROM calls"))[0][0] == 1


async def check_list_matches_admin(url: str, raw: Raw) -> None:
    """Same order, pages, status filter and cursors (byte for byte) as the admin endpoint."""
    recs = calls_with_ties()
    async with await open_store(url) as store:
        await store.upsert_calls([record_of(r) for r in recs])
        for status in (None, "completed", "busy", "voicemail", "in-progress", "nope"):
            for limit in (1, 3, 7, 200):
                expected = admin_pages(recs, limit, status)
                got, cursor = [], None
                while True:
                    calls, cursor = await store.list_calls(limit, status=status, cursor=cursor)
                    got.append((calls, cursor))
                    if cursor is None:
                        break
                assert got == expected, (status, limit)
        for bad in ("%%%", "bm9wZQ==", base64.urlsafe_b64encode(b"inf|x").decode()):
            with pytest.raises(ValueError, match="cursor"):
                await store.list_calls(5, cursor=bad)
        with pytest.raises(ValueError, match="limit"):
            await store.list_calls(0)


async def check_migrations_idempotent(url: str, raw: Raw) -> None:
    """Opening again migrates nothing and keeps the data; a newer schema is refused."""
    async with await open_store(url) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        await store.upsert_call(record_of(make_call("CAkeep", BASE)))
    async with await open_store(url) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert (await store.get_call("CAkeep")) is not None
    rows = await raw("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    await raw(f"INSERT INTO schema_version (version, applied_at) VALUES ({SCHEMA_VERSION + 1}, 0)")
    with pytest.raises(StoreError, match="newer than this patterd"):
        await open_store(url)


async def check_sweep(url: str, raw: Raw) -> None:
    """Ended calls past retention go; recent and live ones stay; abandoned ones go after a
    day; each sweep is logged in ``retention``."""
    now = time.time()
    old_ended = make_call("old-ended", now - 7200, "completed", "completed", ended=True)
    old_ended.ended_at = now - 7000
    new_ended = make_call("new-ended", now - 600, "busy", "busy", ended=True)
    long_live = make_call("long-live", now - 7200)
    long_live.updated_at = now - 5
    abandoned = make_call("abandoned", now - 3 * 86400)
    abandoned.updated_at = now - 2 * 86400
    async with await open_store(url) as store:
        await store.upsert_calls([record_of(r) for r in
                                  (old_ended, new_ended, long_live, abandoned)])
        assert await store.sweep(3600) == 2
        calls, _ = await store.list_calls(10)
        assert sorted(c["call_id"] for c in calls) == ["long-live", "new-ended"]
        assert await store.sweep(3600) == 0
        assert await store.sweep(0) == 1   # new-ended; a live call is never swept early
        assert [c["call_id"] for c in (await store.list_calls(10))[0]] == ["long-live"]
    assert await raw("SELECT count(*) FROM call_parts WHERE call_id <> 'long-live'") == [(0,)]
    rows = await raw("SELECT older_than, deleted FROM retention ORDER BY id")
    assert [(float(a), int(b)) for a, b in rows][-1] == (0.0, 1)


async def check_writer_coalesces_and_rejects(url: str, raw: Raw) -> None:
    """The writer lands the newest snapshot of each call; a record the database refuses is
    set aside without holding back the others."""
    async with await open_store(url) as store:
        writer = StoreWriter(store)
        recs = [make_call(f"CW{i}", BASE + i) for i in range(10)]
        for step in range(5):
            for rec in recs:
                rec.status = f"step-{step}"
                writer.submit(record_of(rec) | {"status_history": [{"step": step}]})
        writer.submit({"call_id": "CWbad", "created_at": "yesterday"})
        writer.submit({"call_id": "", "status": "x"})
        assert await writer.flush(10)
        assert writer.rejected == 2 and writer.pending == 0
        assert writer.written == 10   # 50 snapshots, coalesced before the first write
        for rec in recs:
            got = await store.get_call(rec.call_id)
            assert got is not None and got["status"] == "step-4"
            assert got["status_history"] == [{"step": 4}]
        assert await store.get_call("CWbad") is None
        await writer.close()


async def check_a_restarted_writer_never_erases_the_record(url: str, raw: Raw) -> None:
    """A late callback handled after a restart (a new writer that knows only the call id
    and its end) merges with what the first process recorded instead of replacing it."""
    rec = make_call("CArestart", BASE, "in-progress")
    async with await open_store(url) as first:
        await first.upsert_call(record_of(rec, cost={"carrier": 0.014, "stt": 0.002,
                                                     "llm": 0.0, "tts": 0.001,
                                                     "total": 0.017}))
    late = {"call_id": "CArestart", "carrier": "twilio", "status": "completed",
            "outcome": "completed", "created_at": BASE + 300, "updated_at": BASE + 300,
            "ended_at": BASE + 300,
            "events": [{"type": "recording", "at": BASE + 299, "url": "https://x/2.wav"}]}
    async with await open_store(url) as second:
        await second.upsert_call(late)
        got = await second.get_call("CArestart")
    assert got is not None
    assert got["transcript"] == stored(record_of(rec))["transcript"]    # kept
    assert got["status"] == "completed" and got["ended_at"] == BASE + 300
    assert got["created_at"] == BASE and got["from"] == rec.from_number
    assert [e["url"] for e in got["events"] if e["type"] == "recording"] == [
        "https://x/r.wav", "https://x/2.wav"]
    assert got["cost"]["stt"] == 0.002 and got["cost"]["total"] == 0.017


async def check_a_row_from_before_parts_is_kept(url: str, raw: Raw) -> None:
    """A row written before writers' parts existed becomes the first part, not lost."""
    rec = make_call("CAlegacy", BASE, "in-progress")
    async with await open_store(url) as store:
        await store.upsert_call(record_of(rec))
    await raw("DELETE FROM call_parts")            # as a database of schema version 1 left it
    async with await open_store(url) as store:
        await store.upsert_call({"call_id": "CAlegacy", "status": "completed",
                                 "created_at": BASE + 90, "updated_at": BASE + 90,
                                 "ended_at": BASE + 90})
        got = await store.get_call("CAlegacy")
    assert got is not None and got["status"] == "completed"
    assert got["transcript"] == stored(record_of(rec))["transcript"]
    assert got["turns"] == rec.turns


async def check_carrier_price_joins_any_record(url: str, raw: Raw) -> None:
    """The carrier's price, stored by a process that never held the call, replaces the
    carrier estimate and survives the serving process's later writes."""
    rec = make_call("CAprice", BASE, "completed", "completed", ended=True)
    cost = {"carrier": 0.014, "stt": 0.002, "llm": 0.003, "tts": 0.001, "total": 0.02,
            "currency": "USD", "carrier_source": "estimate", "billed_seconds": 60.0}
    async with await open_store(url) as serving, await open_store(url) as pricing:
        await serving.upsert_call(record_of(rec, cost=cost))
        assert await pricing.unpriced_calls("twilio", BASE, BASE + 100) == ["CAprice"]
        assert await pricing.add_carrier_price("CAprice", -0.0085)
        assert not await pricing.add_carrier_price("CAnone", -1.0)
        got = await pricing.get_call("CAprice")
        assert got is not None
        assert got["cost"]["carrier"] == 0.0085 and got["cost"]["carrier_source"] == "carrier"
        assert got["cost"]["stt"] == 0.002 and got["cost"]["llm"] == 0.003
        assert got["cost"]["total"] == pytest.approx(0.0145)
        assert got["cost"]["billed_seconds"] == 60.0
        assert got["transcript"] == stored(record_of(rec))["transcript"]
        assert got["outcome"] == "completed" and got["updated_at"] == rec.updated_at
        assert await pricing.unpriced_calls("twilio", BASE, BASE + 100) == []
        # The serving process writes its (estimate) snapshot again: the price stays.
        rec.transcript = [*rec.transcript, {"role": "agent", "text": "Bye", "at": BASE + 61}]
        await serving.upsert_call(record_of(rec, cost=cost))
        got = await serving.get_call("CAprice")
        assert got is not None and got["cost"]["carrier"] == 0.0085
        assert got["transcript"][-1]["text"] == "Bye"


async def check_unpriced_calls_are_the_billed_estimates(url: str, raw: Raw) -> None:
    """Only the carrier's ended, billed calls in the window that still hold an estimate."""
    estimate = {"carrier": 0.01, "stt": 0.0, "llm": 0.0, "tts": 0.0, "total": 0.01,
                "carrier_source": "estimate", "billed_seconds": 60.0}
    calls = {
        "CAa": (make_call("CAa", BASE, "completed", "completed", ended=True), estimate),
        "CAb": (make_call("CAb", BASE + 1, "completed", "completed", ended=True), estimate),
        "CAlive": (make_call("CAlive", BASE), estimate),
        "CAunbilled": (make_call("CAunbilled", BASE, "no-answer", "no-answer", ended=True),
                       {**estimate, "carrier": 0.0, "billed_seconds": 0.0}),
        "CApriced": (make_call("CApriced", BASE, "completed", "completed", ended=True),
                     {**estimate, "carrier_source": "carrier"}),
        "CAnocost": (make_call("CAnocost", BASE, "completed", "completed", ended=True), None),
        "CAlater": (make_call("CAlater", BASE + 1000, "completed", "completed", ended=True),
                    estimate),
    }
    telnyx = make_call("v3:telnyx", BASE, "completed", "completed", ended=True)
    telnyx.carrier = "telnyx"
    async with await open_store(url) as store:
        await store.upsert_calls([record_of(r, cost=c) for r, c in calls.values()]
                                 + [record_of(telnyx, cost=estimate)])
        assert await store.unpriced_calls("twilio", BASE, BASE + 500) == ["CAa", "CAb"]
        assert await store.unpriced_calls("twilio", BASE, BASE + 500, limit=1) == ["CAa"]
        assert await store.unpriced_calls("twilio", BASE + 62, BASE + 2000) == ["CAb",
                                                                               "CAlater"]
        assert await store.unpriced_calls("telnyx", BASE, BASE + 500) == ["v3:telnyx"]


async def check_first_seen_survives_a_reopen_and_expires(url: str, raw: Raw) -> None:
    """A key is first seen once per ``ttl`` — also by the next process on the database (a
    replay after a restart) — and may be seen again once its time is up."""
    async with await open_store(url) as store:
        assert await store.first_seen("telnyx|evt-1", 300) is True
        assert await store.first_seen("telnyx|evt-1", 300) is False
        assert await store.first_seen("telnyx|evt-2", 0.2) is True
    async with await open_store(url) as store:
        assert await store.first_seen("telnyx|evt-1", 300) is False
        time.sleep(0.3)
        assert await store.first_seen("telnyx|evt-2", 300) is True    # expired: new again
        assert await store.first_seen("telnyx|evt-2", 300) is False
    assert len(await raw("SELECT key FROM seen_keys")) == 2


CHECKS = [check_round_trip, check_awkward_values, check_upsert_replaces, check_list_matches_admin,
          check_migrations_idempotent, check_sweep, check_writer_coalesces_and_rejects,
          check_a_restarted_writer_never_erases_the_record, check_a_row_from_before_parts_is_kept,
          check_carrier_price_joins_any_record, check_unpriced_calls_are_the_billed_estimates,
          check_first_seen_survives_a_reopen_and_expires]
