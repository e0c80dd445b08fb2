"""A tiny stand-in daemon for the simulator's tests: it answers webhooks the way patterd does
(TwiML ``<Connect><Stream>`` / Telnyx ``answer`` command), checks signatures with the carriers'
reference code (twilio-python's RequestValidator, PyNaCl), and lets each test drive the media
socket from the daemon's side."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from twilio.request_validator import RequestValidator

from patterd.audio.codecs import get_codec
from patterd.config import Config, build_config

PUBLIC_URL = "https://voice.example.com"
TWILIO_SID = "AC" + "2b" * 16
TWILIO_TOKEN = "sim-test-token-0123456789"
TELNYX_KEY = "KEYsimulator0123"
PHONE = "+15550001234"
TWIML_STREAM = "wss://voice.example.com/media/twilio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twilio_config(api_port: int | None = None, **agent: Any) -> Config:
    raw: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL},
        "phone_number": PHONE,
        "carrier": {"provider": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
                    "configure_number": False,
                    "api_base_url": f"http://127.0.0.1:{api_port or free_port()}"},
    }
    if agent:
        raw["agent"] = agent
    return build_config(raw, env={})


def telnyx_config(public_key: str, api_port: int | None = None) -> Config:
    return build_config({
        "server": {"public_url": PUBLIC_URL},
        "phone_number": PHONE,
        "carrier": {"provider": "telnyx", "api_key": TELNYX_KEY, "public_key": public_key,
                    "connection_id": "2811212257810187875",
                    "api_base_url": f"http://127.0.0.1:{api_port or free_port()}/v2"},
    }, env={})


def tone(seconds: float, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone as s16le 8 kHz PCM."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


class Stream:
    """The daemon's side of one media socket."""

    def __init__(self, ws: web.WebSocketResponse, carrier: str, path: str,
                 headers: dict[str, str]) -> None:
        self.ws, self.carrier, self.path, self.headers = ws, carrier, path, headers
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.start: dict[str, Any] = {}
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()
        self.codec = get_codec("PCMU")
        self.caller_voiced_at: list[float] = []     # arrival of voiced caller frames

    @property
    def stream_id(self) -> str:
        if self.carrier == "twilio":
            return self.start.get("streamSid", "")
        return self.start.get("stream_id", "")

    def events(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, f) for t, f in self.frames if f.get("event") == name]

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            now = time.monotonic()
            self.frames.append((now, frame))
            event = frame.get("event")
            if event == "start":
                self.start = frame
                fmt = frame["start"].get("mediaFormat") or frame["start"].get("media_format")
                self.codec = get_codec(fmt["encoding"], 8000)
                self.started.set()
            elif event == "media":
                pcm = self.codec.decode(base64.b64decode(frame["media"]["payload"]))
                if np.abs(np.frombuffer(pcm, "<i2")).max() > 500:
                    self.caller_voiced_at.append(now)
            elif event == "stop":
                self.stopped.set()
        self.closed.set()

    def _frame(self, body: dict[str, Any]) -> str:
        if self.carrier == "twilio":
            body["streamSid"] = self.stream_id
        return json.dumps(body)

    async def send_audio(self, pcm: bytes, frame_ms: int = 0) -> None:
        """Send PCM as μ-law ``media``: one frame, or paced ``frame_ms`` frames in real time."""
        payload = get_codec("PCMU").encode(pcm)
        if not frame_ms:
            await self.ws.send_str(self._frame({"event": "media", "media": {
                "payload": base64.b64encode(payload).decode()}}))
            return
        step = 8 * frame_ms
        start = time.monotonic()
        for i in range(0, len(payload), step):
            await self.ws.send_str(self._frame({"event": "media", "media": {
                "payload": base64.b64encode(payload[i:i + step]).decode()}}))
            delay = start + (i // step + 1) * frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def send_mark(self, name: str) -> None:
        await self.ws.send_str(self._frame({"event": "mark", "mark": {"name": name}}))

    async def send_clear(self) -> None:
        await self.ws.send_str(self._frame({"event": "clear"}))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.005)

    async def wait_mark(self, name: str, timeout: float = 5.0) -> float:
        await self.wait_for(lambda: any(f["mark"]["name"] == name
                                        for _, f in self.events("mark")), timeout)
        return next(t for t, f in self.events("mark") if f["mark"]["name"] == name)

    async def wait_caller_silent(self, after: float = 0.0, gap: float = 0.1) -> float:
        """Wait until the caller spoke and then stayed silent ``gap`` s; its last voiced time."""
        await self.wait_for(lambda: bool(self.caller_voiced_at) and self.caller_voiced_at[-1]
                            > after and time.monotonic() - self.caller_voiced_at[-1] > gap, 10)
        return self.caller_voiced_at[-1]


Behavior = Callable[[Stream], Awaitable[None]]


class StandIn:
    """The stand-in daemon; ``behavior`` runs once per media socket after ``start``."""

    def __init__(self, config: Config, behavior: Behavior | None = None, *,
                 twiml: str | None = None, voice_status: int = 200,
                 answer: dict[str, Any] | None = None, answer_calls: bool = True) -> None:
        self.config, self.behavior = config, behavior
        self.twiml, self.voice_status = twiml, voice_status
        self.answer_overrides, self.answer_calls = answer or {}, answer_calls
        self.webhooks: list[tuple[str, dict[str, str], bytes, bool]] = []
        self.streams: list[Stream] = []
        self.errors: list[BaseException] = []
        self.rest: list[tuple[int, Any]] = []
        self.server: TestServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def __aenter__(self) -> "StandIn":
        app = web.Application()
        app.router.add_post("/webhooks/twilio/{kind}", self._twilio_webhook)
        app.router.add_post("/webhooks/telnyx/voice", self._telnyx_webhook)
        app.router.add_get("/media/twilio", self._media)
        app.router.add_get("/media/telnyx/{token}", self._media)
        self.add_routes(app)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession()
        return self

    def add_routes(self, app: web.Application) -> None:
        """More routes (subclasses)."""

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        assert self.server is not None and self.session is not None
        await self.session.close()
        await self.server.close()

    def webhook_params(self, kind: str) -> list[dict[str, str]]:
        return [dict(parse_qsl(body.decode())) for path, _, body, _ in self.webhooks
                if path.endswith(kind)]

    def telnyx_events(self) -> list[dict[str, Any]]:
        return [json.loads(body)["data"] for path, _, body, _ in self.webhooks
                if "telnyx" in path]

    # ------------------------------------------------------------------ Twilio
    async def _twilio_webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        url = PUBLIC_URL + request.raw_path           # the signed URL keeps its query string
        ok = RequestValidator(TWILIO_TOKEN).validate(
            url, params, request.headers.get("X-Twilio-Signature", ""))
        self.webhooks.append((request.path, dict(request.headers), body, ok))
        if not ok:
            return web.Response(status=403)
        if request.match_info["kind"] != "voice":
            return web.Response(status=204)
        if self.voice_status != 200:
            return web.Response(status=self.voice_status, text="nope")
        doc = self.twiml or (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{TWIML_STREAM}" name="patterd">'
            f'<Parameter name="call_id" value="{params["CallSid"]}"/>'
            '<Parameter name="direction" value="inbound"/></Stream></Connect></Response>')
        return web.Response(text=doc, content_type="text/xml")

    async def twilio_update(self, call_sid: str, fields: dict[str, str],
                            auth: tuple[str, str] = (TWILIO_SID, TWILIO_TOKEN)
                            ) -> tuple[int, Any]:
        assert self.session is not None
        base = self.config.carrier.api_base_url
        url = f"{base}/2010-04-01/Accounts/{TWILIO_SID}/Calls/{call_sid}.json"
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        async with self.session.post(url, data=fields,
                                     headers={"Authorization": f"Basic {token}"}) as resp:
            result = (resp.status, await resp.json())
        self.rest.append(result)
        return result

    # ------------------------------------------------------------------ Telnyx
    async def _telnyx_webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = VerifyKey(base64.b64decode(self.config.carrier.public_key))  # type: ignore[union-attr]
        ts = request.headers.get("telnyx-timestamp", "")
        try:
            key.verify(ts.encode() + b"|" + body,
                       base64.b64decode(request.headers.get("telnyx-signature-ed25519", "")))
            ok = abs(time.time() - int(ts)) < 300
        except (BadSignatureError, ValueError):
            ok = False
        self.webhooks.append((request.path, dict(request.headers), body, ok))
        if not ok:
            return web.Response(status=403)
        data = json.loads(body)["data"]
        if data["event_type"] == "call.initiated" and self.answer_calls:
            ccid = data["payload"]["call_control_id"]
            self._tasks.append(asyncio.create_task(self.telnyx_command(ccid, "answer", {
                "stream_url": f"wss://voice.example.com/media/telnyx/tok-{len(self.streams)}",
                "stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
                "stream_bidirectional_codec": "PCMU", "client_state": "eyJhIjoxfQ==",
                "command_id": "cmd-answer", **self.answer_overrides})))
        return web.json_response({"status": "ok"})

    async def telnyx_command(self, ccid: str, action: str, body: dict[str, Any],
                             key: str = TELNYX_KEY) -> tuple[int, Any]:
        assert self.session is not None
        url = f"{self.config.carrier.api_base_url}/calls/{quote(ccid, safe='')}/actions/{action}"
        async with self.session.post(url, json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
            result = (resp.status, await resp.json())
        self.rest.append(result)
        return result

    # ------------------------------------------------------------------ media
    async def _media(self, request: web.Request) -> web.StreamResponse:
        carrier = "twilio" if request.path == "/media/twilio" else "telnyx"
        if carrier == "twilio" and not RequestValidator(TWILIO_TOKEN).validate(
                TWIML_STREAM, {}, request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        stream = Stream(ws, carrier, request.path, dict(request.headers))
        self.streams.append(stream)
        reader = asyncio.create_task(stream.read())
        try:
            await asyncio.wait_for(stream.started.wait(), 5)
            if self.behavior is not None:
                await self.behavior(stream)
        except BaseException as exc:  # surfaced by the test through .errors
            self.errors.append(exc)
        await reader
        return ws
