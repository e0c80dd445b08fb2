"""``GET /v1/events``: the live call events as Server-Sent Events, and ``GET /v1/live``.

Authenticated like the rest of ``/v1`` (``Authorization: Bearer``). A reader resumes where it
stopped with the standard ``Last-Event-ID`` header (or ``?after=<id>``); without one it gets
the events from now on. ``GET /v1/live`` answers the live calls with their transcript so far
and ``last_event_id``: load it, then follow ``/v1/events?after=<last_event_id>``, and nothing
is missed. A reader that fell behind by more than the bus holds (or whose id is from an
earlier process) gets an ``event: reset`` first: reload ``/v1/live`` and carry on. A comment
line is sent every ``KEEPALIVE`` seconds so that proxies keep the connection open; when the
daemon stops, the streams end (readers reconnect to it or another replica).
``?call_id=`` follows one call only.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ..gateway import Gateway
from .auth import bearer_guard

KEEPALIVE = 15.0          # seconds between keep-alive comments
GATHER = 0.01             # seconds to let events gather before a write (fewer, larger writes)
RETRY_MS = 2000           # what a browser's EventSource waits before reconnecting
MAX_BATCH = 500           # events per write


def event_routes(gw: Gateway) -> list[web.RouteDef]:
    """The routes, or none when no admin token is configured."""
    token = gw.config.admin.token.encode()
    if not token:
        return []
    guarded = bearer_guard(token)
    bus = gw.bus

    async def live(request: web.Request) -> web.StreamResponse:
        snap = gw.events.snapshot(gw.registry.records())
        return web.json_response(snap, headers={"Cache-Control": "no-store"})

    async def stream(request: web.Request) -> web.StreamResponse:
        raw = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        try:
            cursor = int(raw) if raw else bus.last_id
        except ValueError:
            return web.json_response({"error": "Last-Event-ID/after: expected an event id"},
                                     status=400)
        only = request.query.get("call_id") or None
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            await resp.write(f"retry: {RETRY_MS}\n: patterd events\n\n".encode())
            while not bus.closed:
                events, gap = bus.since(cursor)
                if gap:
                    cursor = bus.last_id
                    reset = {"reason": "events were missed; reload /v1/live",
                             "last_event_id": cursor}
                    await resp.write(f"id: {cursor}\nevent: reset\ndata: "
                                     f"{json.dumps(reset)}\n\n".encode())
                    continue
                if events:
                    batch = events[:MAX_BATCH]
                    cursor = batch[-1].id
                    chunks = [e.wire for e in batch
                              if only is None or e.call_id == only]
                    if chunks:
                        await resp.write(b"".join(chunks))
                    continue
                if not await bus.wait(cursor, KEEPALIVE):
                    await resp.write(b": keep-alive\n\n")
                elif GATHER:
                    await asyncio.sleep(GATHER)
        except ConnectionError:
            pass   # the reader went away
        return resp

    return [web.get("/v1/live", guarded(live)), web.get("/v1/events", guarded(stream))]


__all__ = ["KEEPALIVE", "event_routes"]
