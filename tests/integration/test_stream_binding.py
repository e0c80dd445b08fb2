"""Every media stream is bound to its call: a ``start`` is served only with the stream token
the daemon handed the carrier for that call (Twilio ``<Parameter>``, Telnyx ``stream_url``),
once. The attacks of the security review — a forged Twilio stream naming a live call, a
Telnyx outbound token naming another call, a token replayed after its call (and after a
restart), ids that are not the carrier's — are refused before they touch any call."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp

from patterd.carriers.telnyx.stream_token import StreamTokens as TelnyxTokens
from patterd.carriers.twilio.signature import compute_signature
from patterd.carriers.twilio.stream_token import StreamTokens as TwilioTokens
from tests.conftest import TELNYX_KEY, config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_twilio_webhooks import voice_params
from tests.support.media_client import (TWILIO_WSS, telnyx_stream, telnyx_token, twilio_stream,
                                        twilio_token, until)
from tests.support.signing import (PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, call_sid,
                                   telnyx_event, twilio_form)

ADMIN = "9b1f0c6e4d2a47b8a3e5f7c1d0b2a4e6"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def voice_token(client: Any, sid: str) -> str:
    """The stream token in the TwiML the voice webhook answers for call ``sid``."""
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/voice", voice_params(
        int(sid[2:], 16)))
    resp = await client.post("/webhooks/twilio/voice", data=body, headers=headers)
    assert resp.status == 200
    return stream_params(await resp.text())["stream_token"]


def stream_params(twiml: str) -> dict[str, str]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


async def twilio_start(client: Any, start: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
    """A correctly signed upgrade (the one value Twilio signs for every call), then
    ``start`` with whatever the caller of this helper puts in it."""
    sig = compute_signature(TWILIO_TOKEN.encode(), TWILIO_WSS, []).decode()
    ws = await client.ws_connect("/media/twilio", headers={"X-Twilio-Signature": sig})
    frame = {"streamSid": "MZ9", "accountSid": TWILIO_SID,
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
             **start}
    await ws.send_str(json.dumps({"event": "start", "streamSid": "MZ9", "start": frame}))
    return ws


REASONS: dict[int, str] = {}


async def close_code(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> int | None:
    """The code the daemon closed ``ws`` with (frames it sent first are skipped; None if it
    kept the socket open); its reason is left in ``REASONS[id(ws)]``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING):
            REASONS[id(ws)] = msg.extra if isinstance(msg.extra, str) else ""
            return ws.close_code
    return None


def refused(gw: Any, carrier: str, reason: str) -> float:
    return gw.metrics.media_refused.labels(carrier, reason)._value.get()


async def test_a_forged_twilio_start_cannot_take_over_a_live_call(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base},
                                            server={"max_calls": 3})))
    gw = gateway_of(client)
    victim = call_sid(1)
    token = await voice_token(client, victim)
    stream = await twilio_stream(client, victim, token=token)
    await until(lambda: any(s.call_id == victim for s in gw.sessions))
    expired = TwilioTokens(TWILIO_TOKEN).mint(victim, "inbound", 300, now=time.time() - 400)
    attempts = {
        "no token (the review's reproduction)": {},
        "a token of another call": {"stream_token": twilio_token(call_sid(2))},
        "a forged token": {"stream_token": token.split(".")[0] + "." + "A" * 24},
        "an expired token": {"stream_token": expired},
        "a token keyed for Telnyx": {"stream_token": TelnyxTokens(TWILIO_TOKEN).mint(
            victim, "inbound")},
        "the victim's own token, again": {"stream_token": token},
    }
    for what, params in attempts.items():
        for _ in range(2):   # more forged streams than server.max_calls
            ws = await twilio_start(client, {"callSid": victim, "customParameters": params})
            assert await close_code(ws) == 4403, what
            await ws.close()
    await asyncio.sleep(0.2)
    # Nothing reached the victim: one session, no hang-up sent for it, readiness unaffected.
    assert [s.call_id for s in gw.sessions] == [victim]
    assert not [r for r in fake.requests if r.path.endswith(f"/Calls/{victim}.json")]
    assert (await client.get("/readyz")).status == 200
    assert gw.registry.live_count() == 1
    assert refused(gw, "twilio", "token") == 10 and refused(gw, "twilio", "replay") == 2
    # A genuine caller still gets the stream, not <Reject>.
    assert "<Reject" not in (await (await client.post(
        "/webhooks/twilio/voice", **_signed_voice(call_sid(3)))).text())
    await stream.stop()


def _signed_voice(sid: str) -> dict[str, Any]:
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/voice",
                                voice_params(int(sid[2:], 16)))
    return {"data": body, "headers": headers}


async def test_ids_that_are_not_callsids_are_refused_at_every_door(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(admin={"token": ADMIN})))
    gw = gateway_of(client)
    evil = "../../../../tmp/evil"
    ws = await twilio_start(client, {"callSid": evil, "customParameters": {
        "stream_token": twilio_token(evil)}})     # even with a token minted for it
    assert await close_code(ws) == 4403
    assert "CallSid" in REASONS[id(ws)]
    assert gw.registry.get(evil) is None and not gw.sessions
    assert refused(gw, "twilio", "call_id") == 1
    listed = await (await client.get("/v1/calls", headers=AUTH)).json()
    assert listed["calls"] == []
    for path in ("/v1/calls/CA123", "/v1/calls/..%2F..%2Fetc", "/v1/calls/v3:a.b"):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 404 and "CallSid" in (await resp.json())["error"], path
        resp = await client.post(path + "/hangup", headers=AUTH)
        assert resp.status == 404, path
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/status",
                                {"CallSid": evil, "CallStatus": "completed"})
    resp = await client.post("/webhooks/twilio/status", data=body, headers=headers)
    assert resp.status == 400 and "CallSid" in (await resp.json())["error"]


async def test_a_twilio_start_that_cannot_be_served_ends_the_socket(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    gw = gateway_of(client)
    ws = await twilio_start(client, {"customParameters": {}})       # no callSid
    assert await close_code(ws) == 4400
    assert "callSid" in REASONS[id(ws)]
    ws = await twilio_start(client, {"callSid": call_sid(1), "customParameters": {
        "stream_token": twilio_token(call_sid(1))},
        "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}})
    assert await close_code(ws) == 4415
    assert not gw.sessions and refused(gw, "twilio", "unservable") == 2


async def test_a_media_socket_without_a_start_is_closed(daemon, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(telnyx_raw(telnyx_signer.public_key_b64,
                                            server={"media_start_timeout": 0.3})))
    gw = gateway_of(client)
    ws = await client.ws_connect(f"/media/telnyx/{telnyx_token('v3:never-starts')}")
    began = time.monotonic()
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str("junk frames do not keep it open")
    assert await close_code(ws, timeout=5) == 4408
    assert 0.25 < time.monotonic() - began < 3
    assert refused(gw, "telnyx", "timeout") == 1


async def test_twilio_outbound_token_carries_only_the_dialled_call(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base},
                                            admin={"token": ADMIN})))
    gw = gateway_of(client)
    resp = await client.post("/v1/calls", headers=AUTH, json={"to": "+15557654321"})
    assert resp.status == 201
    sid = (await resp.json())["call_id"]
    twiml = dict(next(r for r in fake.requests if r.path.endswith("/Calls.json")).form)["Twiml"]
    params = stream_params(twiml)
    token = params["stream_token"]
    other = call_sid(77)
    ws = await twilio_start(client, {"callSid": other, "customParameters": params})
    assert await close_code(ws) == 4403
    stream = await twilio_stream(client, sid, "outbound", token=token)
    await until(lambda: any(s.call_id == sid for s in gw.sessions))
    session = next(s for s in gw.sessions if s.call_id == sid)
    assert session.parameters["direction"] == "outbound"
    assert "stream_token" not in session.parameters       # never kept with the call
    await stream.stop()


async def test_twilio_stream_resumed_after_dtmf_has_a_token_of_its_own(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base},
                                            admin={"token": ADMIN})))
    gw = gateway_of(client)
    sid = call_sid(5)
    first = await voice_token(client, sid)
    stream = await twilio_stream(client, sid, token=first)
    await until(lambda: any(s.call_id == sid for s in gw.sessions))
    resp = await client.post(f"/v1/calls/{sid}/dtmf", headers=AUTH, json={"digits": "12"})
    assert resp.status == 200, await resp.text()
    update = dict(next(r for r in fake.requests if r.path.endswith(f"/Calls/{sid}.json")).form)
    params = stream_params(update["Twiml"])
    assert params["resumed"] == "1" and params["stream_token"] != first
    await stream.stop()                                   # Twilio ends the old stream
    await until(lambda: not gw.sessions)
    ws = await twilio_start(client, {"callSid": sid, "customParameters": {
        **params, "stream_token": first}})
    assert await close_code(ws) == 4403                   # the first token is spent
    resumed = await twilio_stream(client, sid, token=params["stream_token"])
    await until(lambda: any(s.call_id == sid for s in gw.sessions))
    await resumed.stop()


async def telnyx_daemon(daemon: Any, signer: Any, base: str, **sections: Any) -> Any:
    raw = telnyx_raw(signer.public_key_b64, admin={"token": ADMIN}, **sections)
    raw["carrier"]["api_base_url"] = base
    return await daemon(config(raw))


async def telnyx_answer(client: Any, signer: Any, ccid: str, n: int) -> None:
    for i, (kind, extra) in enumerate((("call.initiated", {"direction": "incoming"}),
                                       ("call.answered", {}))):
        body = telnyx_event(kind, {"call_control_id": ccid, "from": "+15551112222",
                                   "to": "+15550001234", **extra}, f"evt-{n}-{i}")
        resp = await client.post("/webhooks/telnyx/voice", data=body, headers=signer.sign(body))
        assert resp.status == 200


def telnyx_start(ccid: str, client_state: str | None = None) -> str:
    start: dict[str, Any] = {"call_control_id": ccid,
                             "media_format": {"encoding": "PCMU", "sample_rate": 8000}}
    if client_state is not None:
        start["client_state"] = client_state
    return json.dumps({"event": "start", "stream_id": "st-9", "start": start})


async def test_a_telnyx_outbound_token_cannot_carry_another_call(  # type: ignore[no-untyped-def]
        daemon, telnyx_signer, fake_telnyx) -> None:
    fake, base = fake_telnyx
    client = await telnyx_daemon(daemon, telnyx_signer, base)
    gw = gateway_of(client)
    victim = "v3:victim-call"
    await telnyx_answer(client, telnyx_signer, victim, 1)
    live = await telnyx_stream(client, victim)
    await until(lambda: any(s.call_id == victim for s in gw.sessions))
    resp = await client.post("/v1/calls", headers=AUTH, json={"to": "+15557654321"})
    assert resp.status == 201
    dialled = (await resp.json())["call_id"]
    dial = next(r for r in fake.requests if r.path == "/v2/calls").json
    token = dial["stream_url"].rsplit("/", 1)[1]
    state = json.loads(base64.b64decode(dial["client_state"]))
    # The review's reproduction: the outbound token, no client_state, another live call.
    ws = await client.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(telnyx_start(victim))
    assert await close_code(ws) == 4403
    # Nor with a client_state of another dial.
    other_state = base64.b64encode(json.dumps({**state, "ref": "f" * 32}).encode()).decode()
    ws = await client.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(telnyx_start(dialled, other_state))
    assert await close_code(ws) == 4403
    await asyncio.sleep(0.1)
    assert (victim, "hangup") not in fake.applied                 # nobody hung up the victim
    # The dialled call itself, with or without client_state: served once.
    ws = await client.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(telnyx_start(dialled))
    await until(lambda: any(s.call_id == dialled for s in gw.sessions))
    again = await client.ws_connect(f"/media/telnyx/{token}")
    await again.send_str(telnyx_start(dialled, dial["client_state"]))
    assert await close_code(again) == 4403
    assert refused(gw, "telnyx", "token") == 2 and refused(gw, "telnyx", "replay") == 1
    await ws.close()
    await live.stop()


async def test_a_spent_telnyx_token_stays_spent_after_a_restart(  # type: ignore[no-untyped-def]
        daemon, telnyx_signer, fake_telnyx, tmp_path: Path) -> None:
    """An ended call's token replayed (the review: it replayed the greeting and made the daemon
    hang the call up again) — also once the daemon restarted on its SQLite store."""
    fake, base = fake_telnyx
    store = {"url": f"sqlite:///{tmp_path / 'calls.db'}"}
    ccid = "v3:replayed-call"
    token = telnyx_token(ccid)
    first = await telnyx_daemon(daemon, telnyx_signer, base, store=store)
    stream = await telnyx_stream(first, ccid, token=token)
    await until(lambda: any(s.call_id == ccid for s in gateway_of(first).sessions))
    await stream.stop()
    await until(lambda: not gateway_of(first).sessions)
    ws = await first.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(telnyx_start(ccid))
    assert await close_code(ws) == 4403
    await first.close()
    hangups = len(fake.applied)
    second = await telnyx_daemon(daemon, telnyx_signer, base, store=store)
    ws = await second.ws_connect(f"/media/telnyx/{token}")
    await ws.send_str(telnyx_start(ccid))
    assert await close_code(ws) == 4403
    assert "used already" in REASONS[id(ws)]
    assert refused(gateway_of(second), "telnyx", "replay") == 1
    assert len(fake.applied) == hangups and not gateway_of(second).sessions


async def test_a_token_expires_minutes_after_the_call_could_have_connected(  # type: ignore[no-untyped-def]
        daemon, telnyx_signer) -> None:
    client = await daemon(config(telnyx_raw(telnyx_signer.public_key_b64)))
    old = TelnyxTokens(TELNYX_KEY).mint("v3:late", "inbound", 300, now=time.time() - 301)
    try:
        await client.ws_connect(f"/media/telnyx/{old}")
        raise AssertionError("an expired token was accepted")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403
    fresh = TelnyxTokens(TELNYX_KEY).mint("v3:late", "inbound", 300, now=time.time() - 200)
    ws = await client.ws_connect(f"/media/telnyx/{fresh}")
    await ws.close()


async def test_a_dial_made_by_another_process_binds_through_the_store(  # type: ignore[no-untyped-def]
        daemon, fake_twilio, tmp_path: Path) -> None:
    """The stream of a call this process did not dial (another replica did, or this process
    before a restart) finds the dial's reference in the call's stored record."""
    fake, base = fake_twilio
    raw = twilio_raw(carrier={"api_base_url": base}, admin={"token": ADMIN},
                     store={"url": f"sqlite:///{tmp_path / 'calls.db'}"})
    dialler = await daemon(config(raw))
    resp = await dialler.post("/v1/calls", headers=AUTH, json={"to": "+15557654321"})
    sid = (await resp.json())["call_id"]
    await gateway_of(dialler).store_writer.flush(5)
    twiml = dict(next(r for r in fake.requests if r.path.endswith("/Calls.json")).form)["Twiml"]
    token = stream_params(twiml)["stream_token"]
    await dialler.close()
    other = await daemon(config(raw))
    gw = gateway_of(other)
    assert gw.dials.call_of(token) == ""
    ws = await twilio_start(other, {"callSid": call_sid(99), "customParameters": {
        "stream_token": token}})
    assert await close_code(ws, timeout=10) == 4403       # waited for a binding, none matched
    stream = await twilio_stream(other, sid, "outbound", token=token)
    await until(lambda: any(s.call_id == sid for s in gw.sessions))
    await stream.stop()
