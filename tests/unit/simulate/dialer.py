"""A stand-in daemon that places calls: ``POST /v1/calls`` (bearer token) dials through the
simulated carrier exactly as the brief says patterd does (Twilio ``Calls.json`` form with inline
``<Connect><Stream>``; Telnyx ``POST /calls`` JSON), reacts to AMD verdicts (voicemail by
``<Say>``+``<Hangup/>``, by ``speak`` then hang-up, or by its own stream), and records when each
webhook arrived — signatures checked with twilio-python's RequestValidator and PyNaCl."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from patterd.config import Config, TwilioSettings
from tests.unit.simulate.standin import (PHONE, PUBLIC_URL, TELNYX_KEY, TWILIO_SID, TWILIO_TOKEN,
                                         TWIML_STREAM, Behavior, StandIn)

ADMIN_TOKEN = "admin-token-0123456789abcdef"
STATUS_URL = PUBLIC_URL + "/webhooks/twilio/status"
AMD_URL = PUBLIC_URL + "/webhooks/twilio/amd?ctx=eyJ2bSI6IkhpIn0"     # signed with its query
RECORDING_URL = PUBLIC_URL + "/webhooks/twilio/recording"
VOICE = "AWS.Polly.Joanna-Neural"


def b64json(doc: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


class Dialer(StandIn):
    """``on_machine``: what to do on a machine verdict — ``twiml`` (Twilio ``<Say>`` +
    ``<Hangup/>``), ``speak`` (Telnyx ``speak``, hang up on ``call.speak.ended``), ``hangup``
    (REST hang-up, e.g. after speaking over the stream) or ``none``."""

    def __init__(self, config: Config, behavior: Behavior | None = None, *,
                 on_machine: str = "none", voicemail: str = "Please call us back.",
                 ring_timeout: int = 30, single_event: bool = False, record: bool = False,
                 extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> None:
        super().__init__(config, behavior, answer_calls=False)
        self.on_machine, self.voicemail = on_machine, voicemail
        self.ring_timeout, self.single_event, self.record = ring_timeout, single_event, record
        self.extra, self.drop = extra or {}, drop
        self.arrivals: list[tuple[float, str, dict[str, Any], dict[str, str]]] = []
        self.dials: list[tuple[int, Any]] = []
        self.twilio = isinstance(config.carrier, TwilioSettings)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/calls", self._admin)

    # ------------------------------------------------------------------ admin API
    async def _admin(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        doc = await request.json()
        status, body = await (self._dial_twilio(doc) if self.twilio else self._dial_telnyx(doc))
        self.dials.append((status, body))
        if status not in (200, 201):
            return web.json_response({"error": f"the carrier refused the call: {body}"},
                                     status=502)
        call_id = body["sid"] if self.twilio else body["data"]["call_control_id"]
        return web.json_response({"call_id": call_id}, status=201)

    async def _dial_twilio(self, doc: dict[str, Any]) -> tuple[int, Any]:
        params = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in
                         {"direction": "outbound", "to": doc["to"], **{
                             f"var_{k}": v for k, v in doc.get("variables", {}).items()}}.items())
        form = [("To", doc["to"]), ("From", PHONE),
                ("Twiml", f'<Response><Connect><Stream url="{TWIML_STREAM}">{params}</Stream>'
                          '</Connect></Response>'),
                ("StatusCallback", STATUS_URL), ("StatusCallbackMethod", "POST")]
        events = ("initiated", "ringing", "answered", "completed")
        form += [("StatusCallbackEvent", " ".join(events))] if self.single_event else \
            [("StatusCallbackEvent", e) for e in events]
        form.append(("Timeout", str(self.ring_timeout)))
        if doc.get("machine_detection"):
            form += [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                     ("AsyncAmdStatusCallback", AMD_URL),
                     ("AsyncAmdStatusCallbackMethod", "POST")]
        form = [(k, v) for k, v in form if k not in self.drop] + list(self.extra.items())
        return await self._twilio_rest("Calls.json", form)

    async def _twilio_rest(self, path: str, form: list[tuple[str, str]]) -> tuple[int, Any]:
        assert self.session is not None
        url = f"{self.config.carrier.api_base_url}/2010-04-01/Accounts/{TWILIO_SID}/{path}"
        token = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        async with self.session.post(url, data=form,
                                     headers={"Authorization": f"Basic {token}"}) as resp:
            result = (resp.status, await resp.json())
        self.rest.append(result)
        return result

    async def _dial_telnyx(self, doc: dict[str, Any]) -> tuple[int, Any]:
        assert self.session is not None
        state = {"direction": "outbound", "to": doc["to"]}
        if doc.get("voicemail_message"):
            state["vm"] = doc["voicemail_message"]
        body: dict[str, Any] = {
            "connection_id": self.config.carrier.connection_id,  # type: ignore[union-attr]
            "to": doc["to"], "from": PHONE, "timeout_secs": self.ring_timeout,
            "stream_url": f"wss://voice.example.com/media/telnyx/out-{uuid.uuid4().hex[:8]}",
            "stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU", "client_state": b64json(state),
            "command_id": str(uuid.uuid4())}
        if doc.get("machine_detection"):
            body["answering_machine_detection"] = "greeting_end"
        body = {k: v for k, v in body.items() if k not in self.drop} | self.extra
        async with self.session.post(f"{self.config.carrier.api_base_url}/calls", json=body,
                                     headers={"Authorization": f"Bearer {TELNYX_KEY}"}) as r:
            result = (r.status, await r.json())
        self.rest.append(result)
        return result

    # ------------------------------------------------------------------ webhooks
    async def _twilio_webhook(self, request: web.Request) -> web.Response:
        resp = await super()._twilio_webhook(request)
        params = dict(parse_qsl((await request.read()).decode()))
        self.arrivals.append((time.monotonic(), request.match_info["kind"], params,
                              dict(request.headers)))
        kind, sid = request.match_info["kind"], params.get("CallSid", "")
        if kind == "amd" and params.get("AnsweredBy", "").startswith("machine"):
            if self.on_machine == "twiml":
                self._later(self.twilio_update(sid, {"Twiml": (
                    f"<Response><Say>{self.voicemail}</Say><Hangup/></Response>")}))
            elif self.on_machine == "hangup":
                self._later(self.twilio_update(sid, {"Status": "completed"}))
        if kind == "status" and params.get("CallStatus") == "in-progress" and self.record:
            self._later(self._twilio_rest(f"Calls/{sid}/Recordings.json", [
                ("RecordingChannels", "dual"), ("RecordingStatusCallback", RECORDING_URL),
                ("RecordingStatusCallbackMethod", "POST"),
                ("RecordingStatusCallbackEvent", "in-progress"),
                ("RecordingStatusCallbackEvent", "completed"),
                ("RecordingStatusCallbackEvent", "absent")]))
        return resp

    async def _telnyx_webhook(self, request: web.Request) -> web.Response:
        resp = await super()._telnyx_webhook(request)
        data = json.loads(await request.read())["data"]
        payload, event = data["payload"], data["event_type"]
        self.arrivals.append((time.monotonic(), event, payload, dict(request.headers)))
        ccid = payload.get("call_control_id", "")
        state = payload.get("client_state") or ""
        after = json.loads(base64.b64decode(state)).get("after_speak") if state else None
        if event == "call.answered" and self.record:
            self._later(self.telnyx_command(ccid, "record_start", {
                "format": "wav", "channels": "dual", "command_id": str(uuid.uuid4())}))
        if event == "call.machine.greeting.ended" and self.on_machine == "speak":
            self._later(self.telnyx_command(ccid, "speak", {
                "payload": self.voicemail, "voice": VOICE, "command_id": str(uuid.uuid4()),
                "client_state": b64json({"after_speak": "hangup"})}))
        if event == "call.machine.greeting.ended" and self.on_machine == "hangup":
            self._later(self.telnyx_command(ccid, "hangup", {"command_id": "h"}))
        if event == "call.speak.ended" and after == "hangup":
            self._later(self.telnyx_command(ccid, "hangup", {"command_id": str(uuid.uuid4())}))
        return resp

    def _later(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    # ------------------------------------------------------------------ helpers for tests
    def arrived(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, p) for t, k, p, _ in self.arrivals if k == kind]

    def statuses(self) -> list[dict[str, Any]]:
        return [p for _, k, p, _ in self.arrivals if k == "status"]

    async def hangup(self, call_id: str) -> tuple[int, Any]:
        if self.twilio:
            return await self.twilio_update(call_id, {"Status": "completed"})
        return await self.telnyx_command(call_id, "hangup", {"command_id": str(uuid.uuid4())})
