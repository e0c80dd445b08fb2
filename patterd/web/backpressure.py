"""The webhook door's back-pressure: while the store writer is backed up, a carrier webhook
that would add another call's record waits briefly for room, then gets a 503 with
``Retry-After`` — the record is never taken in and then dropped.

Why wait first, then refuse. What the carriers do with a 5xx:
- Twilio (docs: "Webhooks (HTTP callbacks): Connection Overrides") retries a webhook only as
  its URL's fragment says: retry count ``rc`` (default 1, at most 5) under retry policy ``rp``
  (``ct``, ``rt``, ``4xx``, ``5xx``, ``all``; the default is taken to be ``ct``, connection
  failures only — not confirmed), all tries within a total of 15 s at most. So a 503 callback
  is likely not sent again by default; with ``#rp=ct,rt,5xx&rc=5`` it is retried within those
  15 s (README says how to set it).
- Telnyx (Call Control API) retries failed webhook deliveries per its retry policy (per
  command ``webhook_retries_policies``: up to 5 retries within 60 s) and has a failover URL.
So a short wait for room, well inside the 15 s a Twilio webhook may take, absorbs a burst with
no retry needed from any carrier; only past it does the 503 hand the delivery back. The
refusal is what keeps memory bounded: the writer holds at most one snapshot per call, a
request let in holds a place in its count until answered, and while it is backed up no
other call's record is taken in.

Never held back: an update to a call whose snapshot is already pending (it replaces it), to
a call still live here (its record is written anyway; live calls are bounded by
``server.max_calls``) or whose media stream this process served in the last minutes (its
final callbacks), and a new call's first webhook (a caller is on the line). What is held back
is everything else: callbacks about calls this process never served (a flood of them is what
can outgrow the store).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from ..gateway import Gateway

WAIT = 2.0          # seconds a webhook may wait for room before its 503
MAX_WAITING = 1000  # webhooks waiting at once; more are refused at once (each holds a socket)
RETRY_AFTER_UNKNOWN = 5   # seconds, when the store has written nothing lately to measure by
SERVED_GRACE = 600.0      # seconds after a call served here ends that its callbacks pass
_PLACE = web.RequestKey("store_place", object)   # the writer whose place the request holds


async def admit(request: web.Request, gw: Gateway, call_id: str, *,
                opens_call: bool = False) -> None:
    """Return when the webhook about ``call_id`` may change records; otherwise raise a 503
    with ``Retry-After``. Call it after the signature check and before the webhook is marked
    as seen (a refused delivery must count as new when the carrier retries it).

    A request let in that may add another call's record holds a place in the writer's count
    until it is answered (:func:`middleware` gives it back): requests let in together cannot
    push the backlog past the mark. ``opens_call``: the webhook is a new call's first — a
    caller is on the line; the call becomes live, or is declined busy at ``max_calls``,
    either way at the rate people call, and a 503 would play them an application error."""
    writer = gw.store_writer
    if writer is None or (call_id and (writer.holds(call_id) or _served_here(gw, call_id))):
        return
    if opens_call:   # a caller is waiting: answered, or declined busy — never a 503
        return
    if not writer.backed_up:
        _hold_place(request, writer)
        return
    counter = gw.metrics.store_backpressure
    if writer.waiting < MAX_WAITING and await writer.room(WAIT):
        counter.labels("delayed").inc()
        _hold_place(request, writer)
        return
    counter.labels("refused").inc()
    eta = writer.drain_eta()
    retry_after = RETRY_AFTER_UNKNOWN if eta is None else min(30, max(1, math.ceil(eta)))
    raise web.HTTPServiceUnavailable(
        headers={"Retry-After": str(retry_after)}, content_type="application/json",
        text=json.dumps({"error": "call records are waiting for the store; retry later",
                         "retry_after": retry_after}))


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Gives back the place a request let in by :func:`admit` held, once it is answered."""
    try:
        return await handler(request)
    finally:
        writer = request.get(_PLACE)
        if writer is not None:
            writer.release()


def _hold_place(request: web.Request, writer: Any) -> None:
    if _PLACE not in request:
        writer.reserve()
        request[_PLACE] = writer


def _served_here(gw: Gateway, call_id: str) -> bool:
    """Live here, or its media stream was served here and it ended lately: the carrier's
    callbacks that follow such a call (completed, recording, AMD) belong to traffic this
    process took in through the door; they are as many as the calls it served."""
    rec = gw.registry.get(call_id)
    if rec is None:   # evicted from memory since its end (the store holds it)?
        gone = gw.registry.evicted(call_id)
        return gone is not None and gone.served and time.time() - gone.ended_at < SERVED_GRACE
    if rec.ended_at is None:
        return True
    return rec.served_here and time.time() - rec.ended_at < SERVED_GRACE
