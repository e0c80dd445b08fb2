"""Twilio's four webhooks: voice (answer with TwiML), status, recording and AMD callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from aiohttp import web

from ...call.registry import TERMINAL
from ...gateway import GATEWAY, Gateway
from ...ops.logging import get_logger
from ...web.backpressure import admit
from ...web.request import BadRequest, Forbidden, counted, parse_json, read_body
from ...call.amd import on_verdict, session_for
from ...config import TwilioSettings
from ..ids import TWILIO_CALL_SID as CALL_SID
from . import twiml
from .price import fetch_later
from .control import read_amd_context
from .signature import SETTINGS_HEADER, SignatureVerifier
from .stream_token import TOKEN_PARAM, StreamTokens

log = get_logger("patterd.twilio")

RECORDING_SID = re.compile(r"RE[0-9a-fA-F]{32}")
CALL_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress", "answered",
                           *TERMINAL})
ANSWERED_BY = frozenset({"human", "machine_start", "machine_end_beep", "machine_end_silence",
                         "machine_end_other", "fax", "unknown"})
RECORDING_STATUSES = frozenset({"in-progress", "completed", "absent", "failed", "paused",
                                "stopped", "processing"})
MAX_FIELDS = 200
_DIGITS = re.compile(r"[0-9]{1,9}")
MEDIA_PATH = "/media/twilio"

Params = list[tuple[str, str]]
Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def stream_url(public_url: str) -> str:
    """The ``wss://`` media-stream URL derived from the public base URL."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{MEDIA_PATH}"


async def signed_params(request: web.Request, gw: Gateway, verifier: SignatureVerifier
                        ) -> dict[str, str]:
    """The request's form fields after checking the signature; 400/403/413 otherwise.

    Repeated fields take part in the signature; for the handlers the last value wins.
    """
    server = gw.config.server
    body = await read_body(request, server.max_body_bytes, server.body_timeout)
    signature = request.headers.get("X-Twilio-Signature", "")
    settings = request.headers.get(SETTINGS_HEADER, "")   # a SharedKey-signed webhook
    if not signature:
        raise _signature_failure(gw, "missing X-Twilio-Signature header")
    ctype = request.content_type
    params: Params
    if ctype == "application/json":
        # JSON webhooks sign the URL (carrying bodySHA256) with no parameters.
        query = parse_qs(request.rel_url.raw_query_string)
        expected = query.get("bodySHA256", [""])[0]
        actual = hashlib.sha256(body).hexdigest()
        if not expected or not hmac.compare_digest(expected.encode(), actual.encode()):
            raise _signature_failure(gw, "bodySHA256 missing or not matching the body")
        problem = verifier.check(request.raw_path, (), signature, settings=settings)
        if problem:
            raise _signature_failure(gw, problem)
        return _json_params(body)
    if ctype not in ("application/x-www-form-urlencoded", ""):
        raise BadRequest(f"expected application/x-www-form-urlencoded, got {ctype}")
    params = _form_params(body)
    problem = verifier.check(request.raw_path, params, signature, settings=settings)
    if problem:
        raise _signature_failure(gw, problem)
    return dict(params)


def _form_params(body: bytes) -> Params:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    if not text:
        return []
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                         max_num_fields=MAX_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed form body: {str(exc)[:100]}") from None


def _json_params(body: bytes) -> dict[str, str]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def _signature_failure(gw: Gateway, reason: str) -> Forbidden:
    gw.metrics.signature_failures.labels("twilio").inc()
    log.warning("twilio_signature_rejected", reason=reason)
    return Forbidden(reason)


def _require(params: dict[str, str], name: str, pattern: re.Pattern[str] | None = None,
             choices: frozenset[str] | None = None) -> str:
    value = params.get(name, "")
    if not value:
        raise BadRequest(f"{name}: required")
    if pattern is not None and not pattern.fullmatch(value):
        raise BadRequest(f"{name}: malformed")
    if choices is not None and value not in choices:
        raise BadRequest(f"{name}: unknown value")
    return value


def _int_or_none(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"{name}: expected a non-negative integer")
    return int(value)


def _direction(params: dict[str, str]) -> str:
    return "outbound" if params.get("Direction", "").startswith("outbound") else "inbound"


def _served_here(gw: Gateway, rec: Any) -> bool:
    """Whether this process served the call (its media stream, or dialled it): only those
    calls' prices are fetched, never those of a stray callback for an unknown CallSid."""
    return ((rec.media_seconds > 0 and not rec.billed_from_carrier)
            or session_for(gw, rec.call_id) is not None
            or any(e.get("type") == "dial" for e in rec.events))


def make_routes(gw: Gateway, verifier: SignatureVerifier, tokens: StreamTokens
                ) -> list[web.RouteDef]:
    """The four routes under ``/webhooks/twilio``."""
    xml = "text/xml"
    media_url = stream_url(gw.config.server.public_url)

    @counted("twilio", "voice")
    async def voice(request: web.Request) -> web.StreamResponse:
        params = await signed_params(request, gw, verifier)
        sid = _require(params, "CallSid", CALL_SID)
        direction = _direction(params)
        # (an evicted call is over: a late copy of its first webhook does not open it again)
        known = gw.registry.get(sid) is not None or gw.registry.evicted(sid) is not None
        await admit(request, gw, sid, opens_call=not known)
        if not known and not gw.accepting:
            reason = "draining" if gw.draining else "at capacity"
            if await gw.first_delivery(("twilio-reject", sid)):
                gw.registry.ensure(sid, "twilio", direction=direction)
                gw.finish_call(sid, "twilio", "rejected")
                log.info("call_rejected", call_id=sid, reason=reason)
            return web.Response(text=twiml.reject("busy"), content_type=xml)
        if not known:
            gw.registry.ensure(sid, "twilio", direction=direction,
                               from_number=params.get("From", ""),
                               to_number=params.get("To", ""))
            log.info("call_answering", call_id=sid, direction=direction,
                     caller=params.get("From", ""))
        doc = twiml.connect_stream(media_url, {
            "call_id": sid,
            "direction": direction,
            "from": params.get("From", ""),
            "to": params.get("To", ""),
            TOKEN_PARAM: tokens.mint(sid, direction),   # the stream may carry this call only
        })
        return web.Response(text=doc, content_type=xml)

    @counted("twilio", "status")
    async def status(request: web.Request) -> web.StreamResponse:
        params = await signed_params(request, gw, verifier)
        sid = _require(params, "CallSid", CALL_SID)
        state = _require(params, "CallStatus", choices=CALL_STATUSES)
        seq = _int_or_none(params, "SequenceNumber")
        duration = _int_or_none(params, "CallDuration")
        await admit(request, gw, sid)
        if not await gw.first_delivery(("twilio-status", sid, state, seq)):
            return web.Response(status=204)
        await gw.recall(sid)   # a call evicted from memory since its end: back, still over
        direction = _direction(params)
        rec = gw.registry.ensure(sid, "twilio", direction=direction)
        served = _served_here(gw, rec)
        # A terminal status racing our media stream's close waits for the session's outcome
        # (transferred, voicemail, …); otherwise it ends the call here, counted once.
        count = state not in TERMINAL or not await gw.served_elsewhere(sid, "twilio")
        if gw.carrier_status(sid, "twilio", state, seq, seconds=duration, count=count,
                             timestamp=params.get("Timestamp", ""), duration=duration):
            # No stream here: price the call from Twilio's duration.
            if not rec.media_seconds:
                rec.media_seconds, rec.billed_from_carrier = float(duration or 0), True
            gw.price_call(rec)
            log.info("call_ended", call_id=sid, outcome=rec.outcome, duration=duration)
        settings = gw.config.carrier
        if state == "completed" and served and isinstance(settings, TwilioSettings):
            # Twilio's own price replaces our estimate once it is known (in the background).
            fetch_later(gw, settings, rec)
        return web.Response(status=204)

    @counted("twilio", "recording")
    async def recording(request: web.Request) -> web.StreamResponse:
        params = await signed_params(request, gw, verifier)
        sid = _require(params, "CallSid", CALL_SID)
        rec_sid = _require(params, "RecordingSid", RECORDING_SID)
        state = _require(params, "RecordingStatus", choices=RECORDING_STATUSES)
        duration = _int_or_none(params, "RecordingDuration")
        await admit(request, gw, sid)
        if await gw.first_delivery(("twilio-recording", sid, rec_sid, state)):
            await gw.recall(sid)
            gw.registry.add_event(sid, "twilio", "recording", recording_id=rec_sid,
                                  status=state, url=params.get("RecordingUrl", ""),
                                  duration=duration,
                                  channels=params.get("RecordingChannels", ""))
            log.info("recording_status", call_id=sid, recording_id=rec_sid, status=state)
        return web.Response(status=204)

    @counted("twilio", "amd")
    async def amd(request: web.Request) -> web.StreamResponse:
        params = await signed_params(request, gw, verifier)
        sid = _require(params, "CallSid", CALL_SID)
        verdict = _require(params, "AnsweredBy", choices=ANSWERED_BY)
        took = _int_or_none(params, "MachineDetectionDuration")
        await admit(request, gw, sid)
        if await gw.first_delivery(("twilio-amd", sid, verdict)):
            await gw.recall(sid)
            gw.registry.add_event(sid, "twilio", "amd", verdict=verdict, duration_ms=took)
            log.info("amd_result", call_id=sid, verdict=verdict)
            # The voicemail text rides in the signed callback URL (any replica can act).
            voicemail = read_amd_context(request.rel_url.query.get("ctx", ""))
            gw.spawn(on_verdict(gw, "twilio", sid, verdict, voicemail), name="amd")
        return web.Response(status=204)

    return [
        web.post("/webhooks/twilio/voice", voice),
        web.post("/webhooks/twilio/status", status),
        web.post("/webhooks/twilio/recording", recording),
        web.post("/webhooks/twilio/amd", amd),
    ]
