"""The live event bus: numbered events in a ring, read by cursor, gaps detected."""

from __future__ import annotations

import asyncio
import json

from patterd.call.live import CallEvents
from patterd.call.registry import CallRegistry
from patterd.ops.events import EventBus


def test_ids_grow_from_the_first_and_events_are_encoded_once() -> None:
    bus = EventBus(first_id=100)
    assert bus.last_id == 99
    a = bus.publish("call_start", {"call_id": "CA1", "text": "line\nbreak <b>"})
    b = bus.publish("call_end", {"call_id": "CA1"})
    assert (a.id, b.id, bus.last_id) == (100, 101, 101)
    lines = a.wire.decode().split("\n")
    assert lines[:2] == ["id: 100", "event: call_start"] and lines[-2:] == ["", ""]
    assert json.loads(lines[2][len("data: "):]) == {"call_id": "CA1", "text": "line\nbreak <b>"}


def test_since_returns_what_came_after_a_cursor_and_flags_gaps() -> None:
    bus = EventBus(capacity=3, first_id=10)
    for n in range(5):           # ids 10..14; the ring keeps 12, 13, 14
        bus.publish("e", {"n": n})
    assert bus.since(14) == ([], False)
    events, gap = bus.since(12)
    assert [e.id for e in events] == [13, 14] and not gap
    events, gap = bus.since(11)
    assert [e.id for e in events] == [12, 13, 14] and not gap
    events, gap = bus.since(10)          # 11 was lost
    assert [e.id for e in events] == [12, 13, 14] and gap
    assert bus.since(3)[1]               # another process's cursor (before our first id)
    assert bus.since(99) == ([], True)   # or from the future


def test_the_ring_is_bounded_in_bytes_too_and_keeps_only_the_encoding() -> None:
    bus = EventBus(capacity=1000, first_id=1, max_bytes=1000)
    for n in range(50):
        bus.publish("turn_complete", {"call_id": f"CA{n % 3}", "text": "x" * 60, "n": n})
    held = bus.since(0)[0]
    # the newest events, consecutive, within the byte bound; the count bound is far away
    assert held[-1].id == 50 and [e.id for e in held] == list(range(held[0].id, 51))
    assert bus.bytes == sum(len(e.wire) for e in held) <= 1000 < bus.bytes + 150
    assert len(held) < 10 and bus.since(held[0].id - 2)[1]    # older ones: a gap
    last = held[-1]
    assert (last.call_id, last.data) == ("CA1", {"call_id": "CA1", "text": "x" * 60, "n": 49})
    assert not hasattr(last, "__dict__")       # slots: no per-event dict
    huge = bus.publish("e", {"text": "y" * 5000})     # bigger than the bound: kept alone
    assert bus.since(huge.id - 1) == ([huge], False) and huge.call_id == ""
    bus = EventBus(capacity=3, first_id=1, max_bytes=10**6)
    for n in range(5):
        bus.publish("e", {"n": n})
    assert bus.bytes == sum(len(e.wire) for e in bus.since(0)[0])   # count-evicted: counted


async def test_wait_wakes_on_publish_and_times_out_otherwise() -> None:
    bus = EventBus(first_id=1)
    assert not await bus.wait(0, 0.01)
    waiter = asyncio.ensure_future(bus.wait(0, 5))
    await asyncio.sleep(0)
    bus.publish("e", {})
    assert await asyncio.wait_for(waiter, 1)
    assert await bus.wait(0, 5)          # already there: no waiting


def test_record_changes_become_call_events() -> None:
    bus = EventBus(first_id=1)
    registry = CallRegistry()
    registry.watchers.append(CallEvents(bus))
    rec = registry.ensure("CA1", "twilio", direction="inbound", from_number="+15557654321",
                          to_number="+15550001234")
    registry.apply_status("CA1", "twilio", "in-progress")
    rec.transcript.append({"role": "agent", "text": "Hello", "at": 1.0, "playing": True})
    registry.touch(rec)
    rec.transcript[0]["text"] = "Hello there"
    registry.touch(rec)
    del rec.transcript[0]["playing"]
    rec.transcript[0]["interrupted"] = True
    rec.transcript.append({"role": "caller", "text": "", "dtmf": "5", "at": 2.0})
    registry.add_event("CA1", "twilio", "transfer", to="+15550001001", ok=True)
    rec.turns.append({"response": 0.5})
    registry.touch(rec)
    registry.finish("CA1", "twilio", "transferred")
    events = bus.since(0)[0]
    names = [e.name for e in events]
    assert names == ["call_start", "call_status", "transcript_partial", "transcript_partial",
                     "turn_complete", "turn_complete", "call_event", "turn_latency",
                     "call_end"], names
    start = events[0].data
    assert start["from"] == "+*******4321" and start["to"] == "+*******1234"
    partial, grown, final, key = (e.data for e in events[2:6])
    assert (partial["index"], partial["text"], partial["playing"]) == (0, "Hello", True)
    assert grown["text"] == "Hello there"
    assert (final["index"], final["text"], final["interrupted"]) == (0, "Hello there", True)
    assert "playing" not in final
    assert (key["index"], key["dtmf"], key["role"]) == (1, "5", "caller")
    assert events[6].data["type"] == "transfer" and events[6].data["to"] == "+15550001001"
    assert events[7].data == {"response": 0.5, "call_id": "CA1", "index": 0}
    assert events[8].data["outcome"] == "transferred"
    # the end is published once; a later price is its own event
    registry.touch(rec)
    rec.cost = {"total": 0.01}
    registry.touch(rec)
    assert [e.name for e in bus.since(events[-1].id)[0]] == ["call_cost"]


def test_lines_handed_over_live_are_not_published_again_from_the_record() -> None:
    bus = EventBus(first_id=1)
    registry = CallRegistry()
    events = CallEvents(bus)
    registry.watchers.append(events)
    rec = registry.ensure("CA2", "telnyx")
    lines = events.transcript("CA2")

    class Line:
        def __init__(self, role: str, text: str) -> None:
            self.role, self.text = role, text

        def as_dict(self) -> dict[str, str]:
            return {"role": self.role, "text": self.text}

    lines.append(Line("agent", "Hi"))
    lines.append(Line("caller", "billing"))
    snap = events.snapshot(registry.records())
    assert [ln["text"] for ln in snap["calls"][0]["transcript"]] == ["Hi", "billing"]
    assert snap["last_event_id"] == bus.last_id
    rec.transcript.extend(ln.as_dict() for ln in lines)   # the stream's end, as before
    registry.touch(rec)
    registry.finish("CA2", "telnyx", "completed")
    names = [e.name for e in bus.since(0)[0]]
    assert names == ["call_start", "turn_complete", "turn_complete", "call_end"]
    assert events.snapshot(registry.records())["calls"] == []


def test_a_watcher_failure_never_reaches_the_call() -> None:
    failures: list[BaseException] = []
    bus = EventBus(first_id=1)
    registry = CallRegistry()
    registry.watchers.append(CallEvents(bus, on_error=failures.append))
    rec = registry.ensure("CA3", "twilio")
    rec.events.append("not a dict")      # a malformed event is published as a value
    rec.transcript.append(None)          # ... and a malformed line too
    registry.touch(rec)
    assert not failures
    bus.publish = None                   # type: ignore[method-assign,assignment]
    registry.apply_status("CA3", "twilio", "completed")
    assert failures and all(isinstance(f, TypeError) for f in failures)
    assert registry.get("CA3").ended_at is not None  # type: ignore[union-attr]
