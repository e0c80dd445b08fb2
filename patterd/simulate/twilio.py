"""Twilio, simulated: an inbound call placed exactly as Twilio places it.

Signed voice webhook → TwiML → signed Media Streams WebSocket (``connected``, ``start``, 20 ms
μ-law ``media`` frames, ``dtmf``, mark echoes, ``stop``). The daemon's REST requests (hang-up
with ``Status=completed``, ``Twiml`` updates for transfer or DTMF) arrive at the local
:class:`~patterd.simulate.api.CarrierApi`; like Twilio, any TwiML update ends the running
stream, and the new document is then executed (a ``<Connect><Stream>`` in it opens a new stream).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import secrets
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import web

from ..audio.codecs import get_codec
from ..carriers.twilio.signature import compute_signature
from ..config import TwilioSettings
from . import twilio_rec
from .api import is_loopback
from .call import SimulatedCall
from .media import LegError, MediaLeg, dial_url
from .results import COMPLETED, HUNG_UP, REJECTED, STREAM_CLOSED, TRANSFERRED, Line
from .twilio_wire import (API_VERSION, TwilioFrames, describe, dial_target, install,
                          parse_twiml, post_signed, twilio_error)
from .twilio_wire import WEBHOOK_TIMEOUT

__all__ = ["TwilioCall", "TwilioFrames", "install", "parse_twiml"]

VOICE_PATH = "/webhooks/twilio/voice"
STATUS_PATH = "/webhooks/twilio/status"
_CONTINUE = object()            # the stream ended by the daemon: run the next TwiML verb


class TwilioCall(SimulatedCall):
    """One inbound Twilio call to the daemon."""

    carrier = "twilio"

    def __init__(self, *args: Any, status_callback: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.config.carrier, TwilioSettings)
        self.settings: TwilioSettings = self.config.carrier
        self.public = self.config.server.public_url.rstrip("/")
        self.status = "ringing"
        self.status_callback = status_callback
        self._final_status = "completed"
        self._daemon_closed = False
        self._reached = False           # the daemon answered a webhook at all
        self._doc_url = self.public + VOICE_PATH
        self.recordings: list[twilio_rec.Recording] = []

    def new_call_id(self) -> str:
        return "CA" + secrets.token_hex(16)

    def params(self, status: str) -> list[tuple[str, str]]:
        """The form fields Twilio sends with every call webhook."""
        to = self.config.phone_number
        return [("AccountSid", self.settings.account_sid), ("ApiVersion", API_VERSION),
                ("CallSid", self.call_id), ("CallStatus", status), ("Called", to),
                ("Caller", self.from_number), ("Direction", "inbound"),
                ("From", self.from_number), ("To", to)]

    def to_daemon(self, public_url: str) -> str:
        """Where a public URL of the daemon is reached locally (``--url`` + the same path)."""
        if public_url.startswith(self.public + "/"):
            return self.url + public_url[len(self.public):]
        parts = urlsplit(public_url)
        return self.url + parts.path + (f"?{parts.query}" if parts.query else "")

    async def post_signed(self, public_url: str, params: list[tuple[str, str]], *,
                          kind: str = "", token: str = "", attempt: int = 1,
                          method: str = "POST") -> tuple[int, str, str]:
        """POST (or GET) a form signed over ``public_url``; (status, body, content type).
        Recorded in ``result.webhooks``; ``token``: the idempotency token (same on a retry)."""
        return await post_signed(self, public_url, params, kind=kind, token=token,
                                 attempt=attempt, method=method)

    async def fetch_twiml(self, public_url: str, status: str) -> str | None:
        """Request TwiML like Twilio does; None (and an error) when the daemon fails."""
        what = f"POST {urlsplit(public_url).path}"
        try:
            code, text, ctype = await self.post_signed(public_url, self.params(status))
        except asyncio.TimeoutError:
            self.fail(f"{what}: no answer within {WEBHOOK_TIMEOUT:g} s (Twilio error 11205)")
            return None
        except (aiohttp.ClientError, OSError) as exc:
            self.fail(f"{what}: cannot reach the daemon at {self.url}: {exc} "
                      "(Twilio error 11205)")
            return None
        self._reached = True
        if code != 200:
            self.fail(f"{what} answered HTTP {code} (Twilio error 11200: the caller hears "
                      f"an application error): {text[:200]}")
            return None
        if ctype not in ("text/xml", "application/xml"):
            self.result.warnings.append(f"{what}: Content-Type {ctype!r} (Twilio error 12300)")
        self._doc_url = public_url
        return text

    async def _run(self) -> None:
        doc = await self.fetch_twiml(self.public + VOICE_PATH, "ringing")
        while doc is not None and not self.ended:
            doc = await self._execute(doc)
        if self._daemon_closed:
            self.end(STREAM_CLOSED, "the daemon closed the media stream without ending the "
                                    "call through the REST API")
        self.end(HUNG_UP, "the TwiML ended")

    async def _execute(self, doc: str) -> str | None:
        """Run a TwiML document; returns the next document (a REST update), or None."""
        assert self.caller is not None
        try:
            verbs = parse_twiml(doc)
        except ValueError as exc:
            self.fail(f"TwiML document parse failure (Twilio error 12100): {exc}")
            return None
        for verb in verbs:
            now = self.caller.now()
            if verb.tag == "Connect" and verb.find("Stream") is not None:
                nxt = await self._stream(verb.find("Stream"))  # type: ignore[arg-type]
                if nxt is not _CONTINUE:
                    return nxt  # type: ignore[return-value]
            elif verb.tag == "Reject":
                reason = verb.get("reason") or "rejected"
                self._final_status = "busy" if reason == "busy" else "no-answer"
                self.end(REJECTED, reason)
                return None
            elif verb.tag == "Hangup":
                self.end(HUNG_UP, "TwiML <Hangup/>")
                return None
            elif verb.tag == "Dial":
                self.end(TRANSFERRED, dial_target(verb))
                return None
            elif verb.tag == "Say":
                await self.on_say((verb.text or "").strip())
            elif verb.tag == "Play" and verb.get("digits"):
                self.caller.lines.append(Line("agent", now, now, f"[DTMF {verb.get('digits')}]"))
            elif verb.tag == "Pause":
                length = verb.get("length") or "1"
                kind, data = await self._pause(float(length) if length.isdigit() else 1.0)
                if kind != "pause_over":
                    return await self._on_event(kind, data)
            elif verb.tag == "Redirect" and (verb.text or "").strip():
                return await self.fetch_twiml(urljoin(self._doc_url, verb.text.strip()),
                                              "in-progress")
            else:
                self.result.warnings.append(f"TwiML <{verb.tag}> is not simulated; skipped")
        return None

    async def on_say(self, text: str) -> None:
        """TwiML ``<Say>``: Twilio speaks ``text`` to the caller (kept as text)."""
        assert self.caller is not None
        now = self.caller.now()
        self.caller.lines.append(Line("agent", now, now, text))

    async def _pause(self, seconds: float) -> tuple[str, Any]:
        try:
            return await asyncio.wait_for(self.events.get(), timeout=min(seconds, 60.0))
        except asyncio.TimeoutError:
            return "pause_over", None

    async def _stream(self, el: ET.Element) -> object:
        assert self.caller is not None
        url = el.get("url", "")
        if not url:
            self.fail("<Stream> without a url attribute")
            return None
        if not url.startswith("wss://") and not is_loopback(self.public):
            self.result.warnings.append(f"<Stream url={url!r}>: Twilio connects to wss:// "
                                        "URLs only")
        params = {p.get("name", ""): p.get("value", "") for p in el.findall("Parameter")}
        sig = compute_signature(self.settings.auth_token.encode(), url, []).decode()
        stream_sid = "MZ" + secrets.token_hex(16)
        ulaw = get_codec("PCMU")
        leg = MediaLeg(self.caller, TwilioFrames(stream_sid, self.call_id,
                                                 self.settings.account_sid, params),
                       url=dial_url(url, self.url), headers={"X-Twilio-Signature": sig},
                       tx_codec=ulaw, rx_codec=ulaw, errors=self.result.errors,
                       warnings=self.result.warnings)
        self.status = "in-progress"
        try:
            await leg.connect(self.session)
        except LegError as exc:
            self.fail(f"{exc} (Twilio error 31901/31902: the stream fails)")
            return None
        self.result.stream_ids.append(stream_sid)
        self.answered()
        task = asyncio.create_task(leg.run(), name=f"twilio-{stream_sid}")
        await self._stream_status(el, stream_sid, "stream-started")
        kind, data = await self.next_event(task)
        closed = kind == "leg_closed" and self.events.empty()
        if kind == "leg_closed" and not closed:
            kind, data = self.events.get_nowait()   # a REST update raced the daemon's close
        await self.end_leg(leg, task, stop=not closed)
        await self._stream_status(el, stream_sid, "stream-stopped")
        if closed:
            self._daemon_closed = True
            return _CONTINUE
        return await self._on_event(kind, data)

    async def _stream_status(self, el: ET.Element, stream_sid: str, event: str) -> None:
        """``<Stream statusCallback>``: stream-started / stream-stopped, signed like webhooks."""
        url = el.get("statusCallback")
        if not url:
            return
        params = [("AccountSid", self.settings.account_sid), ("CallSid", self.call_id),
                  ("StreamEvent", event), ("StreamName", el.get("name", stream_sid)),
                  ("StreamSid", stream_sid), ("Timestamp", email.utils.formatdate(usegmt=True))]
        try:
            code, text, _ = await self.post_signed(urljoin(self._doc_url, url), params)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            code, text = 0, str(exc)
        if not 200 <= code < 300:
            self.result.warnings.append(f"stream status callback {event}: {code or ''} "
                                        f"{text[:100]}".replace("  ", " "))

    async def _on_event(self, kind: str, data: Any) -> str | None:
        if kind == "hangup":
            self.end(HUNG_UP, "REST Status=completed")
        elif kind == "twiml":
            return data
        elif kind == "url":
            return await self.fetch_twiml(urljoin(self._doc_url, data), "in-progress")
        elif kind == "script_done":
            self.end(COMPLETED, "the caller hung up")
        elif kind == "timeout":
            self.fail(f"the call was still up after {self.timeout:g} s; the caller hung up")
        return None

    def call_json(self, status: str | None = None) -> dict[str, Any]:
        """The Call resource Twilio returns."""
        sid = self.settings.account_sid
        return {"sid": self.call_id, "account_sid": sid, "status": status or self.status,
                "from": self.from_number, "to": self.config.phone_number,
                "direction": "inbound", "api_version": API_VERSION, "price": None,
                "price_unit": "USD",
                "uri": f"/{API_VERSION}/Accounts/{sid}/Calls/{self.call_id}.json"}

    async def on_rest(self, action: str, fields: dict[str, Any]) -> web.Response:
        if action == "fetch":
            return web.json_response(self.call_json())
        if self.status == "completed":
            return twilio_error(404, 20404, "The requested resource was not found")
        if action == "recording":
            return twilio_rec.start(self, fields)
        if fields.get("Status") == "completed":
            self.action("hangup", fields)
            self.status = "completed"
            self.events.put_nowait(("hangup", fields))
            return web.json_response(self.call_json())
        if fields.get("Url"):
            self.action("redirect", fields)
            self.events.put_nowait(("url", fields["Url"]))
        elif "Twiml" in fields:
            try:
                name, extra = describe(parse_twiml(fields["Twiml"]))
            except ValueError as exc:
                self.result.errors.append(f"REST update with invalid Twiml: {exc}")
                return twilio_error(400, 12100, "Document parse failure")
            self.action(name, {**extra, **fields})
            self.events.put_nowait(("twiml", fields["Twiml"]))
        else:
            self.action("update", fields)
        return web.json_response(self.call_json())

    async def _after_end(self) -> None:
        self.status = "completed"
        if self.api is not None:   # still fetchable after the end, as on Twilio
            self.api.finished[self.call_id] = self.call_json()
        if self.status_callback and self._reached and self.caller is not None:
            await self._final_status_callback(self.caller.now())
        await twilio_rec.finish(self)

    async def _final_status_callback(self, now: float) -> None:
        seconds = 0 if self.answered_at is None else round(now - self.answered_at)
        params = self.params(self._final_status) + [
            ("CallDuration", str(seconds)), ("Duration", str(math.ceil(seconds / 60))),
            ("SequenceNumber", "0"), ("Timestamp", email.utils.formatdate(usegmt=True)),
            ("CallbackSource", "call-progress-events")]
        try:
            code, text, _ = await self.post_signed(self.public + STATUS_PATH, params)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.result.warnings.append(f"status callback failed: {exc}")
            return
        if code >= 300:
            self.result.warnings.append(f"status callback answered HTTP {code}: {text[:100]}")
