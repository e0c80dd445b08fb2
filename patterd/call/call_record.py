"""One call's record as this process holds it (:class:`CallRecord`), and what is kept of one
evicted from memory (:class:`Evicted`); the registry (:mod:`.registry`) holds them."""

from __future__ import annotations

import time
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
    # Changed since the store writer last said this record's latest snapshot is stored.
    dirty: bool = False
    # An evicted call's stand-in, made when a late update came and its stored record could
    # not be read back: ended, never written (it would replace what the store holds).
    stub: bool = False
    # Moved to another replica on drain: that replica carries its usage and prices the call
    # (this part keeps its lines and events, not a meter a crash recovery would count again).
    handed_off: bool = False

    @property
    def live(self) -> bool:
        """Not yet in a terminal state."""
        return self.ended_at is None

    @property
    def served_here(self) -> bool:
        """Its media stream was served by this process (not billed from the carrier's
        duration alone)."""
        return self.media_seconds > 0 and not self.billed_from_carrier

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


class Evicted:
    """What is kept of an evicted call: enough to tell a late update that the call is over
    (and how it ended), to find it by its Telnyx leg, and whether it was served here."""

    __slots__ = ("ended_at", "status", "outcome", "leg_id", "served")

    def __init__(self, rec: CallRecord) -> None:
        self.ended_at: float = rec.ended_at if rec.ended_at is not None else time.time()
        self.status = rec.status if rec.status in TERMINAL else "completed"
        self.outcome = rec.outcome or "completed"
        self.leg_id = rec.leg_id
        self.served = rec.served_here

    def stand_in(self, call_id: str, carrier: str) -> CallRecord:
        """An ended record standing for the call (see ``CallRecord.stub``)."""
        return CallRecord(call_id=call_id, carrier=carrier, status=self.status,
                          ended_at=self.ended_at, outcome=self.outcome, leg_id=self.leg_id,
                          counted=True, timed=True, stub=True)


__all__ = ["GENERIC_OUTCOMES", "MAX_EVENTS_PER_CALL", "TERMINAL", "CallRecord", "Evicted",
           "most_specific"]
