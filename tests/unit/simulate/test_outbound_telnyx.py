"""Outbound calls on the Telnyx simulator against a stand-in dialling daemon: the dial answer,
Ed25519-signed webhooks (verified with PyNaCl) echoing client_state, the media socket to
stream_url, AMD events (detection + greeting ended, timing), speak → speak.started/ended →
hang-up, record_start → recording.saved, call.cost, unanswered hang-up causes without media,
and duplicated/shuffled events."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from nacl.signing import SigningKey

from patterd.simulate import (BUSY, CANCELED, COMPLETED, ERROR, FAILED, HUNG_UP, NO_ANSWER,
                              Callee, Say, TelnyxSigner, Wait, WaitForAgent, simulate_outbound)
from tests.unit.simulate.dialer import ADMIN_TOKEN, VOICE, Dialer
from tests.unit.simulate.standin import PHONE, Stream, telnyx_config, tone

TO = "+15557654321"
GREETING = Say(tone(1.0, 300), "leave a message")     # + 0.3 s gap + 0.5 s beep = 1.8 s


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def config_for(key: SigningKey):  # type: ignore[no-untyped-def]
    return telnyx_config(base64.b64encode(bytes(key.verify_key)).decode())


async def greet(s: Stream) -> None:
    await s.send_audio(tone(0.4))


async def place(d: Dialer, key: SigningKey, callee: Callee, **kw: object):  # type: ignore[no-untyped-def]
    return await simulate_outbound(d.config, d.url, TO, callee, admin_token=ADMIN_TOKEN,
                                   signer=TelnyxSigner(bytes(key)), **kw)  # type: ignore[arg-type]


def state_of(payload: dict) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.b64decode(payload["client_state"]))


async def test_answered_by_a_person(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg, greet) as d:
        r = await place(d, key, Callee(steps=[WaitForAgent()]))
    assert not d.errors and r.ok, (r.outcome, r.detail, r.errors, r.warnings)
    assert r.outcome == COMPLETED and r.media_opened and r.carrier_status == "normal_clearing"
    status, dialed = d.dials[0]
    data = dialed["data"]
    assert status == 200 and data["call_control_id"] == r.call_id == r.admin_call_id
    assert r.call_id.startswith("v3:") and data["is_alive"] is False
    assert data["record_type"] == "call" and data["call_leg_id"] and data["call_session_id"]
    assert all(ok for *_, ok in d.webhooks)                  # PyNaCl verified every one
    assert r.webhook_kinds() == ["call.initiated", "call.answered", "streaming.started",
                                 "streaming.stopped", "call.hangup", "call.cost"]
    events = d.telnyx_events()
    init = events[0]["payload"]
    assert (init["direction"], init["state"], init["from"], init["to"]) == \
        ("outgoing", "bridging", PHONE, TO)
    assert all(state_of(e["payload"]) == {"direction": "outbound", "to": TO} for e in events)
    hangup = events[4]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "callee")
    cost = events[5]["payload"]
    assert cost["total_cost"] == "0.0020" and cost["billed_duration_secs"] == 60
    assert cost["cost_parts"][0]["call_part"] == "call-control"
    s = d.streams[0]
    assert s.path.startswith("/media/telnyx/out-")
    start = s.start["start"]
    assert start["call_control_id"] == r.call_id and state_of(start)["to"] == TO
    assert r.requests[0].path.endswith("/calls") and r.requests[0].status == 200
    assert all(w.status == 200 for w in r.webhooks)


async def test_machine_greeting_end_speak_then_hangup(key: SigningKey) -> None:
    cfg = config_for(key)
    callee = Callee("machine", greeting=GREETING, tts_rate=40.0)
    async with Dialer(cfg, on_machine="speak", voicemail="Please call us back soon.",
                      record=True) as d:
        r = await place(d, key, callee, machine_detection=True,
                        voicemail_message="Please call us back soon.")
    assert not d.errors and r.ok, (r.outcome, r.detail, r.errors, r.warnings)
    assert r.outcome == HUNG_UP and r.said == ["Please call us back soon."]
    assert r.answered_by == "machine"
    kinds = r.webhook_kinds()
    assert kinds == ["call.initiated", "call.answered", "streaming.started",
                     "call.machine.detection.ended", "call.machine.greeting.ended",
                     "call.speak.started", "call.speak.ended", "streaming.stopped",
                     "call.hangup", "call.recording.saved", "call.cost"]
    t0 = d.streams[0].frames[1][0]
    (t_det, det), = d.arrived("call.machine.detection.ended")
    (t_greet, greet_ended), = d.arrived("call.machine.greeting.ended")
    assert det["result"] == "machine" and greet_ended["result"] == "beep_detected"
    assert t_det - t0 == pytest.approx(1.8, abs=0.15)      # decided during the greeting
    assert t_greet - t0 == pytest.approx(2.0, abs=0.15)    # after the beep
    (_, ended), = d.arrived("call.speak.ended")
    assert ended["status"] == "completed" and state_of(ended) == {"after_speak": "hangup"}
    (_, hangup), = d.arrived("call.hangup")
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "caller")
    (_, saved), = d.arrived("call.recording.saved")
    assert "call_control_id" not in saved and saved["call_leg_id"] and saved["channels"] == "dual"
    assert saved["recording_urls"]["wav"].startswith(cfg.carrier.api_base_url)
    speak = r.request_fields("speak")[0]
    assert speak["voice"] == VOICE and speak["payload"] == "Please call us back soon."
    assert [q.path.rsplit("/", 1)[-1] for q in r.requests] == \
        ["calls", "record_start", "speak", "hangup"]
    dial = r.request_fields("calls")[0]
    assert dial["answering_machine_detection"] == "greeting_end"


@pytest.mark.parametrize(("kind", "outcome", "cause", "source"), [
    ("busy", BUSY, "user_busy", "callee"),
    ("no-answer", NO_ANSWER, "timeout", "unknown"),
    ("failed", FAILED, "not_found", "unknown"),
    ("canceled", CANCELED, "originator_cancel", "caller"),
])
async def test_unanswered_calls_have_no_media(key: SigningKey, kind: str, outcome: str,
                                              cause: str, source: str) -> None:
    cfg = config_for(key)
    async with Dialer(cfg, greet) as d:
        r = await place(d, key, Callee(kind, ring_seconds=0.3))
    assert r.ok and r.outcome == outcome, (r.outcome, r.errors)
    assert d.streams == [] and not r.media_opened
    assert r.webhook_kinds() == ["call.initiated", "call.hangup", "call.cost"]
    (_, hangup), = d.arrived("call.hangup")
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == (cause, source)
    assert d.arrived("call.cost")[0][1]["billed_duration_secs"] == 0
    assert all(ok for *_, ok in d.webhooks)


async def test_no_answer_after_timeout_secs(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg, ring_timeout=5) as d:
        r = await place(d, key, Callee(ring_seconds=6))      # picks up too late
    assert r.outcome == NO_ANSWER and not r.ok               # a person was expected
    (t0, _), = d.arrived("call.initiated")
    (t1, _), = d.arrived("call.hangup")
    assert t1 - t0 == pytest.approx(5.0, abs=0.2)


async def test_daemon_hangs_up_while_ringing(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg) as d:
        task = asyncio.create_task(place(d, key, Callee(ring_seconds=10)))
        await asyncio.sleep(0.5)
        status, _ = await d.hangup(d.dials[0][1]["data"]["call_control_id"])
        r = await task
    assert status == 200 and r.outcome == CANCELED and d.streams == []
    assert d.arrived("call.hangup")[0][1]["hangup_cause"] == "originator_cancel"


async def test_invalid_dial_is_answered_like_telnyx(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg, drop=("connection_id",)) as d:
        r = await place(d, key, Callee())
    status, body = d.dials[0]
    assert status == 422 and body["errors"][0]["source"]["pointer"] == "/connection_id"
    assert r.outcome == ERROR and r.admin_status == 502 and not r.ok


async def test_commands_before_the_answer_are_refused(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg) as d:
        task = asyncio.create_task(place(d, key, Callee(ring_seconds=1.0, steps=[Wait(0.1)])))
        await asyncio.sleep(0.4)
        ccid = d.dials[0][1]["data"]["call_control_id"]
        status, body = await d.telnyx_command(ccid, "speak", {"payload": "hi", "voice": VOICE})
        r = await task
    assert status == 422 and body["errors"][0]["code"] == "90034"
    assert r.ok and [q.status for q in r.requests] == [200, 422]


async def test_duplicated_events_keep_their_id(key: SigningKey) -> None:
    cfg = config_for(key)
    async with Dialer(cfg, greet) as d:
        r = await place(d, key, Callee(steps=[Wait(0.3)], duplicate_callbacks=True,
                                       shuffle_callbacks=True))
    assert r.ok, r.errors
    events = [json.loads(body) for path, _, body, _ in d.webhooks]
    ids = [e["data"]["id"] for e in events]
    assert ids[0::2] == ids[1::2] and len(set(ids)) == len(ids) // 2
    assert [e["meta"]["attempt"] for e in events] == [1, 2] * (len(events) // 2)
    types = [e["data"]["event_type"] for e in events][0::2]
    assert types[:2] == ["call.answered", "call.initiated"]         # newest first
    assert all(ok for *_, ok in d.webhooks)
