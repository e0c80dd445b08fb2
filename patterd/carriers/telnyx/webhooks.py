"""The Telnyx Call Control webhook: every call event arrives here, signed with Ed25519.

Telnyx ignores response bodies, so the webhook is acknowledged at once and the call is driven
through REST afterwards (answer, reject, …).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from ...call.amd import on_verdict, session_for
from ...call.recovery import stream_stopped_elsewhere
from ...call.registry import TERMINAL
from ...gateway import Gateway
from ...ops.logging import get_logger
from ...web.backpressure import admit
from ...web.request import BadRequest, Forbidden, counted, parse_json, read_body
from ..ids import TELNYX_CALL_CONTROL_ID as CALL_CONTROL_ID
from ..rest import RestError
from .rest import TelnyxRest, read_client_state
from .signature import TOLERANCE_SECONDS, SignatureVerifier
from .stream_token import StreamTokens

log = get_logger("patterd.telnyx")

MEDIA_PATH = "/media/telnyx"
REPLAY_WINDOW = 2 * TOLERANCE_SECONDS + 60   # a timestamp ±300 s around our clock, and slack
# Telnyx hangup causes → our outcome names (patterd_calls_total{outcome}).
HANGUP_OUTCOME = {
    "normal_clearing": "completed", "originator_cancel": "canceled", "timeout": "no_answer",
    "no_answer": "no_answer", "user_busy": "busy", "call_rejected": "rejected",
    "not_found": "failed", "time_limit": "completed", "unspecified": "completed",
}


def stream_url(public_url: str, token: str) -> str:
    """The per-call ``wss://`` media URL carrying the call's token."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{MEDIA_PATH}/{quote(token)}"


def mask_stream_token(url: str) -> str:
    """``…/media/telnyx/***``: a stream URL without its token."""
    head, found, _ = url.partition(MEDIA_PATH + "/")
    return head + found + "***" if found else url


def parse_event(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """``(event_type, event id, payload)`` of a webhook body, or a 400 naming what is wrong."""
    doc = parse_json(body)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise BadRequest("data: expected an object")
    event_type, event_id, payload = data.get("event_type"), data.get("id"), data.get("payload")
    if not isinstance(event_type, str) or not event_type:
        raise BadRequest("data.event_type: expected a string")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
        raise BadRequest("data.id: expected a string")
    if not isinstance(payload, dict):
        raise BadRequest("data.payload: expected an object")
    ccid = payload.get("call_control_id")
    if ccid is not None and (not isinstance(ccid, str) or not CALL_CONTROL_ID.fullmatch(ccid)):
        raise BadRequest("data.payload.call_control_id: malformed")
    return event_type, event_id, payload


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    return value if isinstance(value, str) else ""


def make_routes(gw: Gateway, verifier: SignatureVerifier | None, rest: TelnyxRest,
                tokens: StreamTokens) -> list[web.RouteDef]:
    """``POST /webhooks/telnyx/voice``."""

    @counted("telnyx", "voice")
    async def voice(request: web.Request) -> web.StreamResponse:
        server = gw.config.server
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        if verifier is not None:
            reason = verifier.check(body, request.headers.get("telnyx-signature-ed25519", ""),
                                    request.headers.get("telnyx-timestamp", ""))
            if reason:
                gw.metrics.signature_failures.labels("telnyx").inc()
                log.warning("telnyx_signature_rejected", reason=reason)
                raise Forbidden(reason)
        event_type, event_id, payload = parse_event(body)
        call_id = _text(payload, "call_control_id")
        if event_type.startswith(("call.", "streaming.")) and not call_id \
                and event_type != "call.recording.saved":
            raise BadRequest("data.payload.call_control_id: required for call events")
        await admit(request, gw, call_id, opens_call=event_type == "call.initiated")
        # Remembered in the store for as long as the signature may be replayed (a restart
        # does not reopen the window).
        if not await gw.first_delivery(("telnyx", event_id), durable_for=REPLAY_WINDOW):
            return web.json_response({"status": "duplicate"})
        # A call evicted from memory since its end comes back from the store, still over.
        await gw.recall(call_id or gw.registry.call_of_leg(_text(payload, "call_leg_id")))
        followup = handle_event(gw, event_type, payload, call_id)
        resp = web.json_response({"status": "ok"})
        if followup is not None:
            # Acknowledge first, then drive the call (Telnyx waits for nothing we return).
            await resp.prepare(request)
            await resp.write_eof()
            gw.spawn(followup(rest, tokens), name=f"telnyx-{event_type}")
        return resp

    return [web.post("/webhooks/telnyx/voice", voice)]


def handle_event(gw: Gateway, event_type: str, payload: dict[str, Any], call_id: str) -> Any:
    """Record the event; return a coroutine function to run after the 200, if any."""
    occurred = _text(payload, "occurred_at")
    state = read_client_state(payload.get("client_state"))
    if event_type == "call.initiated":
        direction = "outbound" if payload.get("direction") == "outgoing" else "inbound"
        if direction == "outbound":
            if isinstance(state.get("ref"), str):   # our dial (client_state is ours, signed)
                gw.dials.bind(state["ref"], call_id)
            gw.registry.ensure(call_id, "telnyx", direction=direction,
                               from_number=_text(payload, "from"), to_number=_text(payload, "to"),
                               leg_id=_text(payload, "call_leg_id"))
            gw.registry.apply_status(call_id, "telnyx", "initiated")
            return None
        if not gw.accepting:
            reason = "draining" if gw.draining else "at capacity"
            gw.registry.ensure(call_id, "telnyx", direction=direction)
            gw.finish_call(call_id, "telnyx", "rejected")
            log.info("call_rejected", call_id=call_id, reason=reason)
            return lambda rest, tokens: _reject(rest, call_id)
        gw.registry.ensure(call_id, "telnyx", direction=direction,
                           from_number=_text(payload, "from"), to_number=_text(payload, "to"),
                           leg_id=_text(payload, "call_leg_id"))
        gw.registry.apply_status(call_id, "telnyx", "ringing")
        log.info("call_answering", call_id=call_id, caller=_text(payload, "from"))
        return lambda rest, tokens: _answer(gw, rest, tokens, call_id, direction)
    if event_type == "call.answered":
        gw.registry.apply_status(call_id, "telnyx", "in-progress", occurred_at=occurred)
        return None
    if event_type == "call.hangup":
        if gw.cluster is not None and session_for(gw, call_id) is None:
            # Another replica may have held the stream: it counts the call (asked after
            # the 200, like the other follow-ups).
            async def settle(rest: Any, tokens: Any) -> None:
                count = not await gw.served_elsewhere(call_id, "telnyx")
                _hung_up(gw, call_id, payload, occurred, count)
            return settle
        _hung_up(gw, call_id, payload, occurred, True)
        return None
    if event_type == "streaming.failed":
        return _stream_failed(gw, payload, call_id)
    if event_type.startswith("call.machine.") and call_id:
        result = _text(payload, "result")
        gw.registry.add_event(call_id, "telnyx", _EVENT_KINDS[event_type],
                              event_type=event_type, result=result)
        voicemail = state.get("vm") if isinstance(state.get("vm"), str) else ""
        return lambda rest, tokens: on_verdict(gw, "telnyx", call_id, result, voicemail)
    if event_type == "call.cost" and call_id:
        try:
            price = float(payload.get("total_cost"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            price = None
        if price is not None and price == price and abs(price) < 1e6:
            gw.carrier_priced(gw.registry.ensure(call_id, "telnyx"), price)
    if event_type == "call.speak.ended" and state.get("after_speak") == "hangup":
        return lambda rest, tokens: _hangup(rest, call_id, "voicemail_left")
    kind = _EVENT_KINDS.get(event_type)
    if kind is None:
        kind = event_type
    leg = gw.registry.by_leg(_text(payload, "call_leg_id")) if not call_id else None
    record_id = call_id or (leg.call_id if leg else "") or _text(payload, "call_leg_id") \
        or _text(payload, "call_session_id")
    known = bool(call_id) and gw.registry.get(call_id) is not None
    if record_id:
        detail = {k: payload[k] for k in _DETAIL_KEYS if k in payload}
        if isinstance(detail.get("stream_url"), str):   # its token stays out of the record
            detail["stream_url"] = mask_stream_token(detail["stream_url"])
        gw.registry.add_event(record_id, "telnyx", kind, event_type=event_type, **detail)
    if event_type == "streaming.stopped" and call_id and session_for(gw, call_id) is None:
        # No stream here: unless the call's end is reported (or a live process holds it),
        # it is up with nobody on it — say, the process that held it died.
        return lambda rest, tokens: stream_stopped_elsewhere(gw, call_id, "telnyx", known)
    return None


def _hung_up(gw: Gateway, call_id: str, payload: dict[str, Any], occurred: str,
             count: bool) -> None:
    """``call.hangup``: the carrier's end of the call. It may beat streaming.stopped and our
    socket's close: then the session's own outcome (transferred, voicemail, …) settles the
    call, not this generic one. ``count``: see ``Gateway.carrier_status``."""
    cause = _text(payload, "hangup_cause") or "unspecified"
    outcome = HANGUP_OUTCOME.get(cause, "completed")
    status = "completed" if outcome in ("completed", "rejected") else outcome.replace("_", "-")
    if status not in TERMINAL:
        status = "completed"
    if gw.carrier_status(call_id, "telnyx", status, outcome=outcome, hangup_cause=cause,
                         hangup_source=_text(payload, "hangup_source"), occurred_at=occurred,
                         count=count):
        rec = gw.registry.ensure(call_id, "telnyx")
        log.info("call_ended", call_id=call_id, outcome=rec.outcome, cause=cause,
                 started=_text(payload, "start_time"))


_EVENT_KINDS = {
    "call.machine.detection.ended": "amd",
    "call.machine.greeting.ended": "amd_greeting",
    "call.machine.premium.detection.ended": "amd",
    "call.machine.premium.greeting.ended": "amd_greeting",
    "call.recording.saved": "recording",
    "call.recording.error": "recording_error",
    "call.dtmf.received": "dtmf",
    "call.cost": "cost",
}
_DETAIL_KEYS = ("result", "digit", "recording_urls", "channels", "recording_started_at",
                "recording_ended_at", "total_cost", "billed_duration_secs", "cost_parts",
                "stream_url", "failure_reason", "call_leg_id", "call_session_id")


def _stream_failed(gw: Gateway, payload: dict[str, Any], call_id: str) -> Any:
    """Telnyx could not stream the call's media (``failure_reason``): the call is up and
    billed with nobody on our side, so it ends now — ``failed``, counted once — and is hung
    up through the REST API."""
    reason = _text(payload, "failure_reason") or "unknown"
    rec = gw.registry.add_event(call_id, "telnyx", "stream_failed", failure_reason=reason,
                                stream_id=_text(payload, "stream_id"),
                                stream_type=_text(payload, "stream_type"))
    if not rec.live or rec.status in TERMINAL:
        return None   # call.hangup came first: the stream failed as the call ended
    log.warning("media_stream_failed", call_id=call_id, reason=reason)
    gw.finish_call(call_id, "telnyx", "failed")
    return lambda rest, tokens: _hangup(rest, call_id, "stream_failed", gw, reason)


async def _answer(gw: Gateway, rest: TelnyxRest, tokens: StreamTokens, call_id: str,
                  direction: str) -> None:
    url = stream_url(gw.config.server.public_url, tokens.mint(call_id, direction))
    try:
        resp = await rest.answer(call_id, url, {"call_id": call_id, "direction": direction})
    except RestError as exc:   # counted by the client's on_error hook
        log.warning("answer_failed", call_id=call_id, status=exc.status, code=exc.code,
                    reason=exc.message)
        # Unanswered, the call would ring on until Telnyx gives up: end it.
        gw.finish_call(call_id, "telnyx", "failed")
        await _hangup(rest, call_id, "answer_failed", gw)
        return
    if not resp.ok:   # 90018: the caller hung up first; call.hangup tells the outcome
        log.info("call_gone_before_answer", call_id=call_id)
        return
    log.info("call_answered", call_id=call_id)


async def _hangup(rest: TelnyxRest, call_id: str, reason: str, gw: Gateway | None = None,
                  detail: str = "") -> None:
    """Hang up (failures are counted by the client's hook); with ``gw``, the hang-up is
    recorded as the gateway's, with why."""
    try:
        await rest.hangup(call_id)
    except RestError as exc:
        log.warning("hangup_failed", call_id=call_id, status=exc.status, reason=exc.message)
        return
    if gw is not None:
        extra = {"detail": detail} if detail else {}
        gw.registry.add_event(call_id, "telnyx", "hangup", by="gateway", reason=reason,
                              **extra)


async def _reject(rest: TelnyxRest, call_id: str) -> None:
    try:
        await rest.reject(call_id, "USER_BUSY")
    except RestError as exc:   # counted by the client's on_error hook
        log.warning("reject_failed", call_id=call_id, status=exc.status, reason=exc.message)


__all__ = ["make_routes", "parse_event", "stream_url", "read_client_state"]
