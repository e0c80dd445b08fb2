"""Call control end to end through the carrier simulator: outbound calls on both carriers,
answering-machine detection both ways, the unanswered outcomes, status-callback ordering,
recording, and steering a live call from the admin API."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from patterd.simulate import Callee, Dtmf, TelnyxSigner, Wait, WaitForAgent, simulate_outbound
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.stub_backends import stub_backends
from tests.support.net import free_port

TOKEN = "admin-token-0123456789abcdef"
SEED = bytes(range(32))
TO = "+15557654321"
RULES = {"llm": {"provider": "rules", "rules": [
    {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
], "fallback": "Hmm."}}


def make_config(carrier: str, **extra: Any):  # type: ignore[no-untyped-def]
    sections = {**RULES, "admin": {"token": TOKEN}, **extra}
    if carrier == "twilio":
        raw = twilio_raw(**sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    else:
        raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


async def start(daemon, carrier: str, **extra: Any):  # type: ignore[no-untyped-def]
    cfg = make_config(carrier, **extra)
    client = await daemon(cfg, stub_backends(cfg, stt_text="hello there"))
    return cfg, client, str(client.make_url("")).rstrip("/")


async def outbound(cfg, url: str, callee: Callee, **kw: Any):  # type: ignore[no-untyped-def]
    signer = TelnyxSigner(SEED) if cfg.carrier.provider == "telnyx" else None
    return await simulate_outbound(cfg, url, TO, callee, admin_token=TOKEN, signer=signer,
                                   timeout=60, **kw)


def hangups(r) -> list[Any]:  # type: ignore[no-untyped-def]
    """The daemon's REST hang-ups: Telnyx actions/hangup, Twilio Status=completed."""
    return [q for q in r.requests if q.path.endswith("/hangup")
            or q.fields.get("Status") == "completed"]


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


async def settled(client, call_id: str, outcome: str) -> Any:  # type: ignore[no-untyped-def]
    rec = gateway_of(client).registry.get(call_id)
    for _ in range(200):
        if rec is not None and rec.outcome == outcome:
            break
        await asyncio.sleep(0.02)
        rec = gateway_of(client).registry.get(call_id)
    return rec


CARRIERS = ["twilio", "telnyx"]


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_outbound_human_with_amd_talks_to_the_agent(daemon, carrier: str) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, carrier)
    callee = Callee("human", steps=[WaitForAgent(), Wait(2.5), Dtmf("9"),
                                    WaitForAgent(required=False)])
    r = await outbound(cfg, url, callee, machine_detection=True, voicemail_message="Call back.")
    assert r.admin_status == 201 and r.media_opened, (r.outcome, r.detail, r.errors)
    rec = await settled(client, r.admin_call_id, "completed")
    verdicts = [e for e in rec.events if e["type"] == "amd_verdict"]
    assert [v["verdict"] for v in verdicts] == ["human"]
    assert rec.direction == "outbound" and rec.outcome == "completed"
    assert r.said == []                       # no voicemail was left
    metric = gateway_of(client).metrics.calls_total.labels("outbound", "completed")
    assert metric._value.get() == 1


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_outbound_machine_gets_the_voicemail_then_hangup(daemon, carrier: str) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, carrier)
    r = await outbound(cfg, url, Callee("machine"), machine_detection=True,
                       voicemail_message="This is Example Company, please call us back.")
    assert r.admin_status == 201 and r.media_opened, (r.outcome, r.detail, r.errors)
    rec = await settled(client, r.admin_call_id, "voicemail")
    assert rec.outcome == "voicemail"
    assert [e["verdict"] for e in rec.events if e["type"] == "amd_verdict"] == ["machine"]
    # Spoken over our own stream (this process holds it) after the greeting, then hung up.
    assert rms(r.voicemail_audio) > 300
    spoken = [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]
    assert spoken[-1] == "This is Example Company, please call us back."
    assert hangups(r), [(q.path, q.fields) for q in r.requests]


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_outbound_machine_without_message_is_hung_up(daemon, carrier: str) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, carrier)
    r = await outbound(cfg, url, Callee("machine"), machine_detection=True,
                       voicemail_message="")
    rec = await settled(client, r.admin_call_id, "voicemail")
    assert rec.outcome == "voicemail"
    assert hangups(r) and r.said == []


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("kind,outcome", [("busy", "busy"), ("no-answer", "no_answer"),
                                          ("failed", "failed"), ("canceled", "canceled")])
async def test_unanswered_outcomes_without_media(daemon, carrier: str, kind: str,  # type: ignore[no-untyped-def]
                                                 outcome: str) -> None:
    cfg, client, url = await start(daemon, carrier)
    r = await outbound(cfg, url, Callee(kind, ring_seconds=0.3))
    assert r.admin_status == 201 and not r.media_opened
    rec = await settled(client, r.admin_call_id, outcome)
    assert rec.outcome == outcome, (rec.outcome, rec.history)
    assert gateway_of(client).metrics.calls_total.labels("outbound", outcome)._value.get() == 1
    assert all(status < 300 for _, status in
               [(w.kind, w.status) for w in r.webhooks]), r.webhooks


async def test_twilio_status_callbacks_out_of_order_and_duplicated(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, "twilio")
    callee = Callee("human", steps=[WaitForAgent(), Dtmf("9"), WaitForAgent(required=False)],
                    shuffle_callbacks=True, duplicate_callbacks=True)
    r = await outbound(cfg, url, callee)
    rec = await settled(client, r.admin_call_id, "completed")
    await asyncio.sleep(0.3)   # late callbacks
    seqs = [h["sequence"] for h in rec.history if h["sequence"] is not None]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))   # ordered, each once
    assert rec.status == "completed"
    assert gateway_of(client).metrics.calls_total.labels("outbound", "completed") \
        ._value.get() == 1


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_recording_lands_in_the_call_record(daemon, carrier: str) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, carrier, recording={"enabled": True})
    callee = Callee("human", steps=[WaitForAgent(), Wait(1.0), Dtmf("9"),
                                    WaitForAgent(required=False)])
    r = await outbound(cfg, url, callee)
    rec = await settled(client, r.admin_call_id, "completed")
    for _ in range(150):
        if any(e["type"] == "recording" for e in rec.events):
            break
        await asyncio.sleep(0.02)
    saved = [e for e in rec.events if e["type"] == "recording"]
    assert saved, rec.events
    if carrier == "twilio":
        assert r.request_fields("Recordings.json")[0]["RecordingChannels"] == "dual"
        assert any(e.get("status") == "completed" and e.get("url") for e in saved)
    else:
        assert r.request_fields("record_start")[0]["channels"] == "dual"
        assert saved[0]["recording_urls"]["wav"]


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_admin_hangup_of_a_live_call(daemon, carrier: str) -> None:  # type: ignore[no-untyped-def]
    cfg, client, url = await start(daemon, carrier)
    callee = Callee("human", steps=[WaitForAgent(), Wait(20)])
    task = asyncio.create_task(outbound(cfg, url, callee))
    gw = gateway_of(client)
    for _ in range(300):
        if gw.sessions:
            break
        await asyncio.sleep(0.02)
    session = next(iter(gw.sessions))
    resp = await client.post(f"/v1/calls/{session.call_id}/hangup",
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    r = await task
    assert hangups(r) and r.duration < 15
    rec = await settled(client, session.call_id, "completed")
    assert any(e["type"] == "hangup" and e.get("by") == "admin" for e in rec.events)


async def carrier_voicemail(client: Any, fake: Any, text: str, sid: str,
                            answered_by: str) -> str:
    """Post a signed AMD verdict carrying ``text`` for a call with no stream here; returns
    the TwiML the daemon then sent to Twilio's REST API (the carrier speaks it)."""
    from patterd.carriers.twilio.control import amd_context
    from tests.support.signing import PUBLIC_URL, twilio_form
    path = f"/webhooks/twilio/amd?ctx={amd_context(text)}"
    body, headers = twilio_form(PUBLIC_URL + path, {"CallSid": sid, "AccountSid":
                                                    "AC" + "1f" * 16,
                                                    "AnsweredBy": answered_by})
    assert (await client.post(path, data=body, headers=headers)).status == 204
    for _ in range(100):
        if fake.requests:
            break
        await asyncio.sleep(0.02)
    return str(dict(fake.requests[0].form)["Twiml"])


async def test_twilio_amd_on_a_replica_without_the_stream_uses_the_carrier(  # type: ignore[no-untyped-def]
        daemon, fake_twilio) -> None:
    """The verdict may reach a process that does not hold the media socket: the voicemail
    text rides in the signed callback URL and Twilio speaks it."""
    from tests.support.signing import call_sid
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base})))
    twiml = await carrier_voicemail(client, fake, "Hi <there>, call back & soon.", call_sid(9),
                                    "machine_end_silence")
    assert "<Say>Hi &lt;there&gt;, call back &amp; soon.</Say><Hangup/>" in twiml
    assert gateway_of(client).registry.get(call_sid(9)).outcome == "voicemail"


async def test_telnyx_amd_on_a_replica_without_the_stream_uses_speak(  # type: ignore[no-untyped-def]
        daemon, fake_telnyx, telnyx_signer) -> None:
    from patterd.carriers.telnyx.rest import client_state
    from tests.support.signing import telnyx_event
    fake, base = fake_telnyx
    raw = telnyx_raw(telnyx_signer.public_key_b64)
    raw["carrier"]["api_base_url"] = base
    client = await daemon(config(raw))
    state = client_state({"direction": "outbound", "vm": "Please call back."})
    events = [("call.machine.detection.ended", {"result": "machine"}),
              ("call.machine.greeting.ended", {"result": "beep_detected"})]
    for i, (kind, extra) in enumerate(events):
        body = telnyx_event(kind, {"call_control_id": "v3:out-1", "client_state": state,
                                   **extra}, f"amd-{i}")
        assert (await client.post("/webhooks/telnyx/voice", data=body,
                                  headers=telnyx_signer.sign(body))).status == 200
    for _ in range(100):
        if fake.requests:
            break
        await asyncio.sleep(0.02)
    speak = fake.requests[0]
    assert speak.path.endswith("/actions/speak") and speak.json["payload"] == "Please call back."
    # Telnyx reports the end of speech with our client_state: then the call is hung up.
    body = telnyx_event("call.speak.ended", {"call_control_id": "v3:out-1", "status":
                                             "completed",
                                             "client_state": speak.json["client_state"]}, "sp")
    assert (await client.post("/webhooks/telnyx/voice", data=body,
                              headers=telnyx_signer.sign(body))).status == 200
    for _ in range(100):
        if len(fake.requests) > 1:
            break
        await asyncio.sleep(0.02)
    assert fake.requests[1].path.endswith("/actions/hangup")
