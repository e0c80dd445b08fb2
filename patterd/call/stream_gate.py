"""Admitting a media stream's ``start``: the one place a carrier's socket becomes a call.

A ``start`` is served only when its stream token (:mod:`patterd.carriers.stream_token`)
verifies, names the call the ``start`` names — for a call we dialled, the dial the token was
minted for — and has not been used before (by this process, by another replica, or before a
restart: the spent token is remembered in the store). Call ids not shaped like the carrier's
are refused first.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..carriers.base import StreamStarted
from ..carriers.ids import describe, valid_call_id
from ..carriers.stream_token import Grant
from ..ops.logging import get_logger

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.media")

BIND_WAIT = 5.0       # a dialled call's stream may beat the dial's answer (or land elsewhere)
_POLL = 0.25
DIAL_MEMORY = 3600.0  # how long a dial's reference is remembered here


class DialRefs:
    """Which call each dial reference became (``POST /calls`` answered with its id).

    This process remembers its own dials; a stream landing on another replica (or here after
    a restart) finds the reference in the call's stored ``dial`` event."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, float]] = {}
        self._changed = asyncio.Event()

    def bind(self, ref: str, call_id: str) -> None:
        """The dial ``ref`` created the call ``call_id``."""
        now = time.monotonic()
        if len(self._calls) > 1000:
            self._calls = {r: v for r, v in self._calls.items() if now - v[1] < DIAL_MEMORY}
        self._calls[ref] = (call_id, now)
        self._changed.set()
        self._changed = asyncio.Event()

    def call_of(self, ref: str) -> str:
        """The call ``ref`` became, as far as this process knows (``""``: not known)."""
        entry = self._calls.get(ref)
        return entry[0] if entry else ""

    async def matches(self, gw: Gateway, ref: str, call_id: str,
                      timeout: float = BIND_WAIT) -> bool:
        """Whether the dial ``ref`` created ``call_id``, waiting up to ``timeout`` for the
        dial's answer (here or, through the store, on another replica)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            known = self.call_of(ref)
            if known:
                return known == call_id
            if await _stored_dial(gw, ref, call_id):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), min(_POLL, left))
            except TimeoutError:
                pass


async def _stored_dial(gw: Gateway, ref: str, call_id: str) -> bool:
    writer = getattr(gw, "store_writer", None)
    if writer is None:
        return False
    try:
        record = await writer.store.get_call(call_id)
    except Exception as exc:  # noqa: BLE001 - the store is away: this replica cannot tell
        log.warning("dial_lookup_failed", call_id=call_id, error=str(exc))
        return False
    events = (record or {}).get("events") or []
    return any(isinstance(e, dict) and e.get("type") == "dial" and e.get("stream_ref") == ref
               for e in events)


async def admit_start(gw: Gateway, carrier: str, grant: Grant | None,
                      start: StreamStarted) -> str:
    """``""`` when the stream may carry the call ``start`` names, else why not (counted in
    ``patterd_media_streams_refused_total{carrier,reason}``). On success the token's
    direction becomes the stream's (the rest of its context is what we handed the carrier)."""
    reason, problem = await _check(gw, carrier, grant, start)
    if problem:
        gw.metrics.media_refused.labels(carrier, reason).inc()
        log.warning("media_start_refused", carrier=carrier, reason=problem,
                    call_id=start.call_id if reason != "call_id" else "")
        return problem
    assert grant is not None
    start.parameters["direction"] = grant.direction
    return ""


async def _check(gw: Gateway, carrier: str, grant: Grant | None,
                 start: StreamStarted) -> tuple[str, str]:
    if not valid_call_id(carrier, start.call_id):
        return "call_id", f"the start names no call: expected {describe(carrier)}"
    if grant is None:
        return "token", "no valid stream token for this call"
    if grant.dial_ref:
        bound = await gw.dials.matches(gw, grant.dial_ref, start.call_id)
    else:
        bound = grant.subject == start.call_id
    if not bound:
        return "token", "the stream token was issued for another call"
    # Spent once: remembered until the token would have expired anyway (plus clock slack).
    ttl = max(1.0, grant.expires - time.time()) + 60.0
    if not await gw.first_delivery(("stream-token", carrier, grant.tag.hex()),
                                   durable_for=ttl):
        return "replay", "the stream token was used already"
    return "", ""


__all__ = ["BIND_WAIT", "DialRefs", "admit_start"]
