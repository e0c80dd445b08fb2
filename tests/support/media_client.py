"""A carrier's side of one media WebSocket, opened straight at the daemon: authenticated as
the carrier does it (Twilio's signed upgrade, Telnyx's per-call token), then ``start``, and
``stop`` when the test says so. Frames the daemon sends are drained in the background."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from patterd.carriers.telnyx.stream_token import StreamTokens
from patterd.carriers.twilio.signature import compute_signature
from patterd.carriers.twilio.stream_token import StreamTokens as TwilioTokens
from tests.conftest import TELNYX_KEY
from tests.support.signing import TWILIO_SID, TWILIO_TOKEN

TWILIO_WSS = "wss://voice.example.com/media/twilio"


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for ``predicate`` to hold (polling), or fail the test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class MediaStream:
    """One open media socket as the carrier holds it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, stop_frame: dict[str, Any]
                 ) -> None:
        self.ws = ws
        self._stop = stop_frame
        self.received = 0
        self._reader = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        async for _ in self.ws:
            self.received += 1

    async def stop(self) -> None:
        """The carrier ends the stream: ``stop``, then the socket closes."""
        await self.ws.send_str(json.dumps(self._stop))
        await self.close()

    async def close(self) -> None:
        """Close the socket (without a ``stop`` unless :meth:`stop` sent one)."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def twilio_token(call_id: str, direction: str = "inbound") -> str:
    """The stream token the voice webhook would have put in the TwiML for ``call_id``."""
    return TwilioTokens(TWILIO_TOKEN).mint(call_id, direction)


def telnyx_token(call_id: str, direction: str = "inbound") -> str:
    """The stream token the daemon would have put in the call's Telnyx ``stream_url``."""
    return StreamTokens(TELNYX_KEY).mint(call_id, direction)


async def twilio_stream(client: Any, call_id: str, direction: str = "inbound",
                        token: str | None = None) -> MediaStream:
    """Twilio's Media Streams socket for ``call_id`` (signed upgrade, ``start`` with the
    call's stream token)."""
    sig = compute_signature(TWILIO_TOKEN.encode(), TWILIO_WSS, []).decode()
    ws = await client.ws_connect("/media/twilio", headers={"X-Twilio-Signature": sig})
    await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send_str(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": call_id, "accountSid": TWILIO_SID,
        "customParameters": {"call_id": call_id, "direction": direction,
                             "stream_token": token or twilio_token(call_id, direction)},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    return MediaStream(ws, {"event": "stop", "streamSid": "MZ1",
                            "stop": {"accountSid": TWILIO_SID, "callSid": call_id}})


async def telnyx_stream(client: Any, call_id: str, token: str | None = None) -> MediaStream:
    """Telnyx's media socket for ``call_id`` (token in the URL, ``start``)."""
    ws = await client.ws_connect(f"/media/telnyx/{token or telnyx_token(call_id)}")
    await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
    await ws.send_str(json.dumps({"event": "start", "stream_id": "st-1", "start": {
        "call_control_id": call_id, "media_format": {"encoding": "PCMU", "sample_rate": 8000,
                                                     "channels": 1}}}))
    return MediaStream(ws, {"event": "stop", "stream_id": "st-1",
                            "stop": {"call_control_id": call_id}})
