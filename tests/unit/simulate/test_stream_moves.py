"""A live call's media moving to another stream (hand-off on drain), against a stand-in daemon:
Telnyx ``streaming_start`` on a live call (two streams at once, ``custom_parameters``,
``streaming_stop`` by ``stream_id``), a Twilio ``<Connect><Stream>`` update mid-phrase, and what
the caller notices (``stream_gaps``, ``unsent_frames``).

The caller speaks "numbered" audio: every 20 ms frame is one constant μ-law code, a different
one per frame, so the stand-in can tell exactly which of the caller's frames each socket got."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from patterd.audio.codecs import get_codec
from patterd.simulate import COMPLETED, Dtmf, Say, TelnyxSigner, Wait, make_api, simulate_call
from patterd.simulate.runner import format_call
from tests.unit.simulate.standin import (TWIML_STREAM, StandIn, Stream, telnyx_config, tone,
                                         twilio_config)

NEW_URL = "wss://voice.example.com/media/telnyx/tok-new"
PCMU = get_codec("PCMU")
# μ-law codes that survive decode → encode and are loud enough for the stand-in's voice check
CODES = [c for c in range(256) if PCMU.encode(PCMU.decode(bytes([c]) * 160)) == bytes([c]) * 160
         and abs(int(np.frombuffer(PCMU.decode(bytes([c])), "<i2")[0])) > 600]


def numbered(codes: list[int]) -> bytes:
    """Caller audio whose n-th 20 ms frame is the constant μ-law code ``codes[n]``."""
    return b"".join(PCMU.decode(bytes([c]) * 160) for c in codes)


def heard_codes(s: Stream) -> set[int]:
    """The numbered caller frames a socket received."""
    out = set()
    for _, f in s.events("media"):
        raw = base64.b64decode(f["media"]["payload"])
        if raw[0] in CODES and raw == bytes([raw[0]]) * len(raw):
            out.add(raw[0])
    return out


def telnyx_setup() -> tuple[Any, TelnyxSigner]:
    key = SigningKey.generate()
    cfg = telnyx_config(base64.b64encode(bytes(key.verify_key)).decode())
    return cfg, TelnyxSigner(bytes(key))


def stream_start_body(**extra: Any) -> dict[str, Any]:
    return {"stream_url": NEW_URL, "stream_track": "inbound_track", "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp", "stream_bidirectional_codec": "PCMU",
            "stream_bidirectional_target_legs": "self", **extra}


async def second_stream(d: StandIn) -> Stream:
    await d.streams[0].wait_for(lambda: len(d.streams) > 1 and d.streams[1].started.is_set())
    return d.streams[1]


async def move_from_first(d: StandIn, s: Stream) -> Stream:
    """On the first stream: ``streaming_start`` a second one and wait until it started."""
    ccid = s.start["start"]["call_control_id"]
    await d.telnyx_command(ccid, "streaming_start", stream_start_body())
    return await second_stream(d)


async def test_telnyx_streaming_start_moves_the_call_without_losing_a_frame() -> None:
    first, then = CODES[:75], CODES[75:90]
    holder: dict[str, StandIn] = {}
    answers: list[tuple[int, Any]] = []

    async def behave(s: Stream) -> None:
        d = holder["d"]
        ccid = s.start["start"]["call_control_id"]
        if not s.path.endswith("tok-0"):              # the new stream: greet on it
            await s.send_audio(tone(0.3, 600))
            await s.send_mark("new")
            return
        await s.wait_for(lambda: len(s.caller_voiced_at) >= 10)      # the caller is mid-phrase
        answers.append(await d.telnyx_command(ccid, "streaming_start", stream_start_body(
            custom_parameters=[{"name": "handoff", "value": "1"},
                               {"name": "from_replica", "value": "a"}],
            command_id="move-1")))
        new = await second_stream(d)
        await new.wait_for(lambda: len(new.caller_voiced_at) >= 5)  # both carry the caller
        await s.send_audio(tone(0.2))                               # the old one still plays
        await s.send_mark("old")
        await s.wait_mark("old")
        answers.append(await d.telnyx_command(ccid, "streaming_stop",
                                              {"stream_id": s.stream_id, "command_id": "m2"}))

    cfg, signer = telnyx_setup()
    steps = [Wait(0.3), Say(numbered(first), "during the move"), Wait(0.3),
             Say(numbered(then), "after the move"), Wait(0.3)]
    async with StandIn(cfg, behave) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        holder["d"] = d
        r = await simulate_call(cfg, d.url, steps, api=api, signer=signer)
        late = await d.telnyx_command(r.call_id, "streaming_start", stream_start_body())
    assert not d.errors and r.outcome == COMPLETED and r.ok, (d.errors, r.errors, r.warnings)
    assert answers == [(200, {"data": {"result": "ok"}})] * 2
    assert late[0] == 422 and late[1]["errors"][0]["code"] == "90018"
    old, new = d.streams
    events = d.telnyx_events()
    assert [e["event_type"] for e in events] == [
        "call.initiated", "call.answered", "streaming.started", "streaming.started",
        "streaming.stopped", "streaming.stopped", "call.hangup"]
    assert events[3]["payload"]["stream_url"] == NEW_URL
    assert events[4]["payload"]["stream_url"].endswith("/tok-0")     # the old one stopped
    assert events[-1]["payload"]["hangup_source"] == "caller"
    # the new stream: its own stream_id, the custom parameters in its start frame
    assert new.path == "/media/telnyx/tok-new" and new.stream_id != old.stream_id
    assert new.start["start"]["custom_parameters"] == {"handoff": "1", "from_replica": "a"}
    assert "custom_parameters" not in old.start["start"]
    assert new.start["start"]["call_control_id"] == r.call_id
    assert r.stream_ids == [old.stream_id, new.stream_id]
    # stop by stream_id: a stop frame on the old socket only; the call went on on the new one
    assert old.stopped.is_set() and old.closed.is_set()
    assert old.events("stop")[0][1]["stream_id"] == old.stream_id
    assert old.events("stop")[0][0] < new.events("stop")[0][0]
    # the caller's audio went to both while both were up, and nothing was lost
    got_old, got_new = heard_codes(old), heard_codes(new)
    assert got_old & got_new
    assert got_old | got_new == set(first + then)
    assert set(then) <= got_new and not set(then) & got_old
    assert r.stream_gaps == [0.0] and r.unsent_frames == 0
    # both streams were heard, each mark echoed on the stream that sent it
    assert [f["mark"]["name"] for _, f in old.events("mark")] == ["old"]
    assert [f["mark"]["name"] for _, f in new.events("mark")] == ["new"]
    assert r.frames["rx_marks"] == 2 and r.frames["streams"] == 2
    assert [ln.text for ln in r.lines if ln.who == "caller"] == ["during the move",
                                                                "after the move"]
    doc = r.to_dict()
    assert doc["stream_gaps"] == [0.0] and doc["unsent_frames"] == 0
    assert "media moved 1× between streams: gaps 0 ms, caller frames lost 0" in format_call(r)


async def test_telnyx_agent_audio_of_both_streams_is_mixed() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        d = holder["d"]
        if s.path.endswith("tok-0"):
            new = await move_from_first(d, s)
            # 400 Hz: whole periods per 20 ms, so the two are in phase whichever tick each
            # starts on, and the mix peaks at twice one of them
            await new.send_audio(tone(0.6, 400, amplitude=4000))
            await s.send_audio(tone(0.6, 400, amplitude=4000))

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(1.2)], signer=signer)
    assert r.ok, r.errors
    peaks = np.abs(np.frombuffer(r.agent_audio, "<i2").reshape(-1, 160)).max(axis=1)
    assert peaks.max() == pytest.approx(8000, rel=0.05)
    assert (peaks > 6000).sum() >= 25                          # ≥ 0.5 s of both at once


async def test_telnyx_stopping_every_stream_then_starting_one_is_a_measured_gap() -> None:
    phrase = CODES[:75]
    holder: dict[str, Any] = {}

    async def move_later(ccid: str) -> None:
        d: StandIn = holder["d"]
        await d.telnyx_command(ccid, "streaming_stop", {})          # every stream
        await asyncio.sleep(0.15)
        await d.telnyx_command(ccid, "streaming_start", stream_start_body())

    async def behave(s: Stream) -> None:
        if s.path.endswith("tok-0"):
            await s.wait_for(lambda: len(s.caller_voiced_at) >= 10)
            holder["task"] = asyncio.create_task(move_later(s.start["start"]["call_control_id"]))

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.2), Say(numbered(phrase), "long"), Wait(0.2)],
                                signer=signer)
        await holder["task"]
    assert not d.errors and r.outcome == COMPLETED and r.ok, r.errors
    assert [e["event_type"] for e in d.telnyx_events()][2:] == [
        "streaming.started", "streaming.stopped", "streaming.started", "streaming.stopped",
        "call.hangup"]
    (gap,) = r.stream_gaps
    assert 0.14 <= gap < 1.0
    missing = set(phrase) - heard_codes(d.streams[0]) - heard_codes(d.streams[1])
    assert r.unsent_frames == len(missing) >= 5                # 20 ms frames said into no stream
    assert r.unsent_frames == pytest.approx(gap / 0.02, abs=2)


async def test_telnyx_a_stream_the_daemon_closes_while_another_is_up_is_no_hang_up() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        d = holder["d"]
        if s.path.endswith("tok-0"):
            await move_from_first(d, s)
            await s.ws.close()                         # the old replica goes, no streaming_stop

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.4), Dtmf("7"), Wait(0.3)], signer=signer)
    assert not d.errors and r.outcome == COMPLETED and r.ok, (r.errors, r.detail)
    old, new = d.streams
    assert not old.events("stop") and new.events("stop")
    assert [f["dtmf"]["digit"] for _, f in new.events("dtmf")] == ["7"]
    kinds = [e["event_type"] for e in d.telnyx_events()]
    assert kinds.count("call.dtmf.received") == 1 and kinds[-1] == "call.hangup"
    assert r.stream_gaps == [0.0] and r.unsent_frames == 0


async def test_telnyx_a_new_stream_soon_after_the_last_one_closed_resumes_the_call() -> None:
    holder: dict[str, Any] = {}

    async def reopen(ccid: str) -> None:
        await asyncio.sleep(0.2)
        await holder["d"].telnyx_command(ccid, "streaming_start", stream_start_body())

    async def behave(s: Stream) -> None:
        if s.path.endswith("tok-0"):
            await asyncio.sleep(0.2)
            holder["task"] = asyncio.create_task(reopen(s.start["start"]["call_control_id"]))
            await s.ws.close()                  # the only stream: the call has no media now

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(1.0)], signer=signer)
        await holder["task"]
    assert r.outcome == COMPLETED and r.ok, (r.errors, r.detail)
    assert len(d.streams) == 2 and d.streams[1].events("stop")
    (gap,) = r.stream_gaps
    assert 0.19 <= gap < 1.0 and r.unsent_frames == pytest.approx(gap / 0.02, abs=2)


async def test_telnyx_dtmf_goes_to_every_stream_with_one_webhook() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        d = holder["d"]
        if s.path.endswith("tok-0"):
            await d.telnyx_command(s.start["start"]["call_control_id"], "streaming_start",
                                   stream_start_body())

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.4), Dtmf("5"), Wait(0.2)], signer=signer)
    assert r.ok, r.errors
    assert all([f["dtmf"]["digit"] for _, f in s.events("dtmf")] == ["5"] for s in d.streams)
    kinds = [e["event_type"] for e in d.telnyx_events()]
    assert kinds.count("call.dtmf.received") == 1
    assert r.stream_gaps == [] and r.frames["tx_dtmf"] == 1   # no move: both were up to the end


async def test_telnyx_streaming_commands_are_checked() -> None:
    holder: dict[str, StandIn] = {}
    answers: list[tuple[int, Any]] = []

    async def behave(s: Stream) -> None:
        d = holder["d"]
        ccid = s.start["start"]["call_control_id"]
        answers.append(await d.telnyx_command(ccid, "streaming_start", {"stream_track": "x"}))
        answers.append(await d.telnyx_command(ccid, "streaming_start",
                                              {"stream_url": "https://voice.example.com/m"}))
        answers.append(await d.telnyx_command(ccid, "streaming_start", stream_start_body(
            custom_parameters={"handoff": "1"})))
        answers.append(await d.telnyx_command(ccid, "streaming_stop", {"stream_id": "nope"}))

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.4)], signer=signer)
    assert r.ok and len(d.streams) == 1, r.errors
    assert [a[0] for a in answers] == [422] * 4
    assert all(a[1]["errors"][0]["code"] == "10015" for a in answers)
    assert "stream_url is required" in answers[0][1]["errors"][0]["detail"]


async def test_telnyx_a_refused_new_stream_leaves_the_call_on_the_old_one() -> None:
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        await holder["d"].telnyx_command(s.start["start"]["call_control_id"], "streaming_start",
                                         stream_start_body(stream_url="wss://x.example/nowhere"))

    cfg, signer = telnyx_setup()
    async with StandIn(cfg, behave) as d:
        holder["d"] = d
        r = await simulate_call(cfg, d.url, [Wait(0.5)], signer=signer)
    assert r.outcome == COMPLETED and not r.ok and "refused" in r.errors[0]
    failed = [e for e in d.telnyx_events() if e["event_type"] == "streaming.failed"]
    assert failed[0]["payload"]["stream_params"]["stream_url"] == "wss://x.example/nowhere"
    assert len(r.stream_ids) == 1 and r.stream_gaps == []


class SlowNewStream(StandIn):
    """A stand-in whose second media socket is accepted 0.15 s late (a replica warming up)."""

    async def _media(self, request: web.Request) -> web.StreamResponse:
        if self.streams:
            await asyncio.sleep(0.15)
        return await super()._media(request)


async def test_twilio_restream_mid_phrase_continues_the_script_on_the_new_stream() -> None:
    first, then = CODES[:75], CODES[75:90]
    holder: dict[str, StandIn] = {}

    async def behave(s: Stream) -> None:
        d = holder["d"]
        if len(d.streams) > 1:
            return
        await s.wait_for(lambda: len(s.caller_voiced_at) >= 10)     # mid-phrase
        await d.twilio_update(s.start["start"]["callSid"], {"Twiml": (
            '<Response><Connect><Stream url="' + TWIML_STREAM + '">'
            '<Parameter name="handoff" value="1"/></Stream></Connect></Response>')})

    cfg = twilio_config()
    steps = [Wait(0.2), Say(numbered(first), "during the move"), Wait(0.3),
             Say(numbered(then), "after the move"), Wait(0.2)]
    async with SlowNewStream(cfg, behave) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        holder["d"] = d
        r = await simulate_call(cfg, d.url, steps, api=api)
    assert not d.errors and r.outcome == COMPLETED and r.ok, (d.errors, r.errors)
    old, new = d.streams
    assert old.stopped.is_set() and new.start["start"]["customParameters"] == {"handoff": "1"}
    assert r.stream_ids == [old.stream_id, new.stream_id]
    assert [ln.text for ln in r.lines if ln.who == "caller"] == ["during the move",
                                                                "after the move"]
    got_old, got_new = heard_codes(old), heard_codes(new)
    assert not got_old & got_new                                 # one stream at a time
    assert set(then) <= got_new                                  # the script went on there
    assert set(first) & got_new                                  # …and so did the phrase
    (gap,) = r.stream_gaps
    assert 0.15 <= gap < 1.0
    missing = set(first) - got_old - got_new
    assert r.unsent_frames == len(missing) >= 5
    assert r.to_dict()["stream_gaps"] == [round(gap, 4)]
