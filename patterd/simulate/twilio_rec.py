"""Twilio call recordings, simulated: ``POST /Calls/{CallSid}/Recordings.json`` answers a
Recording resource (``RE…``), and the signed recording status callbacks follow (``in-progress``
at once when asked for, ``completed`` once the call is over), like Twilio's."""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from .twilio_wire import API_VERSION, twilio_error

if TYPE_CHECKING:
    from .twilio import TwilioCall

EVENTS = frozenset({"in-progress", "completed", "absent"})
CHANNELS = {"mono": 1, "dual": 2}
TRACKS = frozenset({"inbound", "outbound", "both"})


@dataclass(slots=True)
class Recording:
    """A recording of a live call: its resource and where its callbacks go."""

    sid: str
    channels: int
    track: str
    callback: str
    method: str
    events: list[str]
    started: float                      # Unix time
    stopped: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _values(fields: dict[str, Any], name: str) -> list[str]:
    """A form field's values (repeated keys, or — as the docs allow for recordings — one
    space-separated value)."""
    raw = fields.get(name)
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    return [v for item in items for v in str(item).replace(",", " ").split()]


def resource(call: TwilioCall, rec: Recording, status: str = "in-progress") -> dict[str, Any]:
    """The Recording resource Twilio returns."""
    sid = call.settings.account_sid
    now = email.utils.formatdate(usegmt=True)
    return {"sid": rec.sid, "account_sid": sid, "call_sid": call.call_id,
            "api_version": API_VERSION, "conference_sid": None, "channels": rec.channels,
            "date_created": now, "date_updated": now,
            "start_time": email.utils.formatdate(rec.started, usegmt=True),
            "duration": "-1", "price": None, "price_unit": "USD", "status": status,
            "source": "StartCallRecordingAPI", "error_code": None, "track": rec.track,
            "encryption_details": None,
            "uri": f"/{API_VERSION}/Accounts/{sid}/Calls/{call.call_id}/Recordings/"
                   f"{rec.sid}.json"}


def start(call: TwilioCall, fields: dict[str, Any]) -> web.Response:
    """Start recording ``call`` (which must be in progress); 201 and the resource."""
    if call.status != "in-progress":
        return twilio_error(400, 21220, "Requested resource is only available for "
                                        "in-progress calls")
    channels = str(fields.get("RecordingChannels") or "mono")
    track = str(fields.get("RecordingTrack") or "both")
    events = _values(fields, "RecordingStatusCallbackEvent") or ["completed"]
    method = str(fields.get("RecordingStatusCallbackMethod") or "POST").upper()
    callback = str(fields.get("RecordingStatusCallback") or "")
    bad = next((e for e in events if e not in EVENTS), None)
    if channels not in CHANNELS:
        return twilio_error(400, 21200, f"RecordingChannels {channels!r}: expected mono or "
                                        "dual")
    if track not in TRACKS:
        return twilio_error(400, 21200, f"RecordingTrack {track!r}: expected inbound, "
                                        "outbound or both")
    if bad is not None:
        return twilio_error(400, 21200, f"RecordingStatusCallbackEvent {bad!r}: expected "
                                        "in-progress, completed or absent")
    if method not in ("GET", "POST"):
        return twilio_error(400, 21200, "RecordingStatusCallbackMethod: GET or POST")
    if callback and not callback.startswith(("http://", "https://")):
        return twilio_error(400, 21609, "Invalid RecordingStatusCallback URL")
    rec = Recording("RE" + secrets.token_hex(16), CHANNELS[channels], track, callback, method,
                    events, time.time(), fields=dict(fields))
    call.recordings.append(rec)
    call.action("record_start", fields)
    if "in-progress" in events and callback:
        call.spawn(post(call, rec, "in-progress"))
    return web.json_response(resource(call, rec), status=201)


async def post(call: TwilioCall, rec: Recording, status: str) -> None:
    """The signed recording status callback for ``status``."""
    end = rec.stopped or time.time()
    params = [("AccountSid", call.settings.account_sid), ("CallSid", call.call_id),
              ("RecordingSid", rec.sid),
              ("RecordingUrl", f"{call.settings.api_base_url.rstrip('/')}/{API_VERSION}/"
                               f"Accounts/{call.settings.account_sid}/Recordings/{rec.sid}"),
              ("RecordingStatus", status),
              ("RecordingDuration", str(round(end - rec.started)) if status == "completed"
               else "0"),
              ("RecordingChannels", str(rec.channels)),
              ("RecordingStartTime", email.utils.formatdate(rec.started, usegmt=True)),
              ("RecordingSource", "StartCallRecordingAPI"), ("RecordingTrack", rec.track),
              ("ErrorCode", "0")]
    try:
        code, text, _ = await call.post_signed(rec.callback, params, kind="recording",
                                               method=rec.method)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        call.result.warnings.append(f"recording status callback {status} failed: {exc}")
        return
    if code >= 300:
        call.result.warnings.append(f"recording status callback {status} answered HTTP "
                                    f"{code}: {text[:100]}")


async def finish(call: TwilioCall) -> None:
    """The call is over: every recording completes and its callback (if asked for) is sent."""
    for rec in call.recordings:
        rec.stopped = rec.stopped or time.time()
        if "completed" in rec.events and rec.callback:
            await post(call, rec, "completed")
