"""The media WebSocket of one call, for any carrier: authenticate, translate, run a session."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSMsgType, web

from ..audio.codecs import get_codec
from ..carriers.base import (AudioIn, CallControl, MalformedFrame, MediaProtocol, StreamStarted,
                             StreamStopped, UnservableStart)
from ..ops.logging import get_logger
from ..ops.trace import CURRENT, CallTrace
from .recorder import CallRecorder, finish_recorder, start_recorder
from .session import CallSession
from .traced import end_trace, start_trace

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.media")

MAX_FRAME_BYTES = 1 << 20


Admit = Callable[[StreamStarted], Awaitable[str]]


async def serve_media(request: web.Request, gw: Gateway, *, carrier: str,
                      proto: MediaProtocol, control: CallControl, admit: Admit,
                      ws: web.WebSocketResponse | None = None) -> web.WebSocketResponse:
    """Accept a media socket and run the call on it once ``admit`` accepts its ``start``
    (``""``; otherwise the reason, and the socket is closed with 4403). A socket with no
    ``start`` within ``server.media_start_timeout`` is closed (4408), as is one whose
    ``start`` cannot be served (4400/4415, see :class:`UnservableStart`). ``ws``: a socket
    already accepted (one that authenticated in its first message).
    """
    if ws is None:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True,
                                   compress=False)
        await ws.prepare(request)
    overdue = _close_unstarted_later(ws, gw, carrier)
    session: CallSession | None = None
    recorder: CallRecorder | None = None
    log_context: dict[str, Any] = {}
    trace: CallTrace | None = None
    trace_token: Any = None
    invalid = gw.metrics.media_invalid
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    invalid.inc()
                continue
            try:
                event = proto.parse(msg.data)
            except MalformedFrame as exc:
                invalid.inc()
                if session is None and isinstance(exc, UnservableStart):
                    gw.metrics.media_refused.labels(carrier, "unservable").inc()
                    log.warning("media_start_refused", carrier=carrier, reason=str(exc))
                    await ws.close(code=exc.code, message=str(exc).encode()[:120])
                    break
                continue
            if session is not None:
                if type(event) is AudioIn:    # the hot path
                    session.on_audio(event)
                    if recorder is not None:
                        recorder.rx(event.payload)
                elif type(event) is StreamStopped:
                    session.stream_stopped = True
                    break
                else:
                    session.on_event(event)
                continue
            if isinstance(event, StreamStarted):
                overdue.cancel()   # admitting has its own bound
                problem = await admit(event)
                if problem:
                    await ws.close(code=4403, message=problem.encode()[:120])
                    break
                unsupported = _unsupported_codec(event)
                if unsupported:
                    await _refuse_codec(gw, control, carrier, event.call_id, unsupported)
                    await ws.close(code=4415, message=unsupported.encode()[:120])
                    break
                # The call's trace is current for everything the session does from here on.
                trace = start_trace(gw, event, carrier)
                trace_token = CURRENT.set(trace)
                session = CallSession(gw, event, proto, ws.send_str, control, carrier)
                # Every log line of this call's tasks (created from here on) names the call.
                log_context = structlog.contextvars.bind_contextvars(call_id=event.call_id)
                recorder = start_recorder(session, event, proto)
                gw.sessions.add(session)
                if gw.cluster is not None:   # other replicas route this call's commands here
                    gw.spawn(gw.cluster.claim_call(event.call_id, carrier), name="claim-call")
                log.info("media_started", call_id=event.call_id, carrier=carrier,
                         codec=event.rx_codec, resumed=session.resumed)
                session.begin()
            elif isinstance(event, StreamStopped):
                break
    except Exception as exc:  # noqa: BLE001 - a bug in this call: it alone ends, recorded
        gw.supervisor.report("media", exc, call_id=session.call_id if session else "")
    finally:
        overdue.cancel()
        if session is not None:
            session.stream_ended()
            gw.sessions.discard(session)
            try:
                if recorder is not None:   # first, so the record has the file as the call ends
                    await finish_recorder(recorder, gw, session)
            finally:
                try:
                    await session.close()
                finally:
                    if trace is not None:
                        end_trace(trace, gw, session)
            if gw.cluster is not None and not session.restart_expected:
                gw.spawn(gw.cluster.release_call(session.call_id, carrier),
                         name="release-call")
            if gw.retired:
                await gw.release_retired()
            log.info("media_ended", call_id=session.call_id, outcome=session.outcome or
                     ("completed" if session.stream_stopped else "dropped"))
        if not ws.closed:
            await ws.close()
        structlog.contextvars.reset_contextvars(**log_context)
        if trace_token is not None:
            CURRENT.reset(trace_token)
    return ws



def _close_unstarted_later(ws: web.WebSocketResponse, gw: Gateway, carrier: str
                           ) -> asyncio.TimerHandle:
    """Close ``ws`` if no ``start`` has come ``server.media_start_timeout`` seconds from now
    (junk frames do not count)."""
    timeout = gw.config.server.media_start_timeout

    def close() -> None:
        gw.metrics.media_refused.labels(carrier, "timeout").inc()
        log.debug("media_start_timeout", carrier=carrier, timeout=timeout)
        gw.spawn(ws.close(code=4408, message=f"no start within {timeout:g} s".encode()),
                 name="media-start-timeout")

    return asyncio.get_running_loop().call_later(timeout, close)


def _unsupported_codec(event: StreamStarted) -> str:
    """Why the stream's audio cannot be decoded ("" when it can)."""
    try:
        get_codec(event.rx_codec, event.rx_rate)
    except ValueError as exc:
        return str(exc)
    return ""


async def _refuse_codec(gw: Any, control: CallControl, carrier: str, call_id: str,
                        reason: str) -> None:
    """A stream in a codec we cannot decode: end the call through the carrier (the caller
    would otherwise sit in silence) and record why."""
    log.error("media_codec_unsupported", call_id=call_id, carrier=carrier, reason=reason)
    gw.registry.add_event(call_id, carrier, "unsupported_codec", reason=reason)
    try:
        await control.hangup(call_id)
    except Exception as exc:  # noqa: BLE001 - logged; the record still says why
        log.warning("hangup_failed", call_id=call_id, error=repr(exc))
    gw.finish_call(call_id, carrier, "failed")
