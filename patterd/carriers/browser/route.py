"""``GET /v1/browser-call``: the console's test call, a WebSocket that authenticates in its
first message (a browser cannot put a header on a WebSocket, and a token in the URL would end
up in logs).

1. the page sends ``{"event": "auth", "token": "<admin.token>"}`` within ``AUTH_TIMEOUT``
   seconds (else the socket closes with 4401 or 4408; 4503 while the daemon does not take
   calls: draining or at ``max_calls``);
2. the daemon answers ``{"event": "connected", "call_id": "BR…"}``;
3. from then on the frames of :mod:`.media`, served by the same media loop and call session
   as a phone call's stream. When the agent hangs up or transfers, the daemon sends
   ``{"event": "hangup"}`` (or ``transfer``); the page answers ``stop`` (as a carrier ends a
   stream) and the daemon closes the socket once the call is recorded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ...call.media_socket import MAX_FRAME_BYTES, serve_media
from ...ops.logging import get_logger
from ...web.auth import token_matches
from .control import BrowserControl
from .media import BrowserMedia

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.browser")

BROWSER_CALL_PATH = "/v1/browser-call"
AUTH_TIMEOUT = 10.0
CARRIER = "browser"


def browser_call_route(gw: Gateway) -> list[web.RouteDef]:
    """The route, or none when no admin token is configured."""
    token = gw.config.admin.token.encode()
    if not token:
        return []
    control = BrowserControl(lambda coro: gw.spawn(coro, name="browser-call-close"))

    async def refuse(ws: web.WebSocketResponse, code: int, why: str) -> web.WebSocketResponse:
        await ws.close(code=code, message=why.encode()[:120])
        return ws

    async def browser_call(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True, compress=False)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=AUTH_TIMEOUT)
        except asyncio.TimeoutError:
            return await refuse(ws, 4408, "authenticate first")
        given = ""
        if first.type is WSMsgType.TEXT:
            try:
                doc = json.loads(first.data)
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict) and doc.get("event") == "auth" \
                    and isinstance(doc.get("token"), str):
                given = doc["token"]
        if not token_matches(given, token):
            log.warning("browser_call_refused", reason="missing or wrong token")
            return await refuse(ws, 4401, "missing or wrong token")
        if not gw.accepting:
            return await refuse(ws, 4503, "not taking calls now (draining or at capacity)")
        call_id = "BR" + secrets.token_hex(16)
        proto = BrowserMedia(call_id, {"direction": "inbound", "from": CARRIER,
                                       "to": gw.config.phone_number})
        gw.registry.apply_status(call_id, CARRIER, "in-progress")
        control.opened(call_id, ws)
        log.info("browser_call", call_id=call_id)
        try:
            await ws.send_str(json.dumps({"event": "connected", "call_id": call_id}))
            async def admit(start: Any) -> str:   # the page's start names the call it was given
                return "" if start.call_id == call_id else "start names another call"

            media = asyncio.ensure_future(serve_media(
                request, gw, carrier=CARRIER, proto=proto, control=control, admit=admit, ws=ws))
            try:
                await asyncio.shield(media)
            except asyncio.CancelledError:
                # The server gave up on the request (its socket closed under a server that
                # cancels handlers): the call is still recorded before this one ends.
                await asyncio.wait({media}, timeout=30)
                raise
        finally:
            control.closed(call_id)
            rec = gw.registry.get(call_id)
            if rec is not None and rec.ended_at is None:
                gw.finish_call(call_id, CARRIER, "failed")     # never got to a session
            gw.registry.apply_status(call_id, CARRIER, "completed")   # the "carrier's" word
        return ws

    return [web.get(BROWSER_CALL_PATH, browser_call)]


__all__ = ["AUTH_TIMEOUT", "BROWSER_CALL_PATH", "browser_call_route"]
