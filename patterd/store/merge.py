"""One call's record from the snapshots of several writers (replicas).

With several replicas, a call's webhook, media socket and callbacks may each land on another
process, and each writes the part of the call it saw. Each writer's latest snapshot is kept
(``call_parts``) and the ``calls`` row is their merge, so no writer's snapshot erases what
another one recorded:

- lists (status history, events, transcript, turns): the union, duplicates dropped, in time
  order (``at``); a writer's own order is kept among equal times;
- identity fields: the first non-empty value; ``created_at`` the earliest, ``updated_at`` and
  ``ended_at`` the latest;
- the status: a terminal one when any writer saw the end (the latest of them), else the most
  advanced one (``in-progress`` over ``ringing`` over ``initiated``): a writer that knows less
  of the call never moves it back;
- the outcome: a specific one over ``completed`` (``transferred``, ``replica_lost``…); of two
  specific ones, that of the writer that saw the call end first (a replica that died after
  the call ended does not turn its outcome into ``replica_lost``);
- cost: the components summed over writers (each metered its own streams), the carrier's own
  price, when any writer got it, in place of the carrier estimate.

Every rule depends on what the parts say (their times included), not on the order in which
they reached the store, so the same parts written in any order give the same record.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
#: The statuses of a call before its end, least advanced first.
PROGRESS = ("queued", "initiated", "ringing", "in-progress")
GENERIC_OUTCOMES = ("", "completed")
COMPONENTS = ("carrier", "stt", "llm", "tts")


def _union(lists: Iterable[Sequence[Any]]) -> list[Any]:
    seen: set[str] = set()
    items: list[tuple[float, int, Any]] = []
    for lst in lists:
        for item in lst or ():
            key = json.dumps(item, sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            at = item.get("at") if isinstance(item, Mapping) else None
            items.append((at if isinstance(at, (int, float)) else 0.0, len(items), item))
    items.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in items]


def _first(parts: Sequence[Mapping[str, Any]], *keys: str) -> Any:
    for part in parts:
        for key in keys:
            value = part.get(key)
            if value not in (None, ""):
                return value
    return None


def _cost(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    costs = [p["cost"] for p in parts if isinstance(p.get("cost"), Mapping)]
    if not costs:
        return None
    out: dict[str, Any] = {}
    for cost in costs:   # the other keys (currency, …): from whichever part has them
        for key, value in cost.items():
            out.setdefault(key, value)
    for name in COMPONENTS:
        out[name] = round(sum(float(c.get(name) or 0.0) for c in costs), 6)
    reported = [c for c in costs if c.get("carrier_source") == "carrier"]
    if reported:
        out["carrier"] = max(float(c.get("carrier") or 0.0) for c in reported)
        out["carrier_source"] = "carrier"
    out["billed_seconds"] = sum(float(c.get("billed_seconds") or 0.0) for c in costs)
    out["total"] = round(sum(out[name] for name in COMPONENTS), 6)
    return out


def _status(parts: Sequence[Mapping[str, Any]]) -> str:
    """The latest terminal status, else the most advanced one (an unknown one ranks
    lowest); ties go to the later ``updated_at``, then to the name."""
    def rank(part: Mapping[str, Any]) -> tuple[int, float, str]:
        status = str(part.get("status") or "")
        level = (len(PROGRESS) if status in TERMINAL
                 else PROGRESS.index(status) if status in PROGRESS else -1)
        return level, float(part.get("updated_at") or 0.0), status

    return max(rank(p) for p in parts)[2] or "initiated"


def _outcome(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """The specific outcome of the writer that saw the end first, else ``completed`` when a
    writer says so, else none."""
    specific = [(float(p.get("ended_at") or float("inf")), str(p["outcome"])) for p in parts
                if p.get("outcome") not in (None, *GENERIC_OUTCOMES)]
    if specific:
        return min(specific)[1]
    return "completed" if any(p.get("outcome") == "completed" for p in parts) else None


def merge_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The call record made of several writers' snapshots (in any order)."""
    if len(parts) == 1:
        return dict(parts[0])
    # Oldest view of the call first, by what each writer recorded (not by when its part
    # reached the store), so that the same parts always merge alike.
    parts = sorted(parts, key=lambda p: (float(p.get("created_at") or 0.0),
                                         float(p.get("updated_at") or 0.0)))
    latest = max(parts, key=lambda p: float(p.get("updated_at") or 0.0))
    ended = [p for p in parts if p.get("ended_at") is not None]
    merged: dict[str, Any] = dict(latest)
    merged.update({
        "carrier": _first(parts, "carrier") or "",
        "direction": _first([p for p in parts if p.get("direction") != "inbound"] + list(parts),
                            "direction") or "inbound",
        "from": _first(parts, "from", "from_number") or "",
        "to": _first(parts, "to", "to_number") or "",
        "status": _status(parts),
        "outcome": _outcome(parts),
        "created_at": min(float(p.get("created_at") or latest.get("created_at") or 0.0)
                          for p in parts),
        "updated_at": float(latest.get("updated_at") or 0.0),
        "ended_at": max(float(p["ended_at"]) for p in ended) if ended else None,
        "status_history": _union(p.get("status_history", p.get("history")) or []
                                 for p in parts),
        "events": _union(p.get("events") or [] for p in parts),
        "transcript": _union(p.get("transcript") or [] for p in parts),
        "turns": [t for p in parts for t in (p.get("turns") or [])],
        "cost": _cost(parts),
    })
    merged.pop("history", None)
    merged.pop("from_number", None)
    merged.pop("to_number", None)
    merged["dtmf"] = "".join(str(line.get("dtmf", "")) for line in merged["transcript"]
                             if isinstance(line, Mapping))
    return merged


#: The writer name of a row stored before parts existed (it becomes that call's first part).
LEGACY_WRITER = "legacy"


def writer_name() -> str:
    """This process's name as a writer of call parts: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: The writer name of the part that holds a carrier's price fetched after the call (by any
#: replica, even one that never held the call).
PRICE_WRITER = "carrier-price"


def carrier_price_part(record: Mapping[str, Any], price: float) -> dict[str, Any]:
    """A part that adds only the carrier's reported ``price`` to the stored ``record``: no
    lists, no metered components, and an ``updated_at`` of 0 so it never becomes the base
    of the merge."""
    amount = round(abs(float(price)), 6)
    return {
        "call_id": record["call_id"], "carrier": record.get("carrier") or "",
        "direction": record.get("direction") or "inbound",
        "from": record.get("from") or "", "to": record.get("to") or "",
        "status": record.get("status") or "completed", "outcome": None,
        "created_at": record.get("created_at"), "updated_at": 0.0,
        "ended_at": record.get("ended_at"),
        "cost": {"carrier": amount, "stt": 0.0, "llm": 0.0, "tts": 0.0, "total": amount,
                 "carrier_source": "carrier", "billed_seconds": 0.0},
    }


__all__ = ["LEGACY_WRITER", "PRICE_WRITER", "writer_name", "carrier_price_part", "merge_parts"]
