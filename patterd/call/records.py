"""A call record as the admin API and the store see it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..ops.cost import Usage
from .registry import CallRecord

USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


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


def usage_dict(usage: Usage) -> dict[str, Any]:
    """``usage`` as JSON-ready fields (``Usage(**it)`` gives it back); cheaper than
    ``dataclasses.asdict``, which deep-copies."""
    out = {name: getattr(usage, name) for name in USAGE_FIELDS}
    out["stt_by"] = dict(usage.stt_by)
    out["tts_by"] = dict(usage.tts_by)
    out["llm_by"] = {k: list(v) for k, v in usage.llm_by.items()}
    return out


def snapshot(rec: CallRecord, streaming: bool) -> dict[str, Any]:
    """What this process writes to the store for the call: :func:`detail`, and while the call
    is live, what a crash recovery needs beyond it (kept in this writer's part only, not in
    the merged row): ``streaming`` (a media stream of the call is open in this process) and
    ``meter`` (usage and media seconds so far, and when that was)."""
    out = detail(rec)
    if rec.ended_at is None and not rec.handed_off:
        usage, seconds = rec.metered()
        out["meter"] = {"at": time.time(), "media_seconds": round(seconds, 3),
                        "usage": usage_dict(usage)}
        if streaming:
            out["streaming"] = True
    return out
