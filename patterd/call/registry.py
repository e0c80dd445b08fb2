"""This process's view of the calls it has seen: state, status history and carrier events.

Persistence to the shared store comes with the store; until then the registry is bounded so
that a long-running daemon keeps a flat memory profile.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ops.cost import Usage

TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
MAX_EVENTS_PER_CALL = 500
# Outcomes that say no more than "the call ended" (as the store's merge of replicas' parts).
GENERIC_OUTCOMES = frozenset({"", "completed"})


def most_specific(*outcomes: str) -> str:
    """The first outcome that says more than "completed" (the session's ``transferred`` over
    the carrier's hang-up); else ``completed`` when one is given; else ``""``."""
    for outcome in outcomes:
        if outcome not in GENERIC_OUTCOMES:
            return outcome
    return "completed" if "completed" in outcomes else ""


@dataclass(slots=True)
class CallRecord:
    """What we know of one call."""

    call_id: str
    carrier: str
    direction: str = "inbound"
    from_number: str = ""
    to_number: str = ""
    status: str = "initiated"
    status_sequence: int = -1
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    outcome: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    leg_id: str = ""          # Telnyx call_leg_id (recording events name only the leg)
    usage: Usage = field(default_factory=Usage)     # metered across the call's ended streams
    media_seconds: float = 0.0
    # The streams of the call open in this process: their usage and media seconds so far,
    # refreshed as their lines are written (the store's snapshot carries the sum, so that a
    # crash loses at most what was metered since the last line).
    streams: dict[int, tuple[Usage, float]] = field(default_factory=dict)
    billed_from_carrier: bool = False   # media_seconds is the carrier's duration (no stream)
    cost: dict[str, Any] | None = None
    carrier_price: float | None = None              # the carrier's own figure, when reported
    transcript: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    # How the call ends, as learnt before it is settled: what the carrier reported while our
    # media stream was still open, and what the gateway set out to do (e.g. a voicemail
    # hang-up whose REST answer races the carrier's report).
    carrier_outcome: str = ""
    expected: str = ""
    timed: bool = False       # observed in patterd_call_duration_seconds
    counted: bool = False     # counted in patterd_calls_total
    # Taken over from a process that died holding the call: what that process wrote is in
    # its own part of the stored record, so the store's merge, not this, is the account.
    adopted: bool = False

    @property
    def live(self) -> bool:
        """Not yet in a terminal state."""
        return self.ended_at is None

    def metered(self) -> tuple[Usage, float]:
        """Usage and media seconds so far: the ended streams' and the open ones'."""
        if not self.streams:
            return self.usage, self.media_seconds
        usage, seconds = Usage(), self.media_seconds
        usage.add(self.usage)
        for used, stream_seconds in self.streams.values():
            usage.add(used)
            seconds += stream_seconds
        return usage, seconds


class CallRegistry:
    """Calls by carrier call id, bounded in size; ended calls are evicted first."""

    def __init__(self, max_records: int = 50_000, max_call_seconds: float = 3600.0) -> None:
        self._calls: dict[str, CallRecord] = {}
        self._live: OrderedDict[str, CallRecord] = OrderedDict()    # oldest first
        self._ended: OrderedDict[str, None] = OrderedDict()         # in the order they ended
        self._max = max_records
        self._max_call_seconds = max_call_seconds
        self._next_sweep = 0.0
        self._legs: dict[str, str] = {}
        self._held: dict[str, int] = {}     # call id → media streams open in this process
        self.on_change: Callable[[CallRecord], None] | None = None  # e.g. the store writer
        # Also told of every change, after on_change (e.g. the live events); never raise.
        self.watchers: list[Callable[[CallRecord], None]] = []

    def get(self, call_id: str) -> CallRecord | None:
        """The record, if any."""
        return self._calls.get(call_id)

    def ensure(self, call_id: str, carrier: str, **fields: Any) -> CallRecord:
        """The record for ``call_id``, created on first sight; empty fields never overwrite."""
        rec = self._calls.get(call_id)
        if rec is None:
            rec = CallRecord(call_id=call_id, carrier=carrier)
            self._calls[call_id] = rec
            self._live[call_id] = rec
            self._trim()
        for key, value in fields.items():
            if value not in (None, ""):
                setattr(rec, key, value)
        if rec.leg_id:
            self._legs[rec.leg_id] = call_id
        rec.updated_at = time.time()
        self.touch(rec)
        return rec

    def touch(self, rec: CallRecord) -> None:
        """Tell the store (if any) and the watchers the record changed; never blocks."""
        if self.on_change is not None:
            self.on_change(rec)
        for watch in self.watchers:
            watch(rec)

    def hold(self, call_id: str) -> None:
        """A media stream of the call opened in this process: until it is released, a
        terminal status does not end the call (the stream's end settles the outcome). The
        stored record says so (a crash recovery then knows this process held the call)."""
        self._held[call_id] = self._held.get(call_id, 0) + 1
        rec = self._calls.get(call_id)
        if rec is not None:
            self.touch(rec)

    def release(self, call_id: str) -> None:
        """The media stream of :meth:`hold` was recorded (or given up on)."""
        left = self._held.pop(call_id, 0) - 1
        if left > 0:
            self._held[call_id] = left

    def held(self, call_id: str) -> bool:
        """Whether a media stream of the call is open (or still closing) here."""
        return call_id in self._held

    def apply_status(self, call_id: str, carrier: str, status: str,
                     sequence: int | None = None, *, outcome: str = "", **detail: Any
                     ) -> bool:
        """Record a status; an older sequence number than one applied is kept in history
        but does not move the state backwards. Returns True if the state changed.

        A terminal status ends the call with ``outcome`` (default: the status) unless the
        gateway expects a more specific one; while a media stream of the call is held here,
        the outcome is only remembered and the stream's end settles it."""
        rec = self.ensure(call_id, carrier)
        now = time.time()
        rec.history.append({"status": status, "sequence": sequence, "at": now, **detail})
        # Carrier sequence numbers order callbacks; our own entries (no number) come first.
        rec.history.sort(key=lambda h: (-1 if h["sequence"] is None else h["sequence"], h["at"]))
        if sequence is not None:
            if sequence <= rec.status_sequence:
                return False
            rec.status_sequence = sequence
        if rec.ended_at is not None:
            if status in TERMINAL and rec.status not in TERMINAL:
                rec.status = status   # the carrier's last word; our outcome stays
            self.touch(rec)
            return False  # a terminal state is final
        rec.status = status
        if status in TERMINAL:
            reported = outcome or status.replace("-", "_")
            if call_id in self._held:
                rec.carrier_outcome = reported
            else:
                self._close(rec, most_specific(rec.expected, reported), now)
        self.touch(rec)
        return True

    def add_event(self, call_id: str, carrier: str, kind: str, **data: Any) -> CallRecord:
        """Append a carrier or gateway event (AMD verdict, recording, …) to the call."""
        rec = self.ensure(call_id, carrier)
        if len(rec.events) < MAX_EVENTS_PER_CALL:
            rec.events.append({"type": kind, "at": time.time(), **data})
        self.touch(rec)
        return rec

    def end(self, call_id: str, outcome: str) -> None:
        """Mark a call ended with ``outcome`` (idempotent)."""
        rec = self._calls.get(call_id)
        if rec is not None and rec.ended_at is None:
            self._close(rec, outcome, time.time())

    def finish(self, call_id: str, carrier: str, outcome: str) -> bool:
        """End the call with the most specific of ``outcome``, the one the gateway expected
        and the one the carrier reported meanwhile; True only the first time (count it
        then)."""
        rec = self.ensure(call_id, carrier)
        if rec.ended_at is not None:
            return False
        self._close(rec, most_specific(outcome, rec.expected, rec.carrier_outcome)
                    or "completed", time.time())
        return True

    def refine_outcome(self, call_id: str, outcome: str) -> bool:
        """An ended call whose outcome says no more than "completed" gets ``outcome``, a
        cause learnt after its end (a survivor found the replica that held it dead). True
        when it changed."""
        rec = self._calls.get(call_id)
        if rec is None or rec.ended_at is None or rec.outcome not in GENERIC_OUTCOMES:
            return False
        rec.outcome = outcome
        self.touch(rec)
        return True

    def live_count(self) -> int:
        """Calls not ended and younger than ``max_call_seconds`` (stale ones are closed;
        the live set is kept oldest first, so the sweep stops at the first young call)."""
        now = time.time()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            limit = now - self._max_call_seconds
            while self._live:
                rec = next(iter(self._live.values()))
                if rec.created_at > limit:
                    break
                self._close(rec, "expired", now)
        return len(self._live)

    def _close(self, rec: CallRecord, outcome: str, now: float) -> None:
        rec.ended_at = now
        rec.outcome = rec.outcome or outcome
        self._live.pop(rec.call_id, None)
        self._ended[rec.call_id] = None
        self.touch(rec)

    def forget_ended_before(self, cutoff: float) -> int:
        """Drop the records of calls that ended before ``cutoff`` (wall-clock seconds), as
        the retention sweep deleted them from the store; returns how many were dropped.
        Ended calls are kept in the order they ended, so this stops at the first younger."""
        dropped = 0
        while self._ended:
            call_id = next(iter(self._ended))
            rec = self._calls.get(call_id)
            if rec is not None and rec.ended_at is not None and rec.ended_at >= cutoff:
                break
            self._ended.popitem(last=False)
            if rec is not None:
                del self._calls[call_id]
                if rec.leg_id:
                    self._legs.pop(rec.leg_id, None)
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._calls)

    def by_leg(self, leg_id: str) -> CallRecord | None:
        """The call whose Telnyx leg is ``leg_id``."""
        call_id = self._legs.get(leg_id)
        return self._calls.get(call_id) if call_id else None

    def records(self) -> list[CallRecord]:
        """Every record held (a snapshot)."""
        return list(self._calls.values())

    def _trim(self) -> None:
        """Evict the longest-ended records first, then (all live) the oldest: O(1) each."""
        while len(self._calls) > self._max:
            if self._ended:
                call_id, _ = self._ended.popitem(last=False)
            else:
                call_id, _ = self._live.popitem(last=False)
            rec = self._calls.pop(call_id, None)
            if rec is not None and rec.leg_id:
                self._legs.pop(rec.leg_id, None)
