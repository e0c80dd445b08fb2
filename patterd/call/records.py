"""A call record as the admin API and the store see it."""

from __future__ import annotations

import dataclasses
import time
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


def snapshot(rec: CallRecord, streaming: bool) -> dict[str, Any]:
    """What this process writes to the store for the call: :func:`detail`, and while the call
    is live, what a crash recovery needs beyond it (kept in this writer's part only, not in
    the merged row): ``streaming`` (a media stream of the call is open in this process) and
    ``meter`` (usage and media seconds so far, and when that was)."""
    out = detail(rec)
    if rec.ended_at is None:
        usage, seconds = rec.metered()
        out["meter"] = {"at": time.time(), "media_seconds": round(seconds, 3),
                        "usage": dataclasses.asdict(usage)}
        if streaming:
            out["streaming"] = True
    return out
