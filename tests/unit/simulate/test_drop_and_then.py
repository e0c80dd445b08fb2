"""Scripts decided as the call goes (``Then``) and a media connection that breaks (``Drop``:
no ``stop`` frame, no WebSocket close), on both simulated carriers."""

from __future__ import annotations

import base64

from nacl.signing import SigningKey

from patterd.simulate import (COMPLETED, Drop, Dtmf, Say, Step, TelnyxSigner, Then, Wait,
                              WaitForAgent, make_api, simulate_call)
from tests.unit.simulate.standin import StandIn, Stream, telnyx_config, tone, twilio_config


async def greet(s: Stream) -> None:
    await s.send_audio(tone(0.4))
    await s.send_mark("greeting")


async def test_then_plans_the_next_steps_at_the_time_it_is_reached() -> None:
    seen: list[float] = []

    def plan(now: float) -> list[Step]:
        seen.append(now)
        if len(seen) == 1:
            return [Dtmf("1"), Then(plan)]
        return [Say(tone(0.2), "tone")]

    cfg = twilio_config()
    async with StandIn(cfg, greet) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent(silence=0.3), Then(plan), Wait(0.2)])
    assert r.outcome == COMPLETED and r.ok, r.errors
    assert len(seen) == 2 and 0.3 < seen[0] <= seen[1]
    assert [t.kind for t in r.turns] == ["dtmf", "speech"]
    stream = d.streams[0]
    assert [f["dtmf"]["digit"] for _, f in stream.events("dtmf")] == ["1"]
    assert stream.events("stop")                           # an ordinary hang-up


async def test_drop_resets_the_twilio_socket_without_stop_then_the_call_completes() -> None:
    cfg = twilio_config()
    async with StandIn(cfg, greet) as d:
        r = await simulate_call(cfg, d.url, [WaitForAgent(silence=0.3), Wait(0.2), Drop(),
                                             Say(tone(1.0), "never said")])
    assert r.outcome == COMPLETED and r.ok, r.errors
    assert "dropped" in r.detail and r.frames.get("dropped") == 1
    stream = d.streams[0]
    # (the stand-in's test server cancels its handler when the connection drops, so only
    # what arrived before is checked: media, but no stop frame)
    assert stream.events("media") and not stream.events("stop")
    assert not r.turns                                     # the steps after Drop never ran
    status = d.webhook_params("status")[0]
    assert status["CallStatus"] == "completed"             # the carrier still ends the call
    assert r.ended_at >= r.duration > 0.4


async def test_drop_on_telnyx_is_followed_by_streaming_stopped_and_call_hangup() -> None:
    key = SigningKey.generate()
    cfg = telnyx_config(base64.b64encode(bytes(key.verify_key)).decode())
    async with StandIn(cfg, greet) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        r = await simulate_call(cfg, d.url, [WaitForAgent(silence=0.3), Drop()], api=api,
                                signer=TelnyxSigner(bytes(key)))
    assert r.outcome == COMPLETED and r.ok, r.errors
    stream = d.streams[0]
    assert stream.events("media") and not stream.events("stop")
    kinds = [e["event_type"] for e in d.telnyx_events()]
    assert kinds[-2:] == ["streaming.stopped", "call.hangup"]


async def test_a_finished_twilio_call_carries_the_price_the_stand_in_is_given() -> None:
    import aiohttp

    from tests.unit.simulate.standin import TWILIO_SID, TWILIO_TOKEN
    cfg = twilio_config()
    async with StandIn(cfg, greet) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        r = await simulate_call(cfg, d.url, [WaitForAgent(silence=0.3)], api=api)
        url = (f"{cfg.carrier.api_base_url}/2010-04-01/Accounts/{TWILIO_SID}/Calls/"
               f"{r.call_id}.json")
        auth = {"Authorization": aiohttp.encode_basic_auth(TWILIO_SID, TWILIO_TOKEN)}
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers=auth) as resp:
                unpriced = await resp.json()
            api.call_price = "-0.0085"
            async with s.get(url, headers=auth) as resp:
                priced = await resp.json()
    assert unpriced["status"] == "completed" and unpriced["price"] is None   # the default
    assert priced["price"] == "-0.0085" and priced["sid"] == r.call_id
