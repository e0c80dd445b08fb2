"""A call record as the admin API and the store see it."""

from __future__ import annotations

from typing import Any

from .registry import CallRecord


def summary(rec: CallRecord) -> dict[str, Any]:
    """A call in a list."""
    return {"call_id": rec.call_id, "carrier": rec.carrier, "direction": rec.direction,
            "from": rec.from_number, "to": rec.to_number, "status": rec.status,
            "outcome": rec.outcome or None, "created_at": rec.created_at,
            "ended_at": rec.ended_at}


def detail(rec: CallRecord) -> dict[str, Any]:
    """One call in full: status history, transcript, DTMF, events and turn latencies."""
    out = summary(rec)
    out.update({
        "status_history": rec.history,
        "transcript": rec.transcript,
        "dtmf": "".join(line.get("dtmf", "") for line in rec.transcript),
        "events": rec.events,
        "turns": rec.turns,
        "cost": rec.cost,
    })
    return out
