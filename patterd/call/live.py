"""Calls as live events: every change of a call record becomes the events it stands for.

:class:`CallEvents` watches the registry (it is called on every ``touch`` of a record) and
compares the record with what it has already published for that call — a few integer and
string comparisons per change, nothing per media frame. It publishes on the
:class:`~patterd.ops.events.EventBus`:

``call_start``   a call was first seen: ``call_id, carrier, direction, from, to, status,
                 created_at`` (numbers masked to their last four digits)
``call_status``  its status or outcome changed: ``call_id, status, outcome, at``
``transcript_partial``  an agent line that is still playing: ``call_id, index, role, text,
                 at, playing`` (its ``turn_complete`` follows with the same index)
``turn_complete``  a transcript line is final: ``call_id, index, role, text, at`` and, when
                 so, ``dtmf`` (a key) and ``interrupted`` (the agent was cut short)
``turn_latency`` one turn's latencies: ``call_id, index`` and the stages in seconds
``call_event``   a carrier or gateway event of the call (transfer, AMD, recording, hang-up,
                 dial…): ``call_id, type, at`` and the event's own fields
``call_end``     the call ended: ``call_id, outcome, status, ended_at, duration, cost``
``call_cost``    its cost changed after the end (the carrier's own price): ``call_id, cost``

A transcript line reaches the record when the session writes it there; a session that keeps
its lines until the stream ends hands them over as they happen through
:meth:`CallEvents.transcript` (a list that publishes on ``append``), and the record's lines
that were published that way are not published again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ops.events import EventBus
from ..ops.logging import get_logger, mask_phone

log = get_logger("patterd.events")

MAX_ENDED_REMEMBERED = 2000   # ended calls whose late changes (a price, a recording) still count


@dataclass(slots=True)
class _Seen:
    """What has been published of one call."""

    status: str = ""
    outcome: str = ""
    lines: int = 0                  # transcript entries published (final or partial)
    partial: dict[int, str] = field(default_factory=dict)   # index → text, still playing
    events: int = 0
    turns: int = 0
    ended: bool = False
    cost: Any = None
    shown: list[dict[str, Any]] = field(default_factory=list)   # the lines, for snapshots


def masked(number: str) -> str:
    """A phone number or SIP URI with all but its last four digits masked."""
    return mask_phone(number) if number else ""


class CallEvents:
    """The registry watcher publishing call events on ``bus`` (see the module docstring)."""

    def __init__(self, bus: EventBus, on_error: Callable[[BaseException], None] | None = None
                 ) -> None:
        self.bus = bus
        self._on_error = on_error
        self._live: dict[str, _Seen] = {}
        self._ended: OrderedDict[str, _Seen] = OrderedDict()

    # -- the registry's watcher --------------------------------------------------------------
    def __call__(self, rec: Any) -> None:
        """A record changed: publish what is new. Never raises."""
        try:
            self._changed(rec)
        except Exception as exc:  # noqa: BLE001 - an event bug never reaches the call
            if self._on_error is not None:
                self._on_error(exc)
            else:
                log.warning("event_publish_failed", call_id=getattr(rec, "call_id", ""),
                            error=repr(exc))

    def _changed(self, rec: Any) -> None:
        call_id = rec.call_id
        seen = self._live.get(call_id) or self._ended.get(call_id)
        publish = self.bus.publish
        if seen is None:
            seen = _Seen()
            if rec.ended_at is not None:
                # Ended before this process published anything of it (or forgotten since):
                # only what changes from now on is news.
                seen.status, seen.outcome, seen.ended = rec.status, rec.outcome, True
                seen.lines, seen.events, seen.turns = (len(rec.transcript), len(rec.events),
                                                       len(rec.turns))
                seen.cost = rec.cost
                self._remember_ended(call_id, seen)
                return
            self._live[call_id] = seen
            seen.status = rec.status
            publish("call_start", {
                "call_id": call_id, "carrier": rec.carrier, "direction": rec.direction,
                "from": masked(rec.from_number), "to": masked(rec.to_number),
                "status": rec.status, "created_at": rec.created_at})
        ending = rec.ended_at is not None and not seen.ended
        outcome = rec.outcome or ""
        # an outcome that comes with the end is told by call_end
        if rec.status != seen.status or (outcome != seen.outcome and not ending):
            publish("call_status", {"call_id": call_id, "status": rec.status,
                                    "outcome": outcome or None, "at": time.time()})
        seen.status, seen.outcome = rec.status, outcome
        transcript = rec.transcript
        if len(transcript) > seen.lines or seen.partial:
            self._lines(call_id, seen, transcript)
        events = rec.events
        if len(events) > seen.events:
            for event in events[seen.events:]:
                publish("call_event", {**_fields(event), "call_id": call_id})
            seen.events = len(events)
        turns = rec.turns
        if len(turns) > seen.turns:
            for index in range(seen.turns, len(turns)):
                publish("turn_latency", {**_fields(turns[index]), "call_id": call_id,
                                         "index": index})
            seen.turns = len(turns)
        if ending:
            seen.ended, seen.cost = True, rec.cost
            publish("call_end", {"call_id": call_id, "outcome": rec.outcome or None,
                                 "status": rec.status, "ended_at": rec.ended_at,
                                 "duration": round(max(0.0, rec.ended_at - rec.created_at), 3),
                                 "cost": rec.cost})
            del self._live[call_id]
            seen.shown = []
            self._remember_ended(call_id, seen)
        elif seen.ended and rec.cost != seen.cost:
            seen.cost = rec.cost
            publish("call_cost", {"call_id": call_id, "cost": rec.cost})

    def _lines(self, call_id: str, seen: _Seen, transcript: list[dict[str, Any]]) -> None:
        for index, text in list(seen.partial.items()):   # older lines first
            line = transcript[index] if index < len(transcript) else None
            if not isinstance(line, dict):
                del seen.partial[index]
            elif not line.get("playing") or line.get("text") != text:
                self._line(call_id, seen, index, line)
        for index in range(seen.lines, len(transcript)):
            self._line(call_id, seen, index, transcript[index])
        seen.lines = len(transcript)

    def _line(self, call_id: str, seen: _Seen, index: int, line: Any) -> None:
        entry = {**_fields(line), "call_id": call_id, "index": index}
        playing = bool(entry.get("playing"))
        if playing:
            seen.partial[index] = str(entry.get("text", ""))
        else:
            seen.partial.pop(index, None)
        if not seen.ended:
            if index < len(seen.shown):
                seen.shown[index] = entry
            else:
                seen.shown.append(entry)
        self.bus.publish("transcript_partial" if playing else "turn_complete", entry)

    def _remember_ended(self, call_id: str, seen: _Seen) -> None:
        self._ended[call_id] = seen
        self._ended.move_to_end(call_id)
        while len(self._ended) > MAX_ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    # -- lines a session hands over as they happen --------------------------------------------
    def transcript(self, call_id: str) -> list[Any]:
        """A list for a session's transcript lines (``Line`` objects) that publishes each
        line as it is appended (see the module docstring)."""
        return _LiveLines(self, call_id)

    def line_spoken(self, call_id: str, line: dict[str, Any]) -> None:
        """A session's line, before it reaches the record (counted as published)."""
        seen = self._live.get(call_id)
        if seen is None:
            return
        self._line(call_id, seen, seen.lines, line)
        seen.lines += 1

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self, records: list[Any]) -> dict[str, Any]:
        """The live calls among ``records`` as the events describe them, with their lines so
        far, and the id of the last event they include: a reader that then follows the
        stream from that id misses nothing."""
        calls = []
        for rec in records:
            if rec.ended_at is not None:
                continue
            seen = self._live.get(rec.call_id)
            calls.append({
                "call_id": rec.call_id, "carrier": rec.carrier, "direction": rec.direction,
                "from": masked(rec.from_number), "to": masked(rec.to_number),
                "status": rec.status, "created_at": rec.created_at,
                "transcript": list(seen.shown) if seen is not None else []})
        calls.sort(key=lambda c: c["created_at"])
        return {"calls": calls, "last_event_id": self.bus.last_id}


class _LiveLines(list):  # type: ignore[type-arg]
    """A session's transcript list that publishes each appended line."""

    __slots__ = ("_events", "_call_id")

    def __init__(self, events: CallEvents, call_id: str) -> None:
        super().__init__()
        self._events, self._call_id = events, call_id

    def append(self, line: Any) -> None:
        super().append(line)
        self._events.line_spoken(self._call_id, line.as_dict() if hasattr(line, "as_dict")
                                 else dict(line))


def _fields(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {"value": value}


__all__ = ["CallEvents", "MAX_ENDED_REMEMBERED", "masked"]
