"""The media WebSocket of one call, for any carrier: authenticate, translate, run a session."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ..carriers.base import (AudioIn, CallControl, MalformedFrame, MediaProtocol, StreamStarted,
                             StreamStopped)
from ..ops.logging import get_logger
from .session import CallSession

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.media")

MAX_FRAME_BYTES = 1 << 20


async def serve_media(request: web.Request, gw: Gateway, *, carrier: str,
                      proto: MediaProtocol, control: CallControl,
                      expected_call_id: str = "",
                      check_start: Callable[[StreamStarted], str] | None = None
                      ) -> web.WebSocketResponse:
    """Accept an (already authenticated) media socket and run the call on it.

    ``expected_call_id``: the call the URL's token was minted for; a ``start`` naming another
    call closes the socket. ``check_start`` may refuse a start for another reason.
    """
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True, compress=False)
    await ws.prepare(request)
    session: CallSession | None = None
    invalid = gw.metrics.media_invalid
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    invalid.inc()
                continue
            try:
                event = proto.parse(msg.data)
            except MalformedFrame:
                invalid.inc()
                continue
            if session is not None:
                if type(event) is AudioIn:    # the hot path
                    session.on_audio(event)
                elif type(event) is StreamStopped:
                    session.stream_stopped = True
                    break
                else:
                    session.on_event(event)
                continue
            if isinstance(event, StreamStarted):
                problem = ""
                if expected_call_id and event.call_id != expected_call_id:
                    problem = "start names another call than the stream token"
                elif check_start is not None:
                    problem = check_start(event)
                if problem:
                    log.warning("media_start_refused", carrier=carrier, reason=problem)
                    await ws.close(code=4403, message=problem.encode()[:120])
                    break
                session = CallSession(gw, event, proto, ws.send_str, control, carrier)
                gw.sessions.add(session)
                if gw.cluster is not None:   # other replicas route this call's commands here
                    gw.spawn(gw.cluster.claim_call(event.call_id, carrier), name="claim-call")
                log.info("media_started", call_id=event.call_id, carrier=carrier,
                         codec=event.rx_codec, resumed=session.resumed)
                session.begin()
            elif isinstance(event, StreamStopped):
                break
    finally:
        if session is not None:
            gw.sessions.discard(session)
            await session.close()
            if gw.cluster is not None and not session.restart_expected:
                gw.spawn(gw.cluster.release_call(session.call_id, carrier),
                         name="release-call")
            if gw.retired:
                await gw.release_retired()
            log.info("media_ended", call_id=session.call_id, outcome=session.outcome or
                     ("completed" if session.stream_stopped else "dropped"))
        if not ws.closed:
            await ws.close()
    return ws

