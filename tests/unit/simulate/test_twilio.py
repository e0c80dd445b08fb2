"""The Twilio simulator against a stand-in daemon: signed webhooks and WS upgrade (checked with
twilio-python's RequestValidator), frame shapes, real-time pacing, marks, clear, barge-in,
REST hang-up / TwiML updates, and how failures are reported."""

from __future__ import annotations

import asyncio
import base64
import re

import numpy as np
import pytest

from patterd.simulate import (COMPLETED, ERROR, HUNG_UP, REJECTED, STREAM_CLOSED, TRANSFERRED,
                              Dtmf, Say, Wait, WaitForAgent, WaitForAgentSpeech, make_api,
                              simulate_call)
from tests.unit.simulate.standin import (PHONE, TWILIO_SID, TWIML_STREAM, StandIn, Stream,
                                         tone, twilio_config)

CALL_SID = re.compile(r"CA[0-9a-f]{32}")


async def greet(s: Stream) -> None:
    await s.send_audio(tone(0.4))
    await s.send_mark("greeting")


async def test_webhook_stream_and_hangup_by_caller() -> None:
    cfg = twilio_config()
    async with StandIn(cfg, greet) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()])
    assert not d.errors
    assert r.outcome == COMPLETED and r.ok, (r.errors, r.warnings)
    voice = d.webhook_params("voice")[0]
    assert all(ok for *_, ok in d.webhooks)              # RequestValidator accepted them
    assert CALL_SID.fullmatch(voice["CallSid"]) and voice["CallSid"] == r.call_id
    assert voice["AccountSid"] == TWILIO_SID and voice["To"] == PHONE
    assert (voice["CallStatus"], voice["Direction"], voice["ApiVersion"]) == \
        ("ringing", "inbound", "2010-04-01")
    assert voice["From"].startswith("+") and voice["Caller"] == voice["From"]
    s = d.streams[0]
    assert s.path == "/media/twilio"                     # public host in TwiML, local socket
    connected, start = s.frames[0][1], s.frames[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert re.fullmatch(r"MZ[0-9a-f]{32}", start["streamSid"])
    assert start["sequenceNumber"] == "1" and start["start"]["streamSid"] == start["streamSid"]
    assert start["start"]["callSid"] == r.call_id
    assert start["start"]["accountSid"] == TWILIO_SID and start["start"]["tracks"] == ["inbound"]
    assert start["start"]["customParameters"] == {"call_id": r.call_id, "direction": "inbound"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                             "channels": 1}
    stop = s.frames[-1][1]
    assert stop["event"] == "stop" and stop["stop"] == {"accountSid": TWILIO_SID,
                                                        "callSid": r.call_id}
    assert s.closed.is_set()
    status = d.webhook_params("status")[0]
    assert status["CallStatus"] == "completed" and status["CallSid"] == r.call_id
    assert status["CallbackSource"] == "call-progress-events" and "CallDuration" in status
    assert r.stream_ids == [start["streamSid"]]
    assert [ln.who for ln in r.transcript] == ["agent"]


async def test_media_frames_are_paced_in_real_time() -> None:
    cfg = twilio_config()
    async with StandIn(cfg) as d:
        r = await simulate_call(cfg, d.url, [Wait(1.0)])
    media = d.streams[0].events("media")
    times = np.array([t for t, _ in media])
    assert 45 <= len(media) <= 55                          # 1 s of 20 ms frames
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(0.020, abs=0.002)
    assert np.percentile(gaps, 95) < 0.040
    assert (times[-1] - times[0]) / (len(times) - 1) == pytest.approx(0.020, abs=0.001)
    seqs = [int(f["sequenceNumber"]) for _, f in media]
    chunks = [int(f["media"]["chunk"]) for _, f in media]
    stamps = [int(f["media"]["timestamp"]) for _, f in media]
    assert seqs == list(range(2, 2 + len(media))) and chunks == list(range(1, 1 + len(media)))
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(20 * (len(media) - 1), abs=40)
    for _, f in media:
        assert isinstance(f["sequenceNumber"], str) and f["media"]["track"] == "inbound"
        assert base64.b64decode(f["media"]["payload"]) == b"\xff" * 160   # μ-law silence
    assert r.frames["tx_media"] == len(media)


async def test_mark_is_echoed_when_playback_reaches_it() -> None:
    sent: dict[str, float] = {}

    async def behave(s: Stream) -> None:
        sent["at"] = asyncio.get_running_loop().time()
        await s.send_audio(tone(1.0))                       # all at once: the carrier buffers
        await s.send_mark("one-second")

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()])
    (t, mark), = d.streams[0].events("mark")
    assert mark == {"event": "mark", "sequenceNumber": mark["sequenceNumber"],
                    "streamSid": d.streams[0].stream_id, "mark": {"name": "one-second"}}
    assert t - sent["at"] == pytest.approx(1.0, abs=0.08)
    heard = np.abs(np.frombuffer(r.agent_audio, "<i2").reshape(-1, 160)).max(axis=1)
    assert (heard > 1000).sum() == pytest.approx(50, abs=2)   # one second of 20 ms frames
    (agent,) = [ln for ln in r.lines if ln.who == "agent"]
    assert agent.end - agent.start == pytest.approx(1.0, abs=0.05)


async def test_clear_drops_queued_audio_and_echoes_marks_at_once() -> None:
    times: dict[str, float] = {}

    async def behave(s: Stream) -> None:
        await s.send_audio(tone(3.0))
        await s.send_mark("long")
        await asyncio.sleep(0.5)
        times["clear"] = asyncio.get_running_loop().time()
        await s.send_clear()

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()])
    (t, _), = d.streams[0].events("mark")
    assert t - times["clear"] < 0.05
    assert r.frames["rx_clears"] == 1 and r.frames["cleared_bytes"] > 2 * 16000
    heard = np.abs(np.frombuffer(r.agent_audio, "<i2").reshape(-1, 160)).max(axis=1)
    assert (heard > 1000).sum() == pytest.approx(25, abs=3)
    assert r.barge_ins == []                                 # nobody interrupted


@pytest.mark.slow
async def test_turn_latency_and_barge_in_to_clear() -> None:
    async def clear_on_voice(s: Stream) -> None:
        n = len(s.caller_voiced_at)
        await s.wait_for(lambda: len(s.caller_voiced_at) > n + 4, 10)
        await s.send_clear()

    cfg = twilio_config()
    caller_says = Say(tone(0.5, 300), "hello")
    interrupt = Say(tone(0.4, 350), "stop")

    async def daemon(s: Stream) -> None:
        await greet(s)
        await s.wait_caller_silent()
        await asyncio.sleep(0.3)
        reply = asyncio.create_task(s.send_audio(tone(3.0), frame_ms=20))
        await clear_on_voice(s)
        reply.cancel()

    async with StandIn(cfg, daemon) as d:
        steps = [WaitForAgent(), caller_says, WaitForAgentSpeech(0.5), interrupt, Wait(0.3)]
        r = await simulate_call(cfg, d.url, steps)
    assert not d.errors and r.ok, r.errors
    first = r.turns[0]
    assert first.kind == "speech" and first.text == "hello"
    assert first.latency is not None
    assert 0.35 < first.latency < 0.6                   # 0.1 s detection + 0.3 s "thinking"
    (barge,) = r.barge_ins
    assert barge.clear_latency is not None
    assert 0.08 < barge.clear_latency < 0.5             # ≥ 5 frames heard before the clear
    assert [ln.text for ln in r.lines if ln.who == "caller"] == ["hello", "stop"]


async def test_dtmf_frames() -> None:
    cfg = twilio_config()
    async with StandIn(cfg) as d:
        r = await simulate_call(cfg, d.url, [Dtmf("1#", gap=0.05), Wait(0.1)])
    dtmf = [f for _, f in d.streams[0].events("dtmf")]
    assert [f["dtmf"] for f in dtmf] == [{"track": "inbound_track", "digit": "1"},
                                         {"track": "inbound_track", "digit": "#"}]
    assert all(f["streamSid"] == d.streams[0].stream_id for f in dtmf)
    assert r.turns[0].kind == "dtmf" and r.turns[0].text == "1#"


async def test_rest_hangup_ends_the_stream_like_twilio() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        await greet(s)
        await asyncio.sleep(0.2)
        sid = s.start["start"]["callSid"]
        await holder["d"].twilio_update(sid, {"Status": "completed"})
        await s.stopped.wait()

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(10)], api=api)
        await d.twilio_update(r.call_id, {"Status": "completed"})   # already ended
    assert not d.errors
    assert r.outcome == HUNG_UP and r.ok, r.errors
    assert [a.action for a in r.actions] == ["hangup"]
    assert d.rest[0][0] == 200 and d.rest[0][1]["status"] == "completed"
    assert d.rest[1][0] == 404 and d.rest[1][1]["code"] == 20404
    assert d.streams[0].stopped.is_set() and d.streams[0].closed.is_set()
    assert r.duration < 3


async def test_rest_requires_basic_auth() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        sid = s.start["start"]["callSid"]
        status, body = await holder["d"].twilio_update(sid, {"Status": "completed"},
                                                        auth=(TWILIO_SID, "wrong"))
        assert (status, body["code"]) == (401, 20003)

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.3)])
    assert not d.errors and r.outcome == COMPLETED and r.actions == []


async def test_twiml_update_transfer_and_dtmf_restream() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        sid = s.start["start"]["callSid"]
        if len(holder["d"].streams) == 1:           # first stream: send DTMF, re-attach
            await holder["d"].twilio_update(sid, {"Twiml": (
                '<Response><Play digits="12#"/><Connect><Stream url="' + TWIML_STREAM
                + '"><Parameter name="call_id" value="x"/></Stream></Connect></Response>')})
        else:                                       # second stream: transfer
            await holder["d"].twilio_update(sid, {"Twiml": (
                '<Response><Dial callerId="+15550001234"><Number>+15557654321</Number>'
                '</Dial></Response>')})

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(10)])
    assert not d.errors
    assert r.outcome == TRANSFERRED and r.detail == "+15557654321" and r.ok
    assert [a.action for a in r.actions] == ["send_dtmf", "transfer"]
    assert r.actions[0].fields["digits"] == "12#" and r.actions[1].fields["to"] == "+15557654321"
    assert len(d.streams) == 2 and all(s.stopped.is_set() for s in d.streams)
    assert d.streams[0].stream_id != d.streams[1].stream_id
    assert d.streams[1].start["start"]["customParameters"] == {"call_id": "x"}
    assert len(r.stream_ids) == 2


async def test_reject_is_reported() -> None:
    cfg = twilio_config()
    doc = '<?xml version="1.0"?><Response><Reject reason="busy"/></Response>'
    async with StandIn(cfg, twiml=doc) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()])
    assert r.outcome == REJECTED and r.detail == "busy" and not r.ok
    assert d.streams == [] and d.webhook_params("status")[0]["CallStatus"] == "busy"


async def test_webhook_failure_is_error_11200() -> None:
    cfg = twilio_config()
    async with StandIn(cfg, voice_status=500) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent()])
    assert r.outcome == ERROR and "11200" in r.errors[0]


async def test_wrong_auth_token_is_refused_by_the_daemon() -> None:
    cfg = twilio_config()
    other = twilio_config()
    object.__setattr__(other.carrier, "auth_token", "not-the-token")
    async with StandIn(cfg) as d:
        r = await simulate_call(other, d.url, [WaitForAgent()])
    assert r.outcome == ERROR and "HTTP 403" in r.errors[0]


async def test_daemon_closing_the_socket_is_not_a_hangup() -> None:
    async def behave(s: Stream) -> None:
        await asyncio.sleep(0.2)
        await s.ws.close()

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        r = await simulate_call(cfg, d.url, [Wait(5)])
    assert r.outcome == STREAM_CLOSED and not r.ok and r.duration < 2


async def test_frames_with_a_wrong_stream_sid_are_errors() -> None:
    async def behave(s: Stream) -> None:
        await s.ws.send_str('{"event":"media","streamSid":"MZnope","media":{"payload":"/w=="}}')
        await s.ws.send_str('{"event":"clear"}')

    cfg = twilio_config()
    async with StandIn(cfg, behave) as d:
        r = await simulate_call(cfg, d.url, [Wait(0.3)])
    assert not r.ok and r.frames["protocol_errors"] == 2
    assert any("31951" in e for e in r.errors) and r.frames.get("rx_media", 0) == 0


async def test_agent_silence_is_an_error() -> None:
    cfg = twilio_config()
    async with StandIn(cfg) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent(timeout=0.3)])
    assert r.outcome == COMPLETED and not r.ok and "said nothing" in r.errors[0]


async def test_stream_status_callbacks_are_signed() -> None:
    cfg = twilio_config()
    doc = ('<Response><Connect><Stream url="' + TWIML_STREAM + '" name="agent" '
           'statusCallback="/webhooks/twilio/stream"/></Connect></Response>')
    async with StandIn(cfg, twiml=doc) as d:
        r = await simulate_call(cfg, d.url, [Wait(0.2)])
    assert r.ok, (r.errors, r.warnings)
    events = d.webhook_params("stream")
    assert [e["StreamEvent"] for e in events] == ["stream-started", "stream-stopped"]
    assert all(ok for path, *_, ok in d.webhooks if path.endswith("stream"))
    assert events[0]["StreamSid"] == r.stream_ids[0] and events[0]["StreamName"] == "agent"
