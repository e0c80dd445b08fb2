"""Ended calls leave the registry's memory once stored (issue 11): after the store writer says
their latest snapshot is stored and a grace since their end, never with unsaved changes;
without a store, the registry stays bounded by ``max_records`` as before. A tombstone keeps
an evicted call over: a late update never makes it live again."""

from __future__ import annotations

import time
from typing import Any

from patterd.call.evicted import record_from_part
from patterd.call.records import snapshot
from patterd.call.registry import CallRecord, CallRegistry


class Store:
    """Stands in for the store writer: keeps each call's latest snapshot; ``flush`` is the
    writer storing them and telling the registry (``on_settled``)."""

    def __init__(self, registry: CallRegistry) -> None:
        self.registry = registry
        self.pending: dict[str, dict[str, Any]] = {}
        self.stored: dict[str, dict[str, Any]] = {}
        registry.on_change = lambda rec: self.pending.__setitem__(
            rec.call_id, snapshot(rec, registry.held(rec.call_id)))

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for call_id, record in pending.items():
            self.stored[call_id] = record
            self.registry.settled(call_id)


def ended_call(reg: CallRegistry, call_id: str, *, ago: float = 0.0) -> CallRecord:
    """A call that rang, was answered and completed ``ago`` seconds back."""
    reg.ensure(call_id, "twilio", from_number="+15550001111", to_number="+15550002222")
    reg.apply_status(call_id, "twilio", "ringing", 1)
    reg.apply_status(call_id, "twilio", "in-progress", 2)
    reg.apply_status(call_id, "twilio", "completed", 3)
    rec = reg.get(call_id)
    assert rec is not None and rec.ended_at is not None
    rec.ended_at -= ago
    return rec


def test_a_stored_ended_call_is_evicted_after_its_grace_only() -> None:
    reg = CallRegistry(evict_after=60.0)
    store = Store(reg)
    fresh = ended_call(reg, "CAfresh")
    old = ended_call(reg, "CAold", ago=61.0)
    store.flush()
    assert reg.get("CAold") is None and reg.evictions == 1
    assert reg.get("CAfresh") is fresh              # within its grace: still in memory
    gone = reg.evicted("CAold")
    assert gone is not None and gone.outcome == "completed" and gone.status == "completed"
    assert gone.ended_at == old.ended_at
    fresh.ended_at = time.time() - 61.0              # its grace is over: the next sweep
    reg._next_sweep = 0.0
    assert reg.live_count() == 0
    assert reg.get("CAfresh") is None and len(reg) == 0


def test_unsaved_changes_keep_a_call_in_memory() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    rec = ended_call(reg, "CAdirty", ago=120.0)
    reg.add_event("CAdirty", "twilio", "recording", url="https://x/r.wav")
    assert rec.dirty and "CAdirty" in store.pending
    for _ in range(3):                                # sweeps run; nothing was stored
        reg._next_sweep = 0.0
        reg.live_count()
        reg.settled("CAother")
    assert reg.get("CAdirty") is rec
    store.flush()                                     # stored: now it may go
    assert reg.get("CAdirty") is None
    assert store.stored["CAdirty"]["events"][-1]["url"] == "https://x/r.wav"


def test_a_call_whose_stream_is_open_here_is_not_evicted() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    rec = ended_call(reg, "CAheld", ago=120.0)
    reg.hold("CAheld")
    store.flush()
    assert reg.get("CAheld") is rec
    reg.release("CAheld")
    reg.touch(rec)
    store.flush()
    assert reg.get("CAheld") is None


def test_live_calls_are_never_evicted() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    rec = reg.ensure("CAlive", "twilio")
    rec.created_at -= 600
    store.flush()
    assert reg.get("CAlive") is rec and reg.live_count() == 1


def test_without_a_store_nothing_is_evicted_but_max_records_bounds_memory() -> None:
    reg = CallRegistry(max_records=5, evict_after=0.0)
    for n in range(8):
        ended_call(reg, f"CA{n}", ago=120.0)
    assert len(reg) == 5
    assert [r.call_id for r in reg.records()] == [f"CA{n}" for n in range(3, 8)]
    assert reg.evicted("CA0") is None                 # nothing stored: no tombstone either
    reg.ensure("CA0", "twilio")                       # a new record, as before
    assert reg.live_count() == 1


def test_a_late_update_of_an_evicted_call_never_makes_it_live() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    ended_call(reg, "CAlate", ago=5.0)
    store.flush()
    assert reg.get("CAlate") is None
    before = dict(store.stored)
    # Not brought back from the store (say it could not be read): an ended stand-in.
    changed = reg.apply_status("CAlate", "twilio", "completed", 4)
    rec = reg.get("CAlate")
    assert rec is not None and rec.stub and not rec.live
    assert not changed and rec.outcome == "completed" and reg.live_count() == 0
    assert store.pending == {} and store.stored == before   # never written over the store
    reg.settled("CAnothing")                          # it leaves again after its grace
    assert reg.get("CAlate") is None and reg.evicted("CAlate") is not None


def test_an_evicted_call_restored_from_its_part_takes_late_updates() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    rec = ended_call(reg, "CArest", ago=5.0)
    rec.transcript.append({"role": "agent", "text": "Hello", "at": rec.created_at})
    rec.cost = {"carrier": 0.01, "stt": 0.0, "llm": 0.0, "tts": 0.0, "total": 0.01,
                "billed_seconds": 60.0}
    reg.touch(rec)
    store.flush()
    assert reg.get("CArest") is None
    back = reg.restore(record_from_part(store.stored["CArest"]))
    assert reg.get("CArest") is back and not back.live and not back.dirty
    assert back.counted and back.timed and back.status_sequence == 3
    assert snapshot(back, False) == store.stored["CArest"]   # the same record, whole
    reg.add_event("CArest", "twilio", "recording", url="https://x/late.wav")
    assert reg.live_count() == 0
    store.flush()
    got = store.stored["CArest"]
    assert got["outcome"] == "completed" and got["transcript"][0]["text"] == "Hello"
    assert got["cost"]["total"] == 0.01 and got["events"][-1]["url"] == "https://x/late.wav"
    assert reg.get("CArest") is None                  # and it leaves memory again


def test_a_held_evicted_record_changed_comes_back_whole() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    rec = ended_call(reg, "CAheldref", ago=5.0)        # (say a price fetch holds it)
    store.flush()
    assert reg.get("CAheldref") is None
    rec.cost = {"carrier": 0.02, "total": 0.02}
    reg.touch(rec)
    assert reg.get("CAheldref") is rec and reg.evicted("CAheldref") is None
    assert store.pending["CAheldref"]["cost"]["carrier"] == 0.02


def test_telnyx_legs_of_evicted_calls_are_found() -> None:
    reg = CallRegistry(evict_after=0.0)
    store = Store(reg)
    reg.ensure("v3:abc", "telnyx", leg_id="leg-1")
    reg.finish("v3:abc", "telnyx", "completed")
    store.flush()
    assert reg.by_leg("leg-1") is None and reg.call_of_leg("leg-1") == "v3:abc"
    reg.restore(record_from_part(store.stored["v3:abc"]))
    back = reg.by_leg("leg-1")
    assert back is not None and back.call_id == "v3:abc" and back.leg_id == "leg-1"


def test_tombstones_are_bounded_in_time_count_and_by_retention() -> None:
    reg = CallRegistry(max_records=3, evict_after=0.0, tomb_seconds=3600.0)
    store = Store(reg)
    for n in range(5):
        ended_call(reg, f"CA{n}", ago=10.0)
    store.flush()
    assert len(reg) == 0 and len(reg._evicted) == 3    # at most max_records of them
    assert reg.evicted("CA0") is None and reg.evicted("CA4") is not None
    reg.forget_ended_before(time.time())               # the retention sweep took them all
    assert len(reg._evicted) == 0
    ended_call(reg, "CAold", ago=4000.0)
    store.flush()
    assert reg.evicted("CAold") is None                # older than tomb_seconds: not kept
