"""Telnyx Call Control, simulated: a call the daemon placed with ``POST /calls`` (dial).

``200`` with the new call's ids → ``call.initiated`` (``direction: outgoing``, ``state:
bridging``) → per the :class:`~patterd.simulate.callee.Callee`: ``call.answered`` +
``streaming.started`` and the media socket to ``stream_url`` (as on an inbound call), AMD
events when ``answering_machine_detection`` asks for them; or ``call.hangup`` (``user_busy``,
``timeout``, ``not_found``, ``originator_cancel``) with no media socket. Every event echoes the
latest ``client_state``; after the hang-up come ``call.recording.saved`` and ``call.cost``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from aiohttp import web

from .api import CALL_ID, ApiRequest, CarrierApi
from .callee import Callee, callee_steps, claim, telnyx_verdicts
from .deliver import Deliveries, Delivery
from .outbound_result import OutboundResult
from .results import BUSY, CANCELED, COMPLETED, FAILED, NO_ANSWER
from .steps import Say
from .telnyx import TelnyxCall


AMD_MODES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled")
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# how an unanswered call ends: outcome, hangup_cause, hangup_source, sip_hangup_cause
UNANSWERED = {
    "busy": (BUSY, "user_busy", "callee", "486"),
    "no-answer": (NO_ANSWER, "timeout", "unknown", "487"),
    "failed": (FAILED, "not_found", "unknown", "404"),
    "canceled": (CANCELED, "originator_cancel", "caller", "487"),
}


def _invalid(field: str, detail: str) -> web.Response:
    return web.json_response({"errors": [{
        "code": "10015", "title": "Invalid parameter", "detail": detail,
        "source": {"pointer": f"/{field}"}}]}, status=422)


def parse_dial(body: dict[str, Any], connection_id: str) -> web.Response | None:
    """Telnyx's answer to a malformed dial, or None."""
    for name in ("connection_id", "to", "from"):
        if not isinstance(body.get(name), str) or not body[name]:
            return _invalid(name, f"{name} is required")
    if body["connection_id"] != connection_id:
        return _invalid("connection_id", "no Call Control App with this connection_id")
    if not (E164.fullmatch(body["to"]) or body["to"].startswith("sip:")):
        return _invalid("to", "to must be an E.164 number or a SIP URI")
    if not E164.fullmatch(body["from"]):
        return _invalid("from", "from must be an E.164 number")
    timeout = body.get("timeout_secs", 30)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 5 <= timeout <= 600:
        return _invalid("timeout_secs", "timeout_secs must be an integer from 5 to 600")
    if body.get("answering_machine_detection", "disabled") not in AMD_MODES:
        return _invalid("answering_machine_detection",
                        f"answering_machine_detection must be one of {', '.join(AMD_MODES)}")
    state = body.get("client_state")
    if state is not None:
        try:
            base64.b64decode(str(state), validate=True)
        except (binascii.Error, ValueError):
            return _invalid("client_state", "client_state must be Base64 encoded")
    url = body.get("stream_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("wss://", "ws://"))):
        return _invalid("stream_url", "stream_url must be a ws:// or wss:// URL")
    return None


async def dial(api: CarrierApi, connection_id: str, request: web.Request,
               body: dict[str, Any]) -> web.Response:
    """Handle an authenticated ``POST /calls``."""
    refused = parse_dial(body, connection_id)
    expected = claim(api.pending, str(body.get("to", "")))
    if refused is not None:
        if expected is not None:
            expected.refused.append(ApiRequest(0.0, request.method, request.path,
                                               refused.status, body))
        api.log(request, refused.status, body)
        return refused
    if expected is None:
        api.log(request, 422, body)
        return _invalid("to", f"the simulator expects no call to {body['to']} (place it "
                              "with simulate_outbound)")
    call: TelnyxOutboundCall = expected.make(body)
    expected.call = call
    request[CALL_ID] = call.call_id
    expected.task = asyncio.create_task(call.run(), name=f"telnyx-out-{call.call_id}")
    expected.arrived.set()
    return web.json_response({"data": {
        "call_control_id": call.call_id, "call_leg_id": call.leg_id,
        "call_session_id": call.session_id, "is_alive": False, "record_type": "call",
        "client_state": body.get("client_state"), "start_time": call._start_time}})


class TelnyxOutboundCall(TelnyxCall):
    """One call the daemon placed through Telnyx Call Control."""

    post_cost = True

    def __init__(self, config: Any, url: str, callee: Callee, body: dict[str, Any], *,
                 greeting: Say | None = None, greeting_seconds: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(config, url, callee_steps(callee, greeting), from_number=body["from"],
                         **kwargs)
        self.callee, self.body, self.to = callee, body, body["to"]
        self.client_state = body.get("client_state")
        self.state = "bridging"
        self.greeting_seconds = greeting_seconds
        self.amd_mode = str(body.get("answering_machine_detection") or "disabled")
        self.ring_timeout = float(body.get("timeout_secs") or 30)
        if isinstance(body.get("webhook_url"), str) and body["webhook_url"]:
            self.hook_url = body["webhook_url"]
        self.result = OutboundResult(self.carrier, self.call_id, to=self.to, callee=callee.kind)
        self.deliveries = Deliveries(shuffle=callee.shuffle_callbacks,
                                     duplicate=callee.duplicate_callbacks)

    def payload(self, **extra: Any) -> dict[str, Any]:
        out = super().payload(**extra)
        out["to"] = self.to
        return out

    async def webhook(self, event_type: str, required: bool = False, **extra: Any) -> bool:
        """Queue a signed event (delivered in order, or shuffled/duplicated on demand)."""
        doc = self.envelope(event_type, **extra)

        async def send(attempt: int) -> None:
            await self.send_event(doc, attempt=attempt)
        self.deliveries.post(Delivery(event_type, send))
        return True

    async def _run(self) -> None:
        await asyncio.sleep(self.callee.initiated_delay)
        await self.webhook("call.initiated", direction="outgoing", state="bridging",
                           start_time=self._start_time, caller_id_name=self.from_number)
        kind = self.callee.kind
        ring, gives_up = self.callee.ring_for(self.ring_timeout)
        if kind == "failed":
            ring, gives_up = 0.2, False
        if await self._ring(ring):
            self._unanswered("canceled", "hung up by the daemon before the answer")
            return
        if gives_up:
            self._unanswered("no-answer", f"nobody answered within {ring:g} s")
            return
        if not self.callee.answers:
            self._unanswered(kind, f"the callee is {kind}")
            return
        await self._answered(self.body)

    async def _ring(self, seconds: float) -> bool:
        """Wait while the phone rings; True when the daemon hung up (or time ran out)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, seconds)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                kind, _ = await asyncio.wait_for(self.next_event(None), max(0.0, left))
            except asyncio.TimeoutError:
                return False
            if kind == "timeout":
                self.fail(f"the call was still ringing after {self.timeout:g} s")
            if kind in ("hangup", "timeout"):
                return True

    def _unanswered(self, kind: str, detail: str) -> None:
        outcome, cause, source, sip = UNANSWERED[kind]
        self._hangup, self.sip_cause = (cause, source), sip
        self.end(outcome, detail)

    def _on_event(self, kind: str, data: Any) -> None:
        if kind == "script_done":
            self.end(COMPLETED, "the callee hung up")
        else:
            super()._on_event(kind, data)
        if kind == "hangup":
            self._hangup = ("normal_clearing", "caller")     # we (the daemon) placed it
        elif kind == "script_done":
            self._hangup = ("normal_clearing", "callee")

    def answered(self) -> None:
        first = self.answered_at is None
        super().answered()
        if not first or self.answered_at is None:
            return
        if self.callee.kind == "machine":
            self.result.greeting_end = self.answered_at + self.greeting_seconds
        if self.amd_mode != "disabled":
            for event, result, after in telnyx_verdicts(self.callee, self.amd_mode,
                                                        self.greeting_seconds):
                self.spawn(self._amd(event, result, after))

    async def _amd(self, event: str, result: str, after: float) -> None:
        assert self.caller is not None and self.answered_at is not None
        await asyncio.sleep(max(0.0, self.answered_at + after - self.caller.now()))
        if self.ended:
            return
        if "detection" in event:
            self.result.answered_by, self.result.amd_at = result, self.caller.now()
        await self.webhook(event, result=result)

    async def _after_end(self) -> None:
        await super()._after_end()
        await self.deliveries.drain()
        self.result.carrier_status = self._hangup[0] if self._hangup else ""
        self.result.media_opened = bool(self.result.stream_ids)
