"""Bringing an evicted call's record back from the store when a late update comes for it.

The call registry drops an ended call from memory once the store holds it (see
:mod:`patterd.call.registry`). A carrier callback, an event or a price that comes after that
must not start the call over as a new, live record: :func:`recall` reads this process's own
part of the stored record (``Store.call_parts``, this writer's snapshot — not the merge of
all writers, whose costs would then be counted twice) and puts it back in the registry as
the ended call it is. The update then merges into it in memory and the whole record is
written again, as this writer's part; the store's merge (:mod:`patterd.store.merge`) keeps
what the other writers recorded.

When the store cannot be read, the registry's stand-in for the call keeps it ended (it is
never written, so the stored record is left as it was).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..ops.logging import get_logger
from .registry import CallRecord

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.registry")


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def record_from_part(part: Mapping[str, Any]) -> CallRecord:
    """The call record this process wrote as its part (a ``snapshot``), as the registry
    holds it: counted and timed already (it was, before it was evicted), its cost final."""
    cost = part.get("cost") if isinstance(part.get("cost"), dict) else None
    history = _list(part.get("status_history", part.get("history")))
    sequences = [h["sequence"] for h in history
                 if isinstance(h, dict) and isinstance(h.get("sequence"), int)]
    ended = part.get("ended_at")
    rec = CallRecord(
        call_id=str(part["call_id"]), carrier=str(part.get("carrier") or ""),
        direction=str(part.get("direction") or "inbound"),
        from_number=str(part.get("from") or ""), to_number=str(part.get("to") or ""),
        status=str(part.get("status") or "completed"),
        status_sequence=max(sequences, default=-1),
        created_at=_float(part.get("created_at"), time.time()),
        ended_at=None if ended is None else _float(ended, time.time()),
        outcome=str(part.get("outcome") or ""),
        history=history, events=_list(part.get("events")),
        transcript=_list(part.get("transcript")), turns=_list(part.get("turns")),
        cost=cost, counted=True, timed=True)
    if cost is not None:   # what was billed (a served call's media time, or the carrier's)
        rec.media_seconds = _float(cost.get("billed_seconds"), 0.0)
    return rec


async def recall(gw: Gateway, call_id: str,
                 bounded: Callable[[Awaitable[Any]], Awaitable[Any]]) -> CallRecord | None:
    """The registry's record of ``call_id``; an evicted one is first read back from this
    process's part in the store. None when the call is unknown here, or was evicted and
    its part cannot be read (then ``registry.ensure`` gives an ended stand-in).
    ``bounded`` limits how long the store may take (the gateway's shared-check timeout)."""
    registry = gw.registry
    rec = registry.get(call_id)
    if rec is not None or registry.evicted(call_id) is None:
        return rec
    writer = gw.store_writer
    if writer is None:
        return None
    store = writer.store
    part: Mapping[str, Any] | None = None
    try:
        parts = await bounded(store.call_parts(call_id))
    except Exception as exc:  # noqa: BLE001 - the store is away: the stand-in keeps it over
        log.warning("evicted_call_not_read", call_id=call_id,
                    error=str(exc) or type(exc).__name__)
    else:
        mine = getattr(store, "writer", None)
        part = next((data for name, data in parts if name == mine), None)
    held = registry.get(call_id)      # brought back meanwhile (another request for it)
    if held is not None:
        return held
    if part is None or registry.evicted(call_id) is None:
        return None
    return registry.restore(record_from_part(part))


__all__ = ["recall", "record_from_part"]
