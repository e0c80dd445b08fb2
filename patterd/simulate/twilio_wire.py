"""Twilio on the wire, carrier side: Media Streams frames as Twilio sends them, TwiML parsing,
and the REST routes (``/2010-04-01/Accounts/{sid}/Calls/{CallSid}.json``, HTTP Basic auth, form
bodies, Twilio's error JSON) the daemon's commands arrive at."""

from __future__ import annotations

import asyncio
import base64
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp import web

from ..carriers.twilio.signature import compute_signature
from ..config import TwilioSettings
from .api import CarrierApi, request_fields
from .media import Dialect
from .results import Webhook

if TYPE_CHECKING:
    from .twilio import TwilioCall

API_VERSION = "2010-04-01"
WEBHOOK_TIMEOUT = 15.0          # Twilio gives up on a webhook after 15 s (error 11205)


class TwilioFrames(Dialect):
    """Media Streams frames as Twilio sends them (numbers inside are strings)."""

    carrier = "twilio"

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str,
                 parameters: dict[str, str]) -> None:
        super().__init__()
        self.stream_sid, self.call_sid, self.account_sid = stream_sid, call_sid, account_sid
        self.parameters = parameters

    def connected(self) -> str:
        return self.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return self.dumps({
            "event": "start", "sequenceNumber": self.next_seq(),
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1},
                      "customParameters": dict(self.parameters)},
            "streamSid": self.stream_sid})

    def media(self, payload: bytes) -> str:
        chunk, stamp = self.next_chunk()    # the hot path: a template, not json.dumps
        return (f'{{"event":"media","sequenceNumber":"{self.next_seq()}","media":{{"track":'
                f'"inbound","chunk":"{chunk}","timestamp":"{stamp}","payload":'
                f'"{base64.b64encode(payload).decode("ascii")}"}},"streamSid":"{self.stream_sid}"}}')

    def dtmf(self, digit: str) -> str:
        return self.dumps({"event": "dtmf", "streamSid": self.stream_sid,
                           "sequenceNumber": self.next_seq(),
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self, name: str) -> str:
        return self.dumps({"event": "mark", "sequenceNumber": self.next_seq(),
                           "streamSid": self.stream_sid, "mark": {"name": name}})

    def stop(self) -> str:
        return self.dumps({"event": "stop", "sequenceNumber": self.next_seq(),
                           "streamSid": self.stream_sid,
                           "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    def check(self, msg: dict[str, Any]) -> str:
        event = msg.get("event")
        if event in ("media", "mark", "clear") and msg.get("streamSid") != self.stream_sid:
            return (f"the daemon sent a {event} frame whose streamSid is not the stream's "
                    "(Twilio warning 31951: the frame is dropped)")
        return ""


def parse_twiml(doc: str) -> list[ET.Element]:
    """The verbs of a TwiML document; ``ValueError`` when it is not one."""
    try:
        root = ET.fromstring(doc)
    except ET.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    if root.tag != "Response":
        raise ValueError(f"the root element is <{root.tag}>, not <Response>")
    return list(root)


def dial_target(verb: ET.Element) -> str:
    """Where a ``<Dial>`` goes: its ``<Number>``/``<Sip>``/``<Client>`` noun, or its text."""
    for noun in verb:
        if (noun.text or "").strip():
            return noun.text.strip()  # type: ignore[union-attr]
    return (verb.text or "").strip()


def describe(verbs: list[ET.Element]) -> tuple[str, dict[str, str]]:
    """What a TwiML update asks for, as an action name: transfer, send_dtmf, hangup or twiml."""
    for verb in verbs:
        if verb.tag == "Dial":
            return "transfer", {"to": dial_target(verb)}
        if verb.tag == "Play" and verb.get("digits"):
            return "send_dtmf", {"digits": verb.get("digits", "")}
        if verb.tag == "Hangup":
            return "hangup", {}
    return "twiml", {}


async def post_signed(call: TwilioCall, public_url: str, params: list[tuple[str, str]], *,
                      kind: str = "", token: str = "", attempt: int = 1,
                      method: str = "POST") -> tuple[int, str, str]:
    """A webhook as Twilio sends it: the form (POST) or query (GET) signed over the public
    URL, posted to the daemon, recorded in ``call.result.webhooks``."""
    url, body = public_url, urlencode(params)
    if method.upper() == "GET":     # GET: the fields are in the signed URL
        url = public_url + ("&" if "?" in public_url else "?") + body
        params, body = [], ""
    sig = compute_signature(call.settings.auth_token.encode(), url, params).decode()
    headers = {"X-Twilio-Signature": sig, "User-Agent": "TwilioProxy/1.1",
               "I-Twilio-Idempotency-Token": token or str(uuid.uuid4())}
    if body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    hook = Webhook(call.caller.now() if call.caller else 0.0,
                   kind or urlsplit(public_url).path.rsplit("/", 1)[-1], public_url,
                   dict(params) if params else dict(parse_qsl(urlsplit(url).query)),
                   attempt=attempt)
    call.result.webhooks.append(hook)
    try:
        async with call.session.request(
                method.upper(), call.to_daemon(url), data=body or None, headers=headers,
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)) as r:
            hook.status = r.status
            return r.status, await r.text(), r.content_type
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        hook.error = str(exc) or type(exc).__name__
        raise


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """An error in Twilio's JSON shape."""
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                             status=status)


def install(api: CarrierApi, settings: TwilioSettings, phone_number: str) -> None:
    """Add Twilio's REST routes (HTTP Basic auth, form bodies) to ``api``."""
    expected = "Basic " + base64.b64encode(
        f"{settings.account_sid}:{settings.auth_token}".encode()).decode()
    base = "/2010-04-01/Accounts/{sid}"

    async def _form(request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        fields = request_fields(await request.read(), "")     # repeated keys → lists
        if (request.headers.get("Authorization") != expected
                or request.match_info.get("sid") != settings.account_sid):
            api.log(request, 401, fields)
            return fields, twilio_error(401, 20003, "Authenticate")
        return fields, None

    async def call_route(request: web.Request, action: str) -> web.Response:
        fields, denied = await _form(request)
        if denied is not None:
            return denied
        call = api.calls.get(request.match_info["call"])
        done = api.finished.get(request.match_info["call"]) if action == "fetch" else None
        if call is None and done is not None:
            if api.call_price is not None and done.get("price") is None:
                done = {**done, "price": api.call_price}
            return web.json_response(done)
        if call is None:
            api.log(request, 404, fields)
            return twilio_error(404, 20404, "The requested resource was not found")
        return await call.on_rest(action, fields)

    async def update(request: web.Request) -> web.Response:
        return await call_route(request, "update" if request.method == "POST" else "fetch")

    async def recording(request: web.Request) -> web.Response:
        return await call_route(request, "recording")

    async def create_call(request: web.Request) -> web.Response:
        _, denied = await _form(request)
        if denied is not None:
            return denied
        from .twilio_create import create    # (it builds calls, which import this module)
        return await create(api, phone_number, request)

    async def numbers(request: web.Request) -> web.Response:
        _, denied = await _form(request)
        sid = "PN" + uuid.uuid5(uuid.NAMESPACE_URL, phone_number).hex
        want = request.query.get("PhoneNumber", phone_number)
        items = [{"sid": sid, "phone_number": phone_number}] if want == phone_number else []
        return denied or web.json_response({"incoming_phone_numbers": items,
                                            "next_page_uri": None})

    async def number(request: web.Request) -> web.Response:
        fields, denied = await _form(request)
        return denied or web.json_response({"sid": request.match_info["pn"],
                                            "voice_url": fields.get("VoiceUrl", "")})

    api.add_post(base + "/Calls.json", create_call)
    api.add_post(base + "/Calls/{call}.json", update)
    api.add_get(base + "/Calls/{call}.json", update)
    api.add_post(base + "/Calls/{call}/Recordings.json", recording)
    api.add_get(base + "/IncomingPhoneNumbers.json", numbers)
    api.add_post(base + "/IncomingPhoneNumbers/{pn}.json", number)
