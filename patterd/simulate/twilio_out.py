"""Twilio, simulated: a call the daemon placed with ``POST /Calls.json``.

queued → ``initiated`` → ``ringing`` → per the :class:`~patterd.simulate.callee.Callee`:
answered (``in-progress``; the inline ``Twiml`` — or the ``Url``'s — ``<Connect><Stream>`` runs
exactly as on an inbound call) → ``completed``; or ``busy`` / ``no-answer`` / ``failed`` /
``canceled`` with no media socket at all. Status callbacks go to ``StatusCallback`` for the
``StatusCallbackEvent``s asked for, signed, with ``SequenceNumber`` from 0; with
``AsyncAmd=true`` the AMD verdict goes to ``AsyncAmdStatusCallback``; with synchronous AMD the
TwiML runs only once the verdict is in (and a ``Url`` request carries ``AnsweredBy``).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from . import twilio_rec
from .callee import Callee, callee_steps, twilio_verdict
from .deliver import Deliveries, Delivery
from .outbound_result import OutboundResult
from .results import (BUSY, CANCELED, COMPLETED, FAILED, HUNG_UP, NO_ANSWER, STREAM_CLOSED,
                      Line)
from .steps import Say
from .twilio import TwilioCall
from .twilio_create import CreateRequest
from .twilio_wire import API_VERSION, twilio_error

TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")
RINGING = ("queued", "initiated", "ringing")
SIP_CODES = {"completed": "200", "busy": "486", "no-answer": "487", "failed": "404",
             "canceled": "487"}
OUTCOMES = {"busy": BUSY, "no-answer": NO_ANSWER, "failed": FAILED, "canceled": CANCELED}


class TwilioOutboundCall(TwilioCall):
    """One call the daemon placed through Twilio's REST API."""

    def __init__(self, config: Any, url: str, callee: Callee, req: CreateRequest, *,
                 greeting: Say | None = None, greeting_seconds: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(config, url, callee_steps(callee, greeting), from_number=req.from_,
                         status_callback=bool(req.status_callback), **kwargs)
        self.callee, self.req, self.to = callee, req, req.to
        self.status = "queued"
        self.greeting_seconds = greeting_seconds
        self.result = OutboundResult(self.carrier, self.call_id, to=req.to, callee=callee.kind)
        for notice in req.notices:   # 21626 breaks the daemon's call tracking: an error
            (self.result.errors if "21626" in notice else self.result.warnings).append(notice)
        self.deliveries = Deliveries(shuffle=callee.shuffle_callbacks,
                                     duplicate=callee.duplicate_callbacks)
        self._seq = 0
        self._doc, self._doc_src = req.twiml, req.url
        self._silent = False                # canceled while queued: Twilio sends nothing
        self._in_progress_at: float | None = None
        self._verdict: tuple[str, float] | None = None
        self._created = email.utils.formatdate(usegmt=True)

    # ------------------------------------------------------------------ the call's life
    def params(self, status: str) -> list[tuple[str, str]]:
        sid = self.settings.account_sid
        out = [("AccountSid", sid), ("ApiVersion", API_VERSION), ("CallSid", self.call_id),
               ("CallStatus", status), ("Called", self.to), ("Caller", self.from_number),
               ("Direction", "outbound-api"), ("From", self.from_number), ("To", self.to)]
        if self._verdict is not None and not self.req.async_amd:
            out += [("AnsweredBy", self._verdict[0]),
                    ("MachineDetectionDuration", str(int(self._verdict[1] * 1000)))]
        return out

    async def _run(self) -> None:
        assert self.caller is not None
        if await self._ring(self.callee.initiated_delay):
            self._silent = True
            self._final("canceled", "canceled by the daemon while queued")
            return
        self._set("initiated", "initiated")
        if self.callee.kind == "failed":
            await asyncio.sleep(0.2)
            self._final("failed", "the number could not be reached")
            return
        if await self._ring(0.1):
            self._final("canceled", "canceled by the daemon")
            return
        self._set("ringing", "ringing")
        ring, gives_up = self.callee.ring_for(self.req.timeout)
        if await self._ring(ring):
            self._final("canceled", "canceled by the daemon while ringing")
            return
        if gives_up:
            self._final("no-answer", f"nobody answered within {ring:g} s")
            return
        if not self.callee.answers:
            self._final(self.callee.kind, f"the callee is {self.callee.kind}")
            return
        self._in_progress_at = self.caller.now()
        self._set("answered", "in-progress")
        if self.req.machine_detection and not self.req.async_amd:
            self.answered()                     # the callee talks; no stream until the verdict
            verdict = self._plan_verdict()
            if await self._wait_until(self.answered_at + verdict[1]):   # type: ignore[operator]
                return
            self._record_verdict(*verdict)
        doc = self._doc
        if doc is None and self._doc_src:
            doc = await self.fetch_twiml(self._doc_src, "in-progress")
        while doc is not None and not self.ended:
            doc = await self._execute(doc)
        if self._daemon_closed:
            self.end(STREAM_CLOSED, "the daemon closed the media stream without ending the "
                                    "call through the REST API")
        self.end(HUNG_UP, "the TwiML ended")

    async def _ring(self, seconds: float) -> bool:
        """Wait while the call is not answered; True when the daemon canceled it."""
        deadline = asyncio.get_running_loop().time() + max(0.0, seconds)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                kind, data = await asyncio.wait_for(self.events.get(), max(0.0, left))
            except asyncio.TimeoutError:
                return False
            if kind == "cancel":
                return True
            if kind == "twiml":
                self._doc, self._doc_src = data, ""
            elif kind == "url":
                self._doc, self._doc_src = None, data
            elif kind == "timeout":
                self.fail(f"the call was still ringing after {self.timeout:g} s")
                return True

    async def _wait_until(self, at: float) -> bool:
        """Wait for call time ``at`` while answered; True when the call ended meanwhile."""
        assert self.caller is not None
        while not self.ended:
            try:
                kind, data = await asyncio.wait_for(self.events.get(),
                                                    max(0.0, at - self.caller.now()))
            except asyncio.TimeoutError:
                return False
            if kind == "twiml":                 # runs once the verdict is in
                self._doc, self._doc_src = data, ""
            elif kind == "url":
                self._doc, self._doc_src = None, data
            else:
                await self._on_event(kind, data)
        return True

    async def _on_event(self, kind: str, data: Any) -> str | None:
        if kind == "script_done":
            self.end(COMPLETED, "the callee hung up")
            return None
        return await super()._on_event(kind, data)

    def _set(self, event: str, status: str) -> None:
        self.status = status
        self._status_callback(event, status)

    def _final(self, status: str, detail: str) -> None:
        self._final_status = status
        self.end(OUTCOMES[status], detail)

    # ------------------------------------------------------------------ callbacks
    def _status_callback(self, event: str, status: str,
                         extra: list[tuple[str, str]] | None = None) -> None:
        if self._silent or not self.req.status_callback or event not in self.req.events:
            return
        params = self.params(status) + [
            ("CallbackSource", "call-progress-events"), ("SequenceNumber", str(self._seq)),
            ("Timestamp", email.utils.formatdate(usegmt=True))] + (extra or [])
        self._seq += 1
        self._deliver(f"status:{status}", self.req.status_callback, self.req.status_method,
                      params, reorder=True)

    def _deliver(self, kind: str, url: str, method: str, params: list[tuple[str, str]], *,
                 reorder: bool) -> None:
        token = str(uuid.uuid4())

        async def send(attempt: int) -> None:
            try:
                code, text, _ = await self.post_signed(url, params, kind=kind, token=token,
                                                       attempt=attempt, method=method)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self.result.warnings.append(f"{kind} callback failed: {exc}")
                return
            if code >= 300:
                self.result.warnings.append(f"{kind} callback answered HTTP {code}: "
                                            f"{text[:100]}")
        self.deliveries.post(Delivery(kind, send, reorder))

    def answered(self) -> None:
        first = self.answered_at is None
        super().answered()
        if not first or self.answered_at is None:
            return
        if self.callee.kind == "machine":
            self.result.greeting_end = self.answered_at + self.greeting_seconds
        if self.req.machine_detection and self.req.async_amd:
            self.spawn(self._async_amd())

    def _plan_verdict(self) -> tuple[str, float]:
        return twilio_verdict(self.callee, self.req.machine_detection, self.greeting_seconds)

    def _record_verdict(self, verdict: str, after: float) -> None:
        assert self.caller is not None
        self._verdict = (verdict, after)
        self.result.answered_by, self.result.amd_at = verdict, self.caller.now()

    async def _async_amd(self) -> None:
        assert self.caller is not None and self.answered_at is not None
        verdict, after = self._plan_verdict()
        await asyncio.sleep(max(0.0, self.answered_at + after - self.caller.now()))
        if self.ended:
            return
        self._record_verdict(verdict, after)
        if self.req.amd_callback:
            self._deliver("amd", self.req.amd_callback, self.req.amd_method, [
                ("AccountSid", self.settings.account_sid), ("CallSid", self.call_id),
                ("AnsweredBy", verdict), ("MachineDetectionDuration", str(int(after * 1000)))],
                reorder=False)

    async def on_say(self, text: str) -> None:
        """``<Say>``: Twilio speaks to the callee (a machine records it); takes its time."""
        assert self.caller is not None
        start = self.caller.now()
        self.result.said.append(text)
        await asyncio.sleep(self.callee.speaking_time(text))
        self.caller.lines.append(Line("agent", start, self.caller.now(), text))

    # ------------------------------------------------------------------ REST
    def call_json(self, status: str | None = None) -> dict[str, Any]:
        sid, now = self.settings.account_sid, email.utils.formatdate(usegmt=True)
        uri = f"/{API_VERSION}/Accounts/{sid}/Calls/{self.call_id}"
        duration = None
        if self.status in TERMINAL and self._in_progress_at is not None and self.caller:
            duration = str(round(self.caller.now() - self._in_progress_at))
        return {
            "sid": self.call_id, "account_sid": sid, "date_created": self._created,
            "date_updated": now, "parent_call_sid": None, "to": self.to,
            "to_formatted": self.to, "from": self.from_number,
            "from_formatted": self.from_number, "phone_number_sid": None,
            "status": status or self.status, "start_time": None if self.status in RINGING
            else now, "end_time": now if self.status in TERMINAL else None,
            "duration": duration, "price": None, "price_unit": "USD",
            "direction": "outbound-api", "answered_by": self.result.answered_by or None,
            "api_version": API_VERSION, "forwarded_from": None, "group_sid": None,
            "caller_name": None, "queue_time": "0", "trunk_sid": None, "uri": uri + ".json",
            "subresource_uris": {"recordings": uri + "/Recordings.json",
                                 "notifications": uri + "/Notifications.json"}}

    async def on_rest(self, action: str, fields: dict[str, Any]) -> web.Response:
        if action == "fetch":
            return web.json_response(self.call_json())
        if self.status in TERMINAL or self.ended:
            return twilio_error(404, 20404, "The requested resource was not found")
        status = fields.get("Status")
        if self.status in RINGING:
            if action == "recording":
                return twilio_error(400, 21220, "Requested resource is only available for "
                                                "in-progress calls")
            if status in ("canceled", "completed"):
                self.action("cancel", fields)
                self.events.put_nowait(("cancel", fields))
                return web.json_response(self.call_json("canceled"))
            if fields.get("Url") or "Twiml" in fields:
                self.action("twiml" if "Twiml" in fields else "redirect", fields)
                self.events.put_nowait(("url", fields["Url"]) if fields.get("Url")
                                       else ("twiml", fields["Twiml"]))
                return web.json_response(self.call_json())
        if status == "canceled":                # an answered call is not canceled
            self.action("update", fields)
            return web.json_response(self.call_json())
        if status and status != "completed":
            return twilio_error(400, 21200, f"Status {status!r}: expected completed or "
                                            "canceled")
        return await super().on_rest(action, fields)

    # ------------------------------------------------------------------ the end
    async def _after_end(self) -> None:
        assert self.caller is not None
        final = self._final_status
        self.status = self.result.carrier_status = final
        now = self.caller.now()
        seconds = 0 if self._in_progress_at is None else round(now - self._in_progress_at)
        extra = [("CallDuration", str(seconds)), ("SipResponseCode", SIP_CODES[final])]
        if final == "completed":
            extra.append(("Duration", str(math.ceil(seconds / 60))))
        if self._verdict is not None and self.req.async_amd:
            extra.append(("AnsweredBy", self._verdict[0]))
        self._status_callback("completed", final, extra)
        await self.deliveries.drain()
        await twilio_rec.finish(self)
        self.result.media_opened = bool(self.result.stream_ids)
        if self.api is not None:
            self.api.finished[self.call_id] = self.call_json()
