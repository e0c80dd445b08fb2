"""benchmarks/twilio_token_relay.py: a load client that only opens Media Streams WebSockets (no
webhook, no stream token) gets a served call through the relay, and is refused without it.

A daemon on a real 127.0.0.1 socket (stub STT/TTS, rules LLM, Silero), its public URL the
production-like ``https://voice.example.com`` the signatures are computed over; the client
sends what the shared Media Streams load client sends: ``connected``, ``start`` with its own
parameters, 20 ms μ-law frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from patterd.audio.codecs import ulaw_encode
from patterd.carriers.twilio.signature import compute_signature
from patterd.simulate import say
from tests.conftest import config, twilio_raw
from tests.support.signing import PUBLIC_URL, TWILIO_SID

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from twilio_token_relay import TokenRelay  # noqa: E402

pytestmark = pytest.mark.slow


async def load_client_call(url: str, phrase: bytes,
                           signature: str = "") -> tuple[int, str, int | None]:
    """One call as the load client places it (``signature``: its X-Twilio-Signature): (media
    frames received, their streamSid, the close code when the server closed first)."""
    call_sid, stream_sid = "CA" + uuid.uuid4().hex, "MZ" + uuid.uuid4().hex
    audio = ulaw_encode(bytes(8000) + phrase + bytes(16000))
    got, sid = 0, ""
    headers = {"X-Twilio-Signature": signature} if signature else {}
    async with aiohttp.ClientSession() as session, session.ws_connect(url,
                                                                      headers=headers) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call",
                                      "version": "1.0.0"}))
        await ws.send_str(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {"accountSid": TWILIO_SID, "streamSid": stream_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": {
                          "call_id": call_sid, "direction": "inbound",
                          "from": "+15550100001", "to": "+15550001234"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}}}))

        async def receive() -> None:
            nonlocal got, sid
            async for msg in ws:
                frame: dict[str, Any] = json.loads(msg.data)
                if frame.get("event") == "media":
                    got += 1
                    sid = frame.get("streamSid", "")

        reader = asyncio.create_task(receive())
        for i, at in enumerate(range(0, len(audio), 160)):
            if ws.closed:
                break
            await ws.send_str(json.dumps({
                "event": "media", "sequenceNumber": str(i + 2), "streamSid": stream_sid,
                "media": {"track": "inbound", "chunk": str(i + 1), "timestamp": str(20 * i),
                          "payload": base64.b64encode(audio[at:at + 160]).decode()}}))
            await asyncio.sleep(0.02)
        code = ws.close_code
        if not ws.closed:
            await ws.send_str(json.dumps({"event": "stop", "streamSid": stream_sid,
                                          "stop": {"accountSid": TWILIO_SID,
                                                   "callSid": call_sid}}))
            await ws.close()
        await reader
    return got, sid if got else "", code


async def test_the_relay_gets_a_token_for_the_load_clients_calls(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = config(twilio_raw())
    client = await daemon(cfg)
    target = str(client.make_url("")).rstrip("/")
    relay = TokenRelay(target, PUBLIC_URL, cfg.carrier.auth_token)
    server = TestServer(relay.app(), host="127.0.0.1")
    await server.start_server()
    try:
        phrase = (await say("goodbye")).pcm
        # Straight to the daemon, the upgrade signed as the shared client signs it.
        signed = compute_signature(cfg.carrier.auth_token.encode(),
                                   PUBLIC_URL.replace("https", "wss") + "/media/twilio", [])
        direct = await load_client_call(target.replace("http", "ws") + "/media/twilio", phrase,
                                        signed.decode())
        relayed = await load_client_call(f"ws://127.0.0.1:{server.port}/media/twilio", phrase)
    finally:
        await server.close()
    # Straight to the daemon: signed, but the start has no stream token: refused.
    assert direct[0] == 0, direct
    # Through the relay: a served call — the greeting and the answer played to it.
    assert relayed[0] > 10, relayed
    assert relayed[1].startswith("MZ")
    assert (relay.streams, relay.refused) == (1, 0)
