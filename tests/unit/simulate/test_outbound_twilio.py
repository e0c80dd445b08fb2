"""Outbound calls on the Twilio simulator against a stand-in dialling daemon: the Calls.json
create (201, the Call resource), status callbacks signed as twilio-python's RequestValidator
expects with SequenceNumber 0, 1, 2…, the inline <Connect><Stream>, async AMD (timing, the
signed callback URL with its query string), voicemail by <Say>+<Hangup/> or over the stream,
unanswered outcomes without a media socket, recordings and out-of-order/duplicate callbacks."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from patterd.simulate import (BUSY, CANCELED, COMPLETED, ERROR, FAILED, HUNG_UP, NO_ANSWER,
                              Callee, Say, Wait, WaitForAgent, simulate_outbound)
from tests.unit.simulate.dialer import ADMIN_TOKEN, AMD_URL, Dialer
from tests.unit.simulate.standin import PHONE, TWILIO_SID, Stream, tone, twilio_config

TO = "+15557654321"
CALL_SID = re.compile(r"CA[0-9a-f]{32}")
GREETING = Say(tone(1.0, 300), "leave a message")     # + 0.3 s gap + 0.5 s beep = 1.8 s


async def greet(s: Stream) -> None:
    await s.send_audio(tone(0.4))


async def place(d: Dialer, callee: Callee, **kw: object):  # type: ignore[no-untyped-def]
    return await simulate_outbound(d.config, d.url, TO, callee, admin_token=ADMIN_TOKEN,
                                   **kw)  # type: ignore[arg-type]


async def test_answered_by_a_person() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet) as d:
        r = await place(d, Callee(steps=[WaitForAgent()]), variables={"name": "Ada"})
    assert not d.errors and r.ok, (r.outcome, r.detail, r.errors, r.warnings)
    assert r.outcome == COMPLETED and r.media_opened and r.carrier_status == "completed"
    assert (r.admin_status, r.admin_call_id) == (201, r.call_id) and CALL_SID.fullmatch(r.call_id)
    status, resource = d.dials[0]
    assert status == 201 and resource["sid"] == r.call_id
    assert (resource["status"], resource["direction"], resource["to"], resource["from"]) == \
        ("queued", "outbound-api", TO, PHONE)
    assert resource["account_sid"] == TWILIO_SID and resource["uri"].endswith(r.call_id + ".json")
    create = r.requests[0]
    assert create.path.endswith("/Calls.json") and create.status == 201
    assert create.fields["StatusCallbackEvent"] == ["initiated", "ringing", "answered",
                                                    "completed"]
    assert all(ok for *_, ok in d.webhooks)                 # RequestValidator accepted them
    calls = d.statuses()
    assert [c["SequenceNumber"] for c in calls] == ["0", "1", "2", "3"]
    assert [c["CallStatus"] for c in calls] == ["initiated", "ringing", "in-progress",
                                                "completed"]
    for c in calls:
        assert (c["CallSid"], c["AccountSid"], c["To"], c["From"]) == (r.call_id, TWILIO_SID,
                                                                         TO, PHONE)
        assert c["Direction"] == "outbound-api" and c["CallbackSource"] == "call-progress-events"
        assert c["Timestamp"].endswith("GMT")
    assert "CallDuration" in calls[-1] and calls[-1]["Duration"] in ("0", "1")
    assert "CallDuration" not in calls[1]
    assert r.webhook_kinds() == ["status:initiated", "status:ringing", "status:in-progress",
                                 "status:completed"]
    assert all(w.status == 204 for w in r.webhooks)
    start = d.streams[0].start["start"]
    assert start["callSid"] == r.call_id
    assert start["customParameters"] == {"direction": "outbound", "to": TO, "var_name": "Ada"}
    assert [ln.who for ln in r.transcript] == ["agent"]


async def test_machine_voicemail_by_twiml_after_async_amd() -> None:
    cfg = twilio_config()
    callee = Callee("machine", greeting=GREETING)
    async with Dialer(cfg, on_machine="twiml", voicemail="Call us back please.") as d:
        r = await place(d, callee, machine_detection=True)
    assert not d.errors and r.ok, (r.outcome, r.detail, r.errors, r.warnings)
    assert r.outcome == HUNG_UP and r.said == ["Call us back please."]
    assert r.answered_by == "machine_end_beep"
    (t_amd, amd), = d.arrived("amd")
    assert (amd["CallSid"], amd["AccountSid"], amd["AnsweredBy"]) == (r.call_id, TWILIO_SID,
                                                                      "machine_end_beep")
    assert int(amd["MachineDetectionDuration"]) == pytest.approx(2000, abs=60)   # 1.8 + 0.2
    amd_hook = next(w for w in r.webhooks if w.kind == "amd")
    assert amd_hook.url == AMD_URL and amd_hook.status == 204     # signed with ?ctx=… kept
    s = d.streams[0]
    t_start = s.frames[1][0]
    assert t_amd - t_start == pytest.approx(2.0, abs=0.15)         # after the greeting + beep
    assert r.greeting_end is not None and r.amd_at is not None
    assert r.amd_at - r.greeting_end == pytest.approx(0.2, abs=0.1)
    voiced = np.array(s.caller_voiced_at) - t_start                 # the machine's greeting
    assert voiced.min() < 0.1 and voiced.max() == pytest.approx(1.8, abs=0.1)
    assert s.stopped.is_set()                                      # the TwiML update ended it
    create = r.request_fields("Calls.json")[0]
    assert (create["MachineDetection"], create["AsyncAmd"]) == ("DetectMessageEnd", "true")
    update = r.request_fields(f"{r.call_id}.json")[0]
    assert "<Say>" in update["Twiml"]
    assert [ln.text for ln in r.lines if ln.who == "agent" and ln.text] == \
        ["Call us back please."]
    final = d.statuses()[-1]
    assert final["CallStatus"] == "completed" and final["AnsweredBy"] == "machine_end_beep"


async def test_machine_records_the_voicemail_spoken_over_the_stream() -> None:
    async def speak_then_hang_up(s: Stream) -> None:
        await s.wait_for(lambda: bool(d.arrived("amd")), 5)
        await s.send_audio(tone(0.6), frame_ms=20)
        await d.hangup(s.start["start"]["callSid"])

    cfg = twilio_config()
    callee = Callee("machine", greeting=GREETING, beep=False)
    async with Dialer(cfg, speak_then_hang_up) as d:
        r = await place(d, callee, machine_detection=True)
    assert not d.errors and r.ok, (r.outcome, r.errors)
    assert r.outcome == HUNG_UP and r.answered_by == "machine_end_silence"
    assert r.amd_at is not None and r.greeting_end is not None
    assert r.amd_at - r.greeting_end == pytest.approx(1.2, abs=0.1)   # silence, no beep
    heard = np.abs(np.frombuffer(r.voicemail_audio, "<i2").reshape(-1, 160)).max(axis=1)
    assert (heard > 1000).sum() == pytest.approx(30, abs=3)            # 0.6 s recorded
    assert r.said == []


async def test_person_with_amd_gets_human_early() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet) as d:
        r = await place(d, Callee(steps=[Wait(1.0)], amd_delay=0.4), machine_detection=True)
    assert r.ok and r.answered_by == "human", r.errors
    (t_amd, amd), = d.arrived("amd")
    assert amd["AnsweredBy"] == "human" and amd["MachineDetectionDuration"] == "400"
    assert t_amd - d.streams[0].frames[1][0] == pytest.approx(0.4, abs=0.1)


@pytest.mark.parametrize(("kind", "outcome", "statuses", "sip"), [
    ("busy", BUSY, ["initiated", "ringing", "busy"], "486"),
    ("no-answer", NO_ANSWER, ["initiated", "ringing", "no-answer"], "487"),
    ("failed", FAILED, ["initiated", "failed"], "404"),
    ("canceled", CANCELED, ["initiated", "ringing", "canceled"], "487"),
])
async def test_unanswered_calls_have_no_media(kind: str, outcome: str, statuses: list[str],
                                              sip: str) -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet) as d:
        r = await place(d, Callee(kind, ring_seconds=0.3))
    assert r.ok and r.outcome == outcome, (r.outcome, r.errors)
    assert d.streams == [] and not r.media_opened and r.agent_audio == b"" or \
        not np.frombuffer(r.agent_audio, "<i2").any()
    calls = d.statuses()
    assert [c["CallStatus"] for c in calls] == statuses
    assert [c["SequenceNumber"] for c in calls] == [str(i) for i in range(len(statuses))]
    assert calls[-1]["SipResponseCode"] == sip and calls[-1]["CallDuration"] == "0"
    assert r.carrier_status == statuses[-1] and all(ok for *_, ok in d.webhooks)


async def test_no_answer_waits_for_the_ring_timeout() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, ring_timeout=1) as d:
        r = await place(d, Callee("no-answer"))
    assert r.outcome == NO_ANSWER and r.ok
    (t0, _), (t1, _) = d.arrived("status")[1:3]
    assert t1 - t0 == pytest.approx(1.0, abs=0.15)


async def test_daemon_cancels_a_ringing_call() -> None:
    cfg = twilio_config()
    async with Dialer(cfg) as d:
        task = asyncio.create_task(place(d, Callee(ring_seconds=10)))
        await asyncio.sleep(0.5)
        sid = d.dials[0][1]["sid"]
        status, body = await d.twilio_update(sid, {"Status": "canceled"})
        r = await task
    assert (status, body["status"]) == (200, "canceled")
    assert r.outcome == CANCELED and d.streams == []
    assert [c["CallStatus"] for c in d.statuses()] == ["initiated", "ringing", "canceled"]


async def test_single_space_separated_event_is_notification_21626() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet, single_event=True) as d:
        r = await place(d, Callee(steps=[Wait(0.2)]))
    assert r.admin_status == 201 and r.outcome == COMPLETED
    assert not r.ok and any("21626" in e for e in r.errors)
    assert [c["CallStatus"] for c in d.statuses()] == ["completed"]   # the default only
    assert d.statuses()[0]["SequenceNumber"] == "0"


async def test_invalid_create_is_answered_like_twilio() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, drop=("From",)) as d:
        r = await place(d, Callee())
    assert d.dials[0][0] == 400 and d.dials[0][1]["code"] == 21213
    assert r.admin_status == 502 and r.outcome == ERROR and not r.ok
    assert r.requests[0].status == 400 and "From" not in r.requests[0].fields


async def test_shuffled_and_duplicated_status_callbacks() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet) as d:
        r = await place(d, Callee(steps=[Wait(0.3)], shuffle_callbacks=True,
                                  duplicate_callbacks=True))
    assert r.ok, r.errors
    seqs = [c["SequenceNumber"] for c in d.statuses()]
    assert seqs == ["1", "1", "0", "0", "3", "3", "2", "2"]     # pairs newest first, twice
    assert all(ok for *_, ok in d.webhooks)
    tokens = [h["I-Twilio-Idempotency-Token"] for _, k, _, h in d.arrivals if k == "status"]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]    # a duplicate is a retry
    assert [w.attempt for w in r.webhooks] == [1, 2] * 4


async def test_recording_resource_and_callbacks() -> None:
    cfg = twilio_config()
    async with Dialer(cfg, greet, record=True) as d:
        r = await place(d, Callee(steps=[Wait(1.2)]))
    assert r.ok, r.errors
    (status, rec), = [x for x in d.rest if isinstance(x[1], dict) and
                      str(x[1].get("sid", "")).startswith("RE")]
    assert status == 201 and re.fullmatch(r"RE[0-9a-f]{32}", rec["sid"])
    assert (rec["status"], rec["call_sid"], rec["channels"]) == ("in-progress", r.call_id, 2)
    hooks = [p for _, p in d.arrived("recording")]
    assert [h["RecordingStatus"] for h in hooks] == ["in-progress", "completed"]
    done = hooks[-1]
    assert (done["RecordingSid"], done["CallSid"], done["AccountSid"]) == \
        (rec["sid"], r.call_id, TWILIO_SID)
    assert done["RecordingChannels"] == "2" and done["RecordingDuration"] in ("1", "2")
    assert done["RecordingUrl"].endswith(f"/Recordings/{rec['sid']}")
    assert all(ok for *_, ok in d.webhooks)
    kinds = [k for _, k, _, _ in d.arrivals]
    assert kinds.index("recording", kinds.index("recording") + 1) > \
        max(i for i, k in enumerate(kinds) if k == "status")     # after the call completed
    assert [q.status for q in r.requests if q.path.endswith("Recordings.json")] == [201]
