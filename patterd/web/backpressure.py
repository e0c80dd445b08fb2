"""The webhook door's back-pressure: while the store writer is backed up, a carrier webhook
that would add another call's record waits briefly for room, then gets a 503 with
``Retry-After`` — the record is never taken in and then dropped.

Why wait first, then refuse: a short wait (well inside the carriers' answer timeouts —
Twilio gives a webhook 15 s in all) absorbs a burst without any carrier having to retry. Past
it, a 503 hands the callback back to the carrier: Telnyx retries failed webhook deliveries
(per-command ``webhook_retries_policies``: up to 5 retries within 60 s; its app also has a
failover URL). Twilio retries a callback on a 5xx only when its URL asks for it with a
connection-override fragment such as ``#rp=all&rc=5`` (by default it retries connection
failures only) — see README. Either way the refusal is what keeps memory bounded: the writer
holds at most one snapshot per call, and past its watermark no new call is let in.

Never held back: an update to a call whose snapshot is already pending (it replaces it), to
a call still live here (its record is written anyway; live calls are bounded by
``server.max_calls``), and the first webhook of a call this process will answer.
"""

from __future__ import annotations

import json
import math

from aiohttp import web

from ..gateway import Gateway

WAIT = 2.0          # seconds a webhook may wait for room before its 503
MAX_WAITING = 1000  # webhooks waiting at once; more are refused at once (each holds a socket)
RETRY_AFTER_UNKNOWN = 5   # seconds, when the store has written nothing lately to measure by


async def admit(gw: Gateway, call_id: str, *, opens_call: bool = False) -> None:
    """Return when the webhook about ``call_id`` may change records; otherwise raise a 503
    with ``Retry-After``. ``opens_call``: the webhook starts a call this process answers
    when it is accepting calls (a new call is live, not another finished record). Call it
    after the signature check and before the webhook is marked as seen (a refused delivery
    must count as new when the carrier retries it)."""
    writer = gw.store_writer
    if writer is None or not writer.backed_up:
        return
    if call_id and (writer.holds(call_id) or _live_here(gw, call_id)):
        return
    if opens_call and gw.accepting:
        return
    counter = gw.metrics.store_backpressure
    if writer.waiting < MAX_WAITING and await writer.room(WAIT):
        counter.labels("delayed").inc()
        return
    counter.labels("refused").inc()
    eta = writer.drain_eta()
    retry_after = RETRY_AFTER_UNKNOWN if eta is None else min(30, max(1, math.ceil(eta)))
    raise web.HTTPServiceUnavailable(
        headers={"Retry-After": str(retry_after)}, content_type="application/json",
        text=json.dumps({"error": "call records are waiting for the store; retry later",
                         "retry_after": retry_after}))


def _live_here(gw: Gateway, call_id: str) -> bool:
    rec = gw.registry.get(call_id)
    return rec is not None and rec.ended_at is None
