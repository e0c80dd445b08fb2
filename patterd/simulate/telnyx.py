"""Telnyx Call Control, simulated: an inbound call placed exactly as Telnyx places it.

``call.initiated`` (Ed25519-signed) → the daemon's ``answer`` command arrives at the local
REST stand-in → ``call.answered`` + ``streaming.started`` → the media WebSocket (``connected``,
``start`` with ``media_format``, 20 ms ``media`` frames in the leg's codec, ``dtmf``, mark
echoes, ``stop``) → ``call.hangup``. Telnyx ignores webhook answers: everything the daemon does
comes in as REST commands.

A live call may get more streams: ``streaming_start`` opens another WebSocket (its own
``stream_id``, ``start.custom_parameters``, ``streaming.started``) while the others stay up;
the caller's audio goes to every stream and what each plays is heard. ``streaming_stop`` with a
``stream_id`` ends that stream only, without one every stream; the call stays up either way. A
stream the daemon closes is just that stream ending while another is up; the last one closing
without a hang-up leaves the call up with no media (``stream_closed`` unless a hang-up or a new
``streaming_start`` follows within :data:`CLOSE_GRACE`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..audio.codecs import Codec, get_codec
from ..config import TelnyxSettings
from .call import SimulatedCall
from .media import LegError, MediaLeg, dial_url
from . import telnyx_extras
from .results import COMPLETED, HUNG_UP, REJECTED, STREAM_CLOSED, TRANSFERRED, Line, Webhook
from .telnyx_wire import TelnyxFrames, TelnyxSigner, install, now_iso, telnyx_error

__all__ = ["TelnyxCall", "TelnyxFrames", "TelnyxSigner", "install"]

VOICE_PATH = "/webhooks/telnyx/voice"
ANSWER_TIMEOUT = 10.0       # seconds the daemon has to send a command after call.initiated
CLOSE_GRACE = 2.0           # after the daemon closes the socket, wait this long for a hangup
CODECS = ("PCMU", "PCMA")
ENDS = ("hangup", "transfer", "script_done", "timeout")    # events that end the call


@dataclass(slots=True)
class _Stream:
    """One media stream of the call (the answer's, or a ``streaming_start``'s)."""

    leg: MediaLeg
    url: str
    task: asyncio.Task[None]

    @property
    def stream_id(self) -> str:
        return self.leg.dialect.stream_id  # type: ignore[attr-defined,no-any-return]


class TelnyxCall(SimulatedCall):
    """One inbound Telnyx call to the daemon. ``codec``: the caller leg's codec (PCMU, PCMA)."""

    carrier = "telnyx"
    post_cost = False           # send call.cost after the hang-up (outbound calls do)

    def __init__(self, *args: Any, signer: TelnyxSigner | None = None, codec: str = "PCMU",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.config.carrier, TelnyxSettings)
        self.settings: TelnyxSettings = self.config.carrier
        if codec.upper() not in CODECS:
            raise ValueError(f"codec {codec!r}: expected one of {', '.join(CODECS)}")
        self.signer, self.codec = signer, codec.upper()
        self.leg_id, self.session_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.state = "parked"
        self.client_state: str | None = None
        self._commands: set[str] = set()
        self._hangup: tuple[str, str] | None = None      # (cause, source) to report
        self._streams: dict[str, _Stream] = {}           # the streams up, by stream_id
        self._start_time = now_iso()
        self.hook_url = self.config.server.public_url.rstrip("/") + VOICE_PATH
        self.recordings: list[dict[str, Any]] = []      # record_start → recording.saved
        self.speaking: list[dict[str, Any]] = []        # speak commands being said
        self.sip_cause = ""                               # call.hangup's sip_hangup_cause

    def new_call_id(self) -> str:
        return "v3:" + base64.urlsafe_b64encode(secrets.token_bytes(36)).decode().rstrip("=")

    def payload(self, **extra: Any) -> dict[str, Any]:
        """The ids every call event carries, plus ``extra``."""
        if extra.pop("drop_call_control_id", False):    # e.g. call.recording.saved
            return {k: v for k, v in self.payload(**extra).items() if k != "call_control_id"}
        return {"call_control_id": self.call_id, "call_leg_id": self.leg_id,
                "call_session_id": self.session_id, "connection_id": self.settings.connection_id,
                "from": self.from_number, "to": self.config.phone_number,
                "client_state": self.client_state, **extra}

    def envelope(self, event_type: str, **extra: Any) -> dict[str, Any]:
        """A call event as Telnyx posts it."""
        return {"data": {"record_type": "event", "event_type": event_type,
                         "id": str(uuid.uuid4()), "occurred_at": now_iso(),
                         "payload": self.payload(**extra)},
                "meta": {"attempt": 1, "delivered_to": self.hook_url}}

    async def webhook(self, event_type: str, required: bool = False, **extra: Any) -> bool:
        """POST a signed call event to the daemon; False (and a problem) when it fails."""
        return await self.send_event(self.envelope(event_type, **extra), required)

    async def send_event(self, doc: dict[str, Any], required: bool = False,
                         attempt: int = 1) -> bool:
        """POST ``doc`` (signed, recorded in ``result.webhooks``); False when it failed."""
        doc["meta"]["attempt"] = attempt
        event_type = doc["data"]["event_type"]
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "telnyx-webhooks"}
        if self.signer is not None:
            headers.update(self.signer.headers(body))
        hook = Webhook(self.caller.now() if self.caller else 0.0, event_type, self.hook_url,
                       doc["data"]["payload"], attempt=attempt)
        self.result.webhooks.append(hook)
        problem = ""
        try:
            async with self.session.post(self.to_daemon(self.hook_url), data=body,
                                         headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                hook.status = resp.status
                if resp.status >= 300:
                    problem = f"answered HTTP {resp.status}: {(await resp.text())[:200]}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            hook.error = problem = (f"cannot reach the daemon at {self.url}: "
                                    f"{exc or type(exc).__name__}")
        if not problem:
            return True
        message = f"webhook {event_type} {problem}"
        if required:
            self.fail(message)
        else:
            self.result.warnings.append(message)
        return False

    def to_daemon(self, public_url: str) -> str:
        """Where a public URL of the daemon is reached locally (``--url`` + its path)."""
        parts = urlsplit(public_url)
        return self.url + parts.path + (f"?{parts.query}" if parts.query else "")

    def spawn_webhook(self, event_type: str, **extra: Any) -> None:
        """Send a webhook in the background (e.g. ``call.dtmf.received``)."""
        self._tasks.append(asyncio.create_task(self.webhook(event_type, **extra)))

    async def _run(self) -> None:
        if not await self.webhook("call.initiated", required=True, direction="incoming",
                                  state="parked", start_time=self._start_time,
                                  caller_id_name=self.from_number):
            return
        try:
            kind, body = await asyncio.wait_for(self.next_event(None), ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            kind, body = "no_command", None
        if kind == "reject":
            self._hangup = ("call_rejected", "callee")
            self.end(REJECTED, str(body.get("cause") or "rejected"))
        elif kind == "hangup":
            self._hangup = ("normal_clearing", "callee")
            self.end(HUNG_UP, "hung up without answering")
        elif kind == "answer":
            await self._answered(body)
        else:
            self._hangup = ("timeout", "unknown")
            self.fail(f"the daemon sent no answer command within {ANSWER_TIMEOUT:g} s of "
                      "call.initiated")

    async def _answered(self, body: dict[str, Any]) -> None:
        assert self.caller is not None
        self.state, self._hangup = "answered", ("normal_clearing", "caller")
        self.client_state = body.get("client_state") or self.client_state
        await self.webhook("call.answered", state="answered", start_time=self._start_time)
        url = body.get("stream_url")
        if not isinstance(url, str) or not url:
            self.fail("the answer command has no stream_url: no media stream, the agent is mute")
            return
        problem = await self._open_stream(url, body)
        if problem:
            self.fail(problem)
            return
        self.answered()
        while not self.ended:
            kind, data = await self.next_event([s.task for s in self._streams.values()])
            if kind == "leg_closed":
                await self._leg_closed(data)
            elif kind == "streaming_start":
                problem = await self._open_stream(str(data["stream_url"]), data)
                if problem:                 # the call goes on with the streams it has
                    self.result.errors.append(problem)
            elif kind == "streaming_stop":
                await self._stop_streams(str(data.get("stream_id") or "") or None)
            elif kind in ENDS:
                self.caller.streams.ending = True
                await self._stop_streams(None)
                self._on_event(kind, data)

    async def _open_stream(self, url: str, body: dict[str, Any]) -> str:
        """Open a media stream to ``url`` (``streaming.started``); the problem, or ``""``."""
        leg = self._leg(url, body)
        try:
            await leg.connect(self.session)
        except LegError as exc:
            await self.webhook("streaming.failed", failure_reason=str(exc),
                               stream_id=leg.dialect.stream_id,  # type: ignore[attr-defined]
                               stream_type="websocket", stream_params={
                                   "stream_url": url,
                                   "track": body.get("stream_track") or "inbound_track"})
            return str(exc)
        stream = _Stream(leg, url, asyncio.create_task(leg.run(), name=f"telnyx-{self.call_id}"))
        self._streams[stream.stream_id] = stream
        await self.webhook("streaming.started", stream_url=url)
        self.result.stream_ids.append(stream.stream_id)
        return ""

    async def _end_stream(self, stream: _Stream, *, stop: bool) -> None:
        """One stream is over (``stop``: Telnyx ends it): ``streaming.stopped``."""
        self._streams.pop(stream.stream_id, None)
        await self.end_leg(stream.leg, stream.task, stop=stop)
        await self.webhook("streaming.stopped", stream_url=stream.url)

    async def _stop_streams(self, stream_id: str | None) -> None:
        """``streaming_stop``: the stream ``stream_id``, or every stream (None)."""
        for stream in list(self._streams.values()):
            if stream_id is None or stream.stream_id == stream_id:
                await self._end_stream(stream, stop=True)

    async def _leg_closed(self, task: Any) -> None:
        stream = next((s for s in self._streams.values() if s.task is task), None)
        if stream is None:
            return
        await self._end_stream(stream, stop=False)
        if self._streams:
            return                          # another stream carries the call on
        try:
            kind, data = await asyncio.wait_for(self.next_event(None), CLOSE_GRACE)
        except asyncio.TimeoutError:
            kind, data = "", None
        if kind in ("hangup", "transfer"):
            self._on_event(kind, data)
        elif kind == "streaming_start":     # media again, after a gap the caller heard
            problem = await self._open_stream(str(data["stream_url"]), data)
            if problem:
                self.fail(problem)
        else:
            self.end(STREAM_CLOSED, "the daemon closed the media stream without a hangup "
                                    "command: on Telnyx the call stays up (and billed)")

    def _on_event(self, kind: str, data: Any) -> None:
        if kind == "hangup":
            self._hangup = ("normal_clearing", "callee")
            self.end(HUNG_UP, "hangup command")
        elif kind == "transfer":
            self.end(TRANSFERRED, str(data.get("to", "")))
        elif kind == "script_done":
            self.end(COMPLETED, "the caller hung up")
        elif kind == "timeout":
            self.fail(f"the call was still up after {self.timeout:g} s; the caller hung up")

    def _leg(self, url: str, body: dict[str, Any]) -> MediaLeg:
        assert self.caller is not None
        mode = body.get("stream_bidirectional_mode") or "mp3"
        bidi = str(body.get("stream_bidirectional_codec") or "PCMU")
        rx: Codec | None = None
        drop = ""
        if mode != "rtp":
            drop = (f"stream_bidirectional_mode is {mode!r}: Telnyx expects MP3 files in that "
                    "mode and drops the daemon's raw audio (one-way call); use \"rtp\"")
            self.result.errors.append(drop)
        elif bidi in ("PCMU", "PCMA", "L16"):
            rx = get_codec(bidi, 8000)
        else:
            drop = f"stream_bidirectional_codec {bidi!r} is not simulated (PCMU, PCMA, L16)"
            self.result.errors.append(drop)
        wanted = body.get("stream_codec")
        encoding = wanted if wanted in CODECS else self.codec  # Telnyx transcodes PCMU⇄PCMA only
        if body.get("stream_track") == "both_tracks":
            self.result.warnings.append("stream_track both_tracks: the simulator sends the "
                                        "inbound track only")
        params = {str(p["name"]): str(p.get("value", ""))
                  for p in body.get("custom_parameters") or [] if isinstance(p, dict)}
        dialect = TelnyxFrames(str(uuid.uuid4()), self, encoding,
                               params if "custom_parameters" in body else None)
        return MediaLeg(self.caller, dialect, url=dial_url(url, self.url), headers={},
                        tx_codec=get_codec(encoding), rx_codec=rx, drop_reason=drop,
                        errors=self.result.errors, warnings=self.result.warnings)

    async def on_rest(self, action: str, fields: dict[str, Any]) -> web.Response:
        if self.state == "hangup" or (self.ended and action != "hangup"):
            return telnyx_error(422, "90018", "Call has already ended",
                                "This call is no longer active and can't receive commands.")
        command = str(fields.get("command_id") or "")
        if command and command in self._commands:
            return web.json_response({"data": {"result": "ok"}})  # a retry: applied once
        if command:
            self._commands.add(command)
        if action in ("answer", "reject") and self.state != "parked":
            return telnyx_error(422, "90020", "Call is not ringing",
                                f"{action} is only possible before the call is answered")
        if action == "transfer" and not fields.get("to"):
            return telnyx_error(422, "10015", "Invalid parameter", "to is required")
        if action == "send_dtmf" and not fields.get("digits"):
            return telnyx_error(422, "10015", "Invalid parameter", "digits is required")
        problem = telnyx_extras.check(self, action, fields)
        if problem is not None:
            return problem
        self.action(action, fields)
        telnyx_extras.apply(self, action, fields)
        if action in ("hangup", "reject"):
            self.state = "hangup"
        elif action == "answer":
            self.state = "answering"
        elif action == "send_dtmf" and self.caller is not None:
            now = self.caller.now()
            self.caller.lines.append(Line("agent", now, now, f"[DTMF {fields['digits']}]"))
        if action in ("answer", "reject", "hangup", "transfer", "streaming_start",
                      "streaming_stop"):
            self.events.put_nowait((action, fields))
        return web.json_response({"data": {"result": "ok"}})

    async def _after_end(self) -> None:
        for stream in list(self._streams.values()):    # (a call that failed mid-way)
            await self._end_stream(stream, stop=True)
        await telnyx_extras.before_hangup(self)
        self.state = "hangup"
        if self._hangup is not None:
            cause, source = self._hangup
            await self.webhook("call.hangup", hangup_cause=cause, hangup_source=source,
                               sip_hangup_cause=self.sip_cause or (
                                   "603" if cause == "call_rejected" else "unspecified"),
                               start_time=self._start_time, end_time=now_iso())
        seconds = None if self.answered_at is None or self.caller is None \
            else self.caller.now() - self.answered_at
        await telnyx_extras.after_hangup(self, seconds)
