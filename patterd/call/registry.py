"""This process's view of the calls it has seen: state, status history and carrier events.

Memory stays flat under churn. With a store (``on_change`` feeds the store writer), an ended
call is *evicted* — dropped from memory — once the store writer says its latest snapshot is
stored (:meth:`CallRegistry.settled`) and ``evict_after`` seconds have passed since its end
(late carrier callbacks and prices within that grace merge in memory). A record with changes
not yet stored, or whose media stream is still open here, is never evicted. What remains of
an evicted call is a small tombstone (:class:`Evicted`, for ``tomb_seconds``): enough that a
late callback never makes it a live call again (:meth:`CallRegistry.ensure` gives back an ended
stand-in, never written) and that the gateway knows to bring the stored record back
(:meth:`CallRegistry.restore`, see :mod:`patterd.call.evicted`). Without a store nothing is
ever settled: the registry holds at most ``max_records`` records, ended ones dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..ops.logging import get_logger
from .call_record import (GENERIC_OUTCOMES, MAX_EVENTS_PER_CALL, TERMINAL, CallRecord,
                          Evicted, most_specific)

log = get_logger("patterd.registry")

#: Seconds after its end that a stored call stays in memory (late callbacks merge there).
EVICT_AFTER = 60.0
#: Seconds after its end that an evicted call's tombstone is kept.
TOMB_SECONDS = 3600.0


class CallRegistry:
    """Calls by carrier call id, bounded in size; ended calls are evicted first."""

    def __init__(self, max_records: int = 50_000, max_call_seconds: float = 3600.0, *,
                 evict_after: float = EVICT_AFTER, tomb_seconds: float = TOMB_SECONDS) -> None:
        self._calls: dict[str, CallRecord] = {}
        self._live: OrderedDict[str, CallRecord] = OrderedDict()    # oldest first
        self._ended: OrderedDict[str, None] = OrderedDict()         # in the order they ended
        self._max = max_records
        self._max_call_seconds = max_call_seconds
        self._next_sweep = 0.0
        self.evict_after = evict_after
        self.tomb_seconds = tomb_seconds
        # Ended calls whose latest snapshot is stored, in the order they were settled.
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._evicted: OrderedDict[str, Evicted] = OrderedDict()    # in eviction order
        self.evictions = 0                                          # calls evicted so far
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
            gone = self._evicted.pop(call_id, None)
            if gone is not None:
                # A late update of an evicted call the gateway did not bring back (the store
                # could not be read): it stays over, and this stand-in is never written.
                log.warning("evicted_call_update_not_stored", call_id=call_id)
                rec = gone.stand_in(call_id, carrier)
                self._calls[call_id] = rec
                self._ended[call_id] = None
                self._settled[call_id] = None
            else:
                rec = CallRecord(call_id=call_id, carrier=carrier)
                self._calls[call_id] = rec
                self._live[call_id] = rec
                self._evict_due(time.time())
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
        """Tell the store (if any) and the watchers the record changed; never blocks.

        An evicted record that something still held (say a price fetch) and changed comes
        back: it is whole, and its change is written like any other."""
        if self._calls.get(rec.call_id) is not rec and self._evicted.pop(rec.call_id, None):
            self._calls[rec.call_id] = rec
            self._ended[rec.call_id] = None
            if rec.leg_id:
                self._legs[rec.leg_id] = rec.call_id
        if self.on_change is not None and not rec.stub:
            rec.dirty = True
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
            self._evict_due(now)
        return len(self._live)

    def _close(self, rec: CallRecord, outcome: str, now: float) -> None:
        rec.ended_at = now
        rec.outcome = rec.outcome or outcome
        self._live.pop(rec.call_id, None)
        self._ended[rec.call_id] = None
        self.touch(rec)

    # -- eviction of stored ended calls -------------------------------------------------------

    def settled(self, call_id: str) -> None:
        """The store writer's hook: the latest snapshot of ``call_id`` is stored (no newer
        one is waiting). An ended call then becomes evictable, ``evict_after`` seconds after
        its end."""
        rec = self._calls.get(call_id)
        if rec is None:
            return
        rec.dirty = False
        now = time.time()
        if rec.ended_at is not None:
            if rec.ended_at + self.evict_after <= now and call_id not in self._held:
                self._settled.pop(call_id, None)   # its grace is over already: it goes now
                self._drop(call_id, rec)
            else:   # (queued in the order calls settle, which is about the order they end)
                self._settled[call_id] = None
                self._settled.move_to_end(call_id)
        self._evict_due(now)

    def evicted(self, call_id: str) -> Evicted | None:
        """The tombstone of ``call_id`` when it was evicted (and not brought back)."""
        return self._evicted.get(call_id)

    def call_of_leg(self, leg_id: str) -> str:
        """The call id of the Telnyx leg ``leg_id``, held or evicted; ``""`` if unknown."""
        return self._legs.get(leg_id, "") if leg_id else ""

    def restore(self, rec: CallRecord) -> CallRecord:
        """Bring back an evicted call's ``rec`` as read from the store (so that a late
        update merges into it and the whole record is written again); the one held
        meanwhile, if any, wins. The restored record is settled: it is what is stored."""
        held = self._calls.get(rec.call_id)
        if held is not None:
            return held
        gone = self._evicted.pop(rec.call_id, None)
        if gone is not None and gone.leg_id and not rec.leg_id:
            rec.leg_id = gone.leg_id
        if rec.ended_at is None:   # (an evicted call had ended: its part says so)
            rec.ended_at = gone.ended_at if gone is not None else time.time()
        rec.dirty = False
        self._calls[rec.call_id] = rec
        self._ended[rec.call_id] = None
        self._settled[rec.call_id] = None
        if rec.leg_id:
            self._legs[rec.leg_id] = rec.call_id
        self._trim()
        return rec

    def _evict_due(self, now: float) -> None:
        """Evict the settled ended calls whose grace is over, oldest settled first (a call
        settled after its grace went at once: those queued are in about the order of their
        ends)."""
        settled = self._settled
        while settled:
            call_id = next(iter(settled))
            rec = self._calls.get(call_id)
            if rec is None or rec.ended_at is None or rec.dirty or call_id in self._held:
                del settled[call_id]     # changed since (settled again once written) or gone
                continue
            if rec.ended_at + self.evict_after > now:
                break
            del settled[call_id]
            self._drop(call_id, rec)
        self._prune_tombs(now)

    def _drop(self, call_id: str, rec: CallRecord) -> None:
        """Forget an ended record, keeping its tombstone."""
        del self._calls[call_id]
        self._ended.pop(call_id, None)
        self._evicted[call_id] = Evicted(rec)
        self.evictions += 1

    def _prune_tombs(self, now: float) -> None:
        tombs, limit = self._evicted, now - self.tomb_seconds
        while tombs:
            call_id, gone = next(iter(tombs.items()))
            if gone.ended_at >= limit and len(tombs) <= self._max:
                break
            del tombs[call_id]
            if gone.leg_id and self._legs.get(gone.leg_id) == call_id:
                del self._legs[gone.leg_id]

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
                self._settled.pop(call_id, None)
                if rec.leg_id:
                    self._legs.pop(rec.leg_id, None)
                dropped += 1
        # Tombstones of calls the store no longer has: a late update is a new record.
        tombs = self._evicted
        while tombs:
            call_id, gone = next(iter(tombs.items()))
            if gone.ended_at >= cutoff:
                break
            del tombs[call_id]
            if gone.leg_id and self._legs.get(gone.leg_id) == call_id:
                del self._legs[gone.leg_id]
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
        """Evict the longest-ended records first, then (all live) the oldest: O(1) each.
        With a store, an ended one leaves its tombstone (its snapshot, if not stored yet,
        waits in the store writer)."""
        while len(self._calls) > self._max:
            if self._ended:
                call_id, _ = self._ended.popitem(last=False)
            else:
                call_id, _ = self._live.popitem(last=False)
            rec = self._calls.pop(call_id, None)
            self._settled.pop(call_id, None)
            if rec is None:
                continue
            if rec.ended_at is not None and self.on_change is not None:
                self._evicted[call_id] = Evicted(rec)
                self._prune_tombs(time.time())
            elif rec.leg_id:
                self._legs.pop(rec.leg_id, None)


__all__ = ["EVICT_AFTER", "GENERIC_OUTCOMES", "MAX_EVENTS_PER_CALL", "TERMINAL",
           "TOMB_SECONDS", "CallRecord", "CallRegistry", "Evicted", "most_specific"]
