"""Media WebSockets: refused before the upgrade unless authenticated; junk frames counted."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from patterd.carriers.telnyx.stream_token import StreamTokens
from patterd.carriers.twilio.signature import compute_signature
from tests.conftest import TELNYX_KEY, config, gateway_of, telnyx_raw, twilio_raw
from tests.support.media_client import twilio_token
from tests.support.signing import TWILIO_SID, TWILIO_TOKEN, call_sid

WSS = "wss://voice.example.com/media/twilio"


def twilio_sig(url: str = WSS, token: str = TWILIO_TOKEN) -> str:
    return compute_signature(token.encode(), url, []).decode()


async def test_twilio_media_needs_a_valid_signature(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    for headers in ({}, {"X-Twilio-Signature": "bogus"},
                    {"X-Twilio-Signature": twilio_sig(token="other")},
                    {"X-Twilio-Signature": twilio_sig("wss://evil.example.com/media/twilio")}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/media/twilio", headers=headers)
        assert info.value.status == 403
    ws = await client.ws_connect("/media/twilio", headers={"X-Twilio-Signature": twilio_sig()})
    await ws.close()
    assert gateway_of(client).metrics.signature_failures.labels("twilio")._value.get() == 4


async def test_telnyx_media_needs_the_calls_token(daemon, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(telnyx_raw(telnyx_signer.public_key_b64)))
    good = StreamTokens(TELNYX_KEY).mint("v3:call-a", "inbound")
    for token in ("nope", StreamTokens("other-key").mint("v3:call-a", "inbound"), good + "x"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(f"/media/telnyx/{token}")
        assert info.value.status == 403
    # A valid token for call A cannot carry call B.
    ws = await client.ws_connect(f"/media/telnyx/{good}")
    await ws.send_str(json.dumps({"event": "start", "stream_id": "s", "start": {
        "call_control_id": "v3:call-b", "media_format": {"encoding": "PCMU",
                                                         "sample_rate": 8000}}}))
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4403
    assert not gateway_of(client).sessions


async def test_unknown_and_malformed_frames_are_counted_and_ignored(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    ws = await client.ws_connect("/media/twilio", headers={"X-Twilio-Signature": twilio_sig()})
    junk = ["not json", "[1,2]", '{"event":"media","media":{"payload":"@@"}}',
            '{"event":"telepathy"}', "[" * 100000]
    for frame in junk:
        await ws.send_str(frame)
    await ws.send_bytes(b"\x00\x01")
    await ws.send_str(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": call_sid(1), "accountSid": TWILIO_SID,
        "customParameters": {"call_id": call_sid(1), "stream_token": twilio_token(call_sid(1))},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    await ws.send_str('{"event":"dtmf","dtmf":{"digit":"?"}}')
    await ws.send_str(json.dumps({"event": "media", "media": {
        "payload": base64.b64encode(b"\xff" * 160).decode()}}))
    # The call is alive: the greeting arrives.
    msg = await ws.receive(timeout=5)
    assert json.loads(msg.data)["event"] == "media"
    gw = gateway_of(client)
    assert gw.metrics.media_invalid._value.get() == len(junk) + 2
    assert len(gw.sessions) == 1
    await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ1"}))
    await ws.close()
    for _ in range(100):
        if not gw.sessions:
            break
        await asyncio.sleep(0.02)
    assert not gw.sessions


async def test_telnyx_stream_in_a_codec_we_cannot_decode_ends_the_call(  # type: ignore[no-untyped-def]
        daemon, telnyx_signer, fake_telnyx) -> None:
    """A G.722 leg (Telnyx transcodes only between PCMU and PCMA): rather than leave the
    caller in silence, the call is hung up through the REST API and recorded as failed."""
    fake, base = fake_telnyx
    raw = telnyx_raw(telnyx_signer.public_key_b64)
    raw["carrier"]["api_base_url"] = base
    client = await daemon(config(raw))
    token = StreamTokens(TELNYX_KEY).mint("v3:call-g722", "inbound")
    ws = await client.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(json.dumps({"event": "start", "stream_id": "s", "start": {
        "call_control_id": "v3:call-g722", "media_format": {"encoding": "G722",
                                                            "sample_rate": 16000}}}))
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4415
    gw = gateway_of(client)
    assert not gw.sessions
    assert ("v3:call-g722", "hangup") in fake.applied
    rec = gw.registry.get("v3:call-g722")
    assert rec.outcome == "failed"
    assert [e["type"] for e in rec.events] == ["unsupported_codec"]
    assert "G722" in rec.events[0]["reason"]
