"""The Telnyx simulator against a stand-in daemon: Ed25519-signed webhooks (verified with
PyNaCl), the REST stand-in (answer, hangup, transfer, reject, send_dtmf, command_id, auth), the
media-streaming frames with PCMU or PCMA, marks, clear, and failure reports."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from patterd.audio.codecs import get_codec
from patterd.simulate import (COMPLETED, ERROR, HUNG_UP, REJECTED, STREAM_CLOSED, TRANSFERRED,
                              Dtmf, TelnyxSigner, Wait, WaitForAgent, make_api, simulate_call)
from patterd.simulate import telnyx as sim_telnyx
from tests.unit.simulate.standin import PHONE, StandIn, Stream, telnyx_config, tone


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def config_for(key: SigningKey):  # type: ignore[no-untyped-def]
    return telnyx_config(base64.b64encode(bytes(key.verify_key)).decode())


def types(d: StandIn) -> list[str]:
    return [e["event_type"] for e in d.telnyx_events()]


async def greet(s: Stream) -> None:
    await s.send_audio(tone(0.4))
    await s.send_mark("greeting")


async def test_call_flow_signed_webhooks_and_start_frame(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg, greet) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()], signer=TelnyxSigner(bytes(key)))
    assert not d.errors and r.outcome == COMPLETED and r.ok, (r.errors, r.warnings)
    assert all(ok for *_, ok in d.webhooks)              # PyNaCl verified every signature
    assert types(d) == ["call.initiated", "call.answered", "streaming.started",
                        "streaming.stopped", "call.hangup"]
    events = d.telnyx_events()
    init = events[0]["payload"]
    assert r.call_id.startswith("v3:") and init["call_control_id"] == r.call_id
    assert (init["direction"], init["state"], init["to"]) == ("incoming", "parked", PHONE)
    assert init["connection_id"] == "2811212257810187875"
    assert events[0]["record_type"] == "event" and events[0]["occurred_at"].endswith("Z")
    assert events[1]["payload"]["client_state"] == "eyJhIjoxfQ=="   # from the answer
    assert events[2]["payload"]["stream_url"].startswith("wss://voice.example.com/media/telnyx/")
    hangup = events[-1]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "caller")
    headers = d.webhooks[0][1]
    assert {"telnyx-signature-ed25519", "telnyx-timestamp"} <= {k.lower() for k in headers}
    s = d.streams[0]
    assert s.path == "/media/telnyx/tok-0"
    assert s.frames[0][1] == {"event": "connected", "version": "1.0.0"}
    start = s.frames[1][1]
    assert start["sequence_number"] == "1" and start["stream_id"]
    assert start["start"]["call_control_id"] == r.call_id
    assert start["start"]["client_state"] == "eyJhIjoxfQ=="
    assert start["start"]["media_format"] == {"encoding": "PCMU", "sample_rate": 8000,
                                              "channels": 1}
    media = s.events("media")[0][1]
    assert media["stream_id"] == start["stream_id"] and media["media"]["track"] == "inbound"
    assert isinstance(media["media"]["chunk"], str) and isinstance(media["sequence_number"], str)
    (_, mark), = s.events("mark")
    assert mark["mark"] == {"name": "greeting"}
    stop = s.frames[-1][1]
    assert stop["event"] == "stop" and stop["stop"]["call_control_id"] == r.call_id
    assert [a.action for a in r.actions] == ["answer"]
    assert r.actions[0].fields["stream_bidirectional_mode"] == "rtp"


async def test_pcma_leg_is_announced_and_encoded(key: SigningKey) -> None:
    async def speak_back(s: Stream) -> None:
        await greet(s)

    cfg = config_for(key)
    async with StandIn(cfg, speak_back) as d:
        from patterd.simulate import Say
        r = await simulate_call(cfg, d.url, [Say(tone(0.2), "x"), Wait(0.2)],
                                signer=TelnyxSigner(bytes(key)), codec="PCMA")
    assert r.ok, r.errors
    s = d.streams[0]
    assert s.start["start"]["media_format"]["encoding"] == "PCMA"
    payloads = [base64.b64decode(f["media"]["payload"]) for _, f in s.events("media")]
    assert payloads[-1] == b"\xd5" * 160                  # A-law silence, not μ-law 0xFF
    voiced = [p for p in payloads if p != b"\xd5" * 160]
    pcm = get_codec("PCMA").decode(b"".join(voiced))
    assert np.abs(np.frombuffer(pcm, "<i2")).max() == pytest.approx(8000, rel=0.05)


async def test_stream_codec_in_answer_wins_over_the_leg_codec(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg, answer={"stream_codec": "PCMU"}) as d:
        r = await simulate_call(cfg, d.url, [Wait(0.1)], signer=TelnyxSigner(bytes(key)),
                                codec="PCMA")
    assert r.ok and d.streams[0].start["start"]["media_format"]["encoding"] == "PCMU"


async def test_hangup_command_stops_the_stream(key: SigningKey) -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        await greet(s)
        await asyncio.sleep(0.3)
        ccid = s.start["start"]["call_control_id"]
        assert await holder["d"].telnyx_command(ccid, "hangup", {"command_id": "h1"}) == \
            (200, {"data": {"result": "ok"}})

    cfg = config_for(key)
    async with StandIn(cfg, behave) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(10)], api=api, signer=TelnyxSigner(bytes(key)))
        late = await d.telnyx_command(r.call_id, "hangup", {})
    assert not d.errors and r.outcome == HUNG_UP and r.ok, r.errors
    assert late[0] == 422 and late[1]["errors"][0]["code"] == "90018"
    assert d.streams[0].stopped.is_set() and d.streams[0].closed.is_set()
    hangup = d.telnyx_events()[-1]
    assert hangup["event_type"] == "call.hangup"
    assert (hangup["payload"]["hangup_cause"], hangup["payload"]["hangup_source"]) == \
        ("normal_clearing", "callee")
    assert r.duration < 3


async def test_transfer_dtmf_and_command_ids(key: SigningKey) -> None:
    holder: dict[str, StandIn] = {}
    answers: list[tuple[int, Any]] = []

    async def behave(s: Stream) -> None:
        d = holder["d"]
        ccid = s.start["start"]["call_control_id"]
        answers.append(await d.telnyx_command(ccid, "send_dtmf", {"digits": "12",
                                                                  "command_id": "c1"}))
        answers.append(await d.telnyx_command(ccid, "send_dtmf", {"digits": "12",
                                                                  "command_id": "c1"}))
        answers.append(await d.telnyx_command(ccid, "transfer", {}))
        answers.append(await d.telnyx_command(ccid, "hangup", {}, key="wrong"))
        answers.append(await d.telnyx_command(ccid, "transfer", {"to": "+15557654321"}))

    cfg = config_for(key)
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(10)], signer=TelnyxSigner(bytes(key)))
    assert not d.errors
    assert [a[0] for a in answers] == [200, 200, 422, 401, 200]
    assert answers[3][1]["errors"][0]["code"] == "10009"
    assert r.outcome == TRANSFERRED and r.detail == "+15557654321" and r.ok
    assert [a.action for a in r.actions] == ["answer", "send_dtmf", "transfer"]
    assert any(ln.text == "[DTMF 12]" for ln in r.lines)


async def test_caller_dtmf_frame_and_webhook(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg) as d:
        r = await simulate_call(cfg, d.url, [Dtmf("5"), Wait(0.3)],
                                signer=TelnyxSigner(bytes(key)))
    assert r.ok
    (_, frame), = d.streams[0].events("dtmf")
    assert frame["dtmf"] == {"digit": "5"} and frame["stream_id"] == d.streams[0].stream_id
    received = [e for e in d.telnyx_events() if e["event_type"] == "call.dtmf.received"]
    assert received[0]["payload"]["digit"] == "5"


async def test_reject_command(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg, answer_calls=False) as d:
        async def reject_soon() -> None:
            while not d.telnyx_events():
                await asyncio.sleep(0.01)
            ccid = d.telnyx_events()[0]["payload"]["call_control_id"]
            await d.telnyx_command(ccid, "reject", {"cause": "USER_BUSY"})
        task = asyncio.create_task(reject_soon())
        r = await simulate_call(cfg, d.url, [WaitForAgent()], signer=TelnyxSigner(bytes(key)))
        await task
    assert r.outcome == REJECTED and r.detail == "USER_BUSY" and not r.ok
    hangup = d.telnyx_events()[-1]["payload"]
    assert hangup["hangup_cause"] == "call_rejected" and d.streams == []


async def test_no_answer_command_is_an_error(key: SigningKey,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_telnyx, "ANSWER_TIMEOUT", 0.3)
    cfg = config_for(key)
    async with StandIn(cfg, answer_calls=False) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()], signer=TelnyxSigner(bytes(key)))
    assert r.outcome == ERROR and "no answer command" in r.errors[0]


async def test_mp3_mode_drops_the_daemons_audio(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg, greet, answer={"stream_bidirectional_mode": "mp3"}) as d:
        r = await simulate_call(cfg, d.url, [Wait(0.6)], signer=TelnyxSigner(bytes(key)))
    assert not r.ok and any("one-way" in e for e in r.errors)
    assert r.frames["rx_media_dropped"] == 1 and r.frames.get("rx_media", 0) == 0


async def test_bad_signature_is_refused(key: SigningKey) -> None:
    cfg = config_for(key)
    async with StandIn(cfg) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()],
                                signer=TelnyxSigner(bytes(SigningKey.generate())))
    assert r.outcome == ERROR and "HTTP 403" in r.errors[0]


async def test_socket_closed_without_hangup(key: SigningKey,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_telnyx, "CLOSE_GRACE", 0.3)

    async def behave(s: Stream) -> None:
        await s.ws.close()

    cfg = config_for(key)
    async with StandIn(cfg, behave) as d:
        r = await simulate_call(cfg, d.url, [Wait(10)], signer=TelnyxSigner(bytes(key)))
    assert r.outcome == STREAM_CLOSED and not r.ok and "billed" in r.detail


def test_signer_matches_pynacl_and_telnyx_sdk_message_format(key: SigningKey) -> None:
    signer = TelnyxSigner.from_base64(base64.b64encode(bytes(key)).decode())
    body = json.dumps({"data": {}}).encode()
    h = signer.headers(body, timestamp=1700000000)
    assert h["telnyx-timestamp"] == "1700000000"
    key.verify_key.verify(b"1700000000|" + body, base64.b64decode(h["telnyx-signature-ed25519"]))
    assert signer.public_key_b64 == base64.b64encode(bytes(key.verify_key)).decode()
    with pytest.raises(ValueError):
        TelnyxSigner.from_base64("c2hvcnQ=")
