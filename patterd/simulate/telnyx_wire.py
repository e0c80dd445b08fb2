"""Telnyx on the wire, carrier side: Ed25519 webhook signing, media-streaming frames as Telnyx
sends them, and the Call Control REST route (``POST /calls/{id}/actions/{action}``, Bearer auth,
JSON, Telnyx's error shape) the daemon's commands arrive at."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web
from nacl.signing import SigningKey

from ..config import TelnyxSettings
from .api import CarrierApi
from .media import Dialect

if TYPE_CHECKING:
    from .telnyx import TelnyxCall


def now_iso() -> str:
    """Telnyx's ``occurred_at`` format."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TelnyxSigner:
    """Signs webhooks like Telnyx: Ed25519 over ``timestamp|body`` (PyNaCl)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) == 64:             # libsodium secret key = seed + public key
            seed = seed[:32]
        if len(seed) != 32:
            raise ValueError(f"expected a 32-byte Ed25519 seed, got {len(seed)} bytes")
        self.key = SigningKey(seed)

    @classmethod
    def from_base64(cls, text: str) -> "TelnyxSigner":
        """From the base64 seed given to ``--telnyx-signing-key``."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not a base64 Ed25519 seed: {exc}") from None

    @property
    def public_key_b64(self) -> str:
        """The raw public key in base64: what ``carrier.public_key`` must hold."""
        return base64.b64encode(bytes(self.key.verify_key)).decode("ascii")

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """``telnyx-signature-ed25519`` and ``telnyx-timestamp`` for ``body``."""
        stamp = str(int(datetime.now(timezone.utc).timestamp()) if timestamp is None
                    else timestamp)
        sig = self.key.sign(stamp.encode("ascii") + b"|" + body).signature
        return {"telnyx-signature-ed25519": base64.b64encode(sig).decode("ascii"),
                "telnyx-timestamp": stamp}


class TelnyxFrames(Dialect):
    """Media-streaming frames as Telnyx sends them. ``parameters``: a ``streaming_start``'s
    ``custom_parameters`` (name → value), sent as ``start.custom_parameters``."""

    carrier = "telnyx"

    def __init__(self, stream_id: str, call: "TelnyxCall", encoding: str,
                 parameters: dict[str, str] | None = None) -> None:
        super().__init__()
        self.stream_id, self.call, self.encoding = stream_id, call, encoding
        self.parameters = parameters
        self.user_id = str(uuid.uuid4())

    def connected(self) -> str:
        return self.dumps({"event": "connected", "version": "1.0.0"})

    def start(self) -> str:
        c = self.call
        start: dict[str, Any] = {
            "user_id": self.user_id, "call_control_id": c.call_id,
            "call_session_id": c.session_id, "client_state": c.client_state,
            "from": c.from_number, "to": c.config.phone_number,
            "media_format": {"encoding": self.encoding, "sample_rate": 8000, "channels": 1}}
        if self.parameters is not None:
            start["custom_parameters"] = dict(self.parameters)
        return self.dumps({"event": "start", "sequence_number": self.next_seq(),
                           "start": start, "stream_id": self.stream_id})

    def media(self, payload: bytes) -> str:
        chunk, stamp = self.next_chunk()    # the hot path: a template, not json.dumps
        return (f'{{"event":"media","sequence_number":"{self.next_seq()}","media":{{"track":'
                f'"inbound","chunk":"{chunk}","timestamp":"{stamp}","payload":'
                f'"{base64.b64encode(payload).decode("ascii")}"}},"stream_id":"{self.stream_id}"}}')

    def dtmf(self, digit: str) -> str:
        current = self.call.caller.leg if self.call.caller is not None else None
        if getattr(current, "dialect", self) is self:   # one webhook a key, however many streams
            self.call.spawn_webhook("call.dtmf.received", digit=digit)
        return self.dumps({"event": "dtmf", "stream_id": self.stream_id,
                           "occurred_at": now_iso(), "sequence_number": self.next_seq(),
                           "dtmf": {"digit": digit}})

    def mark(self, name: str) -> str:
        return self.dumps({"event": "mark", "sequence_number": self.next_seq(),
                           "stream_id": self.stream_id, "mark": {"name": name}})

    def stop(self) -> str:
        return self.dumps({"event": "stop", "sequence_number": self.next_seq(),
                           "stream_id": self.stream_id,
                           "stop": {"user_id": self.user_id,
                                    "call_control_id": self.call.call_id}})


def telnyx_error(status: int, code: str, title: str, detail: str = "") -> web.Response:
    """An error in Telnyx's JSON shape."""
    return web.json_response({"errors": [{"code": code, "title": title,
                                          "detail": detail or title}]}, status=status)


def install(api: CarrierApi, settings: TelnyxSettings) -> None:
    """Add ``POST /calls/{call_control_id}/actions/{action}`` and ``POST /calls`` (dial)
    (Bearer auth, JSON)."""

    async def _body(request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = None
        if request.headers.get("Authorization") != f"Bearer {settings.api_key}":
            api.log(request, 401, {})
            return {}, telnyx_error(401, "10009", "Authentication failed")
        if request.content_type != "application/json" or not isinstance(body, dict):
            api.log(request, 400, {})
            return {}, telnyx_error(400, "10015", "Bad request", "expected a JSON object")
        return body, None

    async def dial(request: web.Request) -> web.Response:
        body, denied = await _body(request)
        if denied is not None:
            return denied
        from .telnyx_out import dial as place    # (it builds calls, which import this module)
        return await place(api, settings.connection_id, request, body)

    async def action(request: web.Request) -> web.Response:
        body, denied = await _body(request)
        if denied is not None:
            return denied
        call = api.calls.get(request.match_info["call"])
        if call is None:
            ended = request.match_info["call"] in api.ended
            api.log(request, 422 if ended else 404, body)
            if ended:
                return telnyx_error(422, "90018", "Call has already ended",
                                    "This call is no longer active and can't receive commands.")
            return telnyx_error(404, "10005", "Resource not found")
        return await call.on_rest(request.match_info["action"], body)

    api.add_post("/calls/{call}/actions/{action}", action)
    api.add_post("/calls", dial)
