"""``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``, simulated: the fields checked as Twilio
checks them (its error codes and JSON), then the call the simulator was told to expect is
placed and the Call resource answered with ``201``."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .api import CALL_ID, ApiRequest, CarrierApi, request_fields
from .callee import claim
from .twilio_wire import twilio_error

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
AMD_MODES = ("Enable", "DetectMessageEnd")
MAX_TWIML = 4000


@dataclass(slots=True)
class CreateRequest:
    """A checked create-call request."""

    to: str
    from_: str
    twiml: str | None
    url: str
    method: str
    status_callback: str
    status_method: str
    events: list[str]
    timeout: int
    machine_detection: str          # "" (off), Enable, DetectMessageEnd
    async_amd: bool
    amd_callback: str
    amd_method: str
    fields: dict[str, Any]
    notices: list[str] = field(default_factory=list)    # Twilio debugger notifications


def _one(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name, "")
    return str(value[-1] if isinstance(value, list) else value)


def _many(fields: dict[str, Any], name: str) -> list[str]:
    value = fields.get(name)
    return [str(v) for v in value] if isinstance(value, list) else \
        [] if value is None else [str(value)]


def _url_ok(url: str) -> bool:
    return re.fullmatch(r"https?://[^/\s?#]+[^\s]*", url) is not None


def parse_create(fields: dict[str, Any], phone_number: str) -> CreateRequest | web.Response:
    """The request, or Twilio's error answer."""
    to, frm = _one(fields, "To"), _one(fields, "From")
    if not to:
        return twilio_error(400, 21201, "No 'To' number is specified")
    if not (E164.fullmatch(to) or to.startswith(("client:", "sip:"))):
        return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to[:40]}")
    if not frm:
        return twilio_error(400, 21213, "No 'From' number is specified")
    if not (E164.fullmatch(frm) or frm.startswith("client:")):
        return twilio_error(400, 21212, f"Invalid 'From' Phone Number: {frm[:40]}")
    if frm != phone_number:
        return twilio_error(400, 21210, f"The source phone number provided, {frm}, is not "
                                        "yet verified for your account")
    twiml, url = fields.get("Twiml"), _one(fields, "Url")
    if twiml is None and not url and not fields.get("ApplicationSid"):
        return twilio_error(400, 21205, "Url parameter is required (or Twiml, ApplicationSid)")
    if twiml is not None:
        twiml = _one(fields, "Twiml")
        if len(twiml) > MAX_TWIML:
            return twilio_error(400, 21200, f"Twiml is {len(twiml)} characters; the maximum "
                                            f"is {MAX_TWIML}")
    elif url and not _url_ok(url):
        return twilio_error(400, 21205, f"Url is not a valid URL: {url[:80]}")
    for name in ("Method", "StatusCallbackMethod", "AsyncAmdStatusCallbackMethod",
                 "FallbackMethod"):
        if _one(fields, name) and _one(fields, name).upper() not in ("GET", "POST"):
            return twilio_error(400, 21200, f"{name} must be GET or POST")
    callback = _one(fields, "StatusCallback")
    if callback and not _url_ok(callback):
        return twilio_error(400, 21609, "Invalid StatusCallback URL")
    raw_timeout = _one(fields, "Timeout") or "60"
    if not raw_timeout.isdigit() or int(raw_timeout) < 1:
        return twilio_error(400, 21200, f"Timeout {raw_timeout!r}: expected seconds (1-600)")
    amd = _one(fields, "MachineDetection")
    if amd and amd not in AMD_MODES:
        return twilio_error(400, 21200, f"MachineDetection {amd!r}: expected Enable or "
                                        "DetectMessageEnd")
    async_amd = _one(fields, "AsyncAmd").lower() or "false"
    if async_amd not in ("true", "false"):
        return twilio_error(400, 21200, "AsyncAmd must be true or false")
    amd_callback = _one(fields, "AsyncAmdStatusCallback")
    if amd_callback and not _url_ok(amd_callback):
        return twilio_error(400, 21609, "Invalid AsyncAmdStatusCallback URL")
    req = CreateRequest(
        to, frm, twiml, url, (_one(fields, "Method") or "POST").upper(), callback,
        (_one(fields, "StatusCallbackMethod") or "POST").upper(), [],
        min(int(raw_timeout), 600), amd, async_amd == "true", amd_callback,
        (_one(fields, "AsyncAmdStatusCallbackMethod") or "POST").upper(), fields)
    events = _many(fields, "StatusCallbackEvent")
    bad = [e for e in events if e not in STATUS_EVENTS]
    if bad:
        req.notices.append(
            f"Twilio notification 21626: invalid StatusCallbackEvent {bad[0]!r} (send one "
            "field per event, e.g. StatusCallbackEvent=initiated&StatusCallbackEvent=ringing); "
            "Twilio ignores it")
    req.events = [e for e in events if e in STATUS_EVENTS] or ["completed"]
    if int(raw_timeout) > 600:
        req.notices.append(f"Timeout {raw_timeout} s is capped at 600 s")
    if amd and req.async_amd and not amd_callback:
        req.notices.append("AsyncAmd=true without AsyncAmdStatusCallback: the AMD verdict "
                           "is sent nowhere")
    return req


async def create(api: CarrierApi, phone_number: str, request: web.Request) -> web.Response:
    """Handle an authenticated create-call request."""
    fields = request_fields(await request.read(), request.content_type)
    parsed = parse_create(fields, phone_number)
    to = _one(fields, "To")
    if isinstance(parsed, web.Response):
        expected = claim(api.pending, to)
        if expected is not None:
            expected.refused.append(ApiRequest(0.0, request.method, request.path,
                                               parsed.status, fields))
        api.log(request, parsed.status, fields)
        return parsed
    expected = claim(api.pending, parsed.to)
    if expected is None:
        api.log(request, 400, fields)
        return twilio_error(400, 21211, f"the simulator expects no call to {parsed.to} "
                                        "(place it with simulate_outbound)")
    call = expected.make(parsed)
    expected.call = call
    request[CALL_ID] = call.call_id
    expected.task = asyncio.create_task(call.run(), name=f"twilio-out-{call.call_id}")
    expected.arrived.set()
    return web.json_response(call.call_json(), status=201)
