"""How a call's end is settled, whichever order the carrier's word and our media stream's close
arrive in: the most specific outcome wins, ``patterd_calls_total`` counts the call once with
it and ``patterd_call_duration_seconds`` observes it once. Also Telnyx's ``streaming.failed``
(the call is hung up through the REST API, not left billing) and a caller who hangs up while
the daemon answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from patterd import gateway
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.media_client import MediaStream, telnyx_stream, twilio_stream, until
from tests.support.signing import PUBLIC_URL, TelnyxSigner, call_sid, telnyx_event, twilio_form

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CCID = "v3:outcome-call-1"
CARRIER_SECONDS = 42       # what the carrier's own report says the call lasted


async def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed: sample name → {sorted labels: value}."""
    text = await (await client.get("/metrics")).text()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def calls_total(samples: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(dict(k)["direction"], dict(k)["outcome"]): v
            for k, v in samples.get("patterd_calls_total", {}).items()}


class Rig:
    """A daemon on one carrier with that carrier's fake REST API, and how to drive a call."""

    def __init__(self, carrier: str, client: Any, fake: Any, signer: TelnyxSigner | None
                 ) -> None:
        self.carrier, self.client, self.fake, self.signer = carrier, client, fake, signer
        self.gw = gateway_of(client)
        self.call_id = call_sid(11) if carrier == "twilio" else CCID
        self._n = 0

    async def telnyx(self, event_type: str, **payload: Any) -> None:
        assert self.signer is not None
        self._n += 1
        body = telnyx_event(event_type, {"call_control_id": self.call_id, **payload},
                            f"evt-{self._n}")
        resp = await self.client.post("/webhooks/telnyx/voice", data=body,
                                      headers=self.signer.sign(body))
        assert resp.status == 200, await resp.text()

    async def twilio(self, path: str, **params: str) -> int:
        body, headers = twilio_form(PUBLIC_URL + path, {"CallSid": self.call_id, **params})
        return (await self.client.post(path, data=body, headers=headers)).status

    async def answered_call(self) -> MediaStream:
        """An inbound call the daemon answered, its media stream open."""
        if self.carrier == "twilio":
            assert await self.twilio("/webhooks/twilio/voice", CallStatus="ringing",
                                     Direction="inbound", From="+15551112222",
                                     To="+15550001234") == 200
            stream = await twilio_stream(self.client, self.call_id)
        else:
            await self.telnyx("call.initiated", direction="incoming", state="parked",
                              **{"from": "+15551112222", "to": "+15550001234"})
            await self.telnyx("call.answered")
            stream = await telnyx_stream(self.client, self.call_id)
        await until(lambda: any(s.call_id == self.call_id for s in self.gw.sessions))
        return stream

    async def end_with(self, outcome: str) -> None:
        """The session learns how the call ends: an admin transfer, or a machine answered
        (no voicemail message: hung up at once)."""
        if outcome == "transferred":
            resp = await self.client.post(f"/v1/calls/{self.call_id}/transfer",
                                          json={"to": "+15557654321"}, headers=AUTH)
            assert resp.status == 200, await resp.text()
        elif self.carrier == "twilio":
            assert await self.twilio("/webhooks/twilio/amd", AnsweredBy="machine_end_beep",
                                     MachineDetectionDuration="2100") == 204
        else:
            await self.telnyx("call.machine.greeting.ended", result="beep_detected")
        session = next(s for s in self.gw.sessions if s.call_id == self.call_id)
        await until(lambda: session.outcome == outcome)

    async def carrier_says_ended(self) -> None:
        """The carrier's generic "the call is over"."""
        if self.carrier == "twilio":
            assert await self.twilio("/webhooks/twilio/status", CallStatus="completed",
                                     SequenceNumber="9", Direction="inbound",
                                     CallDuration=str(CARRIER_SECONDS)) == 204
        else:
            await self.telnyx("call.hangup", hangup_cause="normal_clearing",
                              hangup_source="callee")


async def rig(daemon: Any, carrier: str, fake_twilio: Any, fake_telnyx: Any) -> Rig:
    if carrier == "twilio":
        fake, base = fake_twilio
        raw = twilio_raw(carrier={"api_base_url": base}, admin={"token": TOKEN})
        signer = None
    else:
        fake, base = fake_telnyx
        signer = TelnyxSigner()
        raw = telnyx_raw(signer.public_key_b64, carrier={"api_base_url": base},
                         admin={"token": TOKEN})
    return Rig(carrier, await daemon(config(raw)), fake, signer)


@pytest.mark.parametrize("order", ["carrier_first", "stream_first"])
@pytest.mark.parametrize("outcome", ["transferred", "voicemail"])
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_the_sessions_outcome_wins_whichever_order(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, carrier: str, outcome: str,
        order: str) -> None:
    r = await rig(daemon, carrier, fake_twilio, fake_telnyx)
    stream = await r.answered_call()
    await r.end_with(outcome)
    rec = r.gw.registry.get(r.call_id)
    if order == "carrier_first":
        await r.carrier_says_ended()
        # The stream is still open here: the carrier's word waits for the session's.
        assert rec.live and rec.status == "completed"
        assert calls_total(await scrape(r.client)) == {}
        if carrier == "telnyx":   # the stream failing as the call ends is no failure
            await r.telnyx("streaming.failed", failure_reason="stream_closed")
        await stream.stop()
        await until(lambda: not rec.live and not r.gw.sessions)
    else:
        await stream.stop()
        await until(lambda: not rec.live and not r.gw.sessions)
        await r.carrier_says_ended()
    assert rec.outcome == outcome and rec.status == "completed"
    samples = await scrape(r.client)
    assert calls_total(samples) == {("inbound", outcome): 1.0}
    # One duration observation: our stream's seconds, not the carrier's 42.
    labels = (("direction", "inbound"),)
    assert samples["patterd_call_duration_seconds_count"][labels] == 1
    assert 0 < samples["patterd_call_duration_seconds_sum"][labels] < CARRIER_SECONDS
    assert samples["patterd_calls_active"][()] == 0


async def test_a_stream_that_never_closes_is_settled_after_a_grace(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, monkeypatch: Any) -> None:
    """The carrier said the call is over but our socket stays open: the call is settled
    anyway after SETTLE_GRACE, with the session's outcome; the late close adds nothing but
    the duration."""
    monkeypatch.setattr(gateway, "SETTLE_GRACE", 0.2)
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    stream = await r.answered_call()
    await r.end_with("transferred")
    await r.carrier_says_ended()
    rec = r.gw.registry.get(r.call_id)
    assert rec.live
    await until(lambda: not rec.live)
    assert rec.outcome == "transferred" and r.gw.sessions
    assert calls_total(await scrape(r.client)) == {("inbound", "transferred"): 1.0}
    await stream.stop()
    await until(lambda: not r.gw.sessions)
    samples = await scrape(r.client)
    assert calls_total(samples) == {("inbound", "transferred"): 1.0}
    assert samples["patterd_call_duration_seconds_count"][(("direction", "inbound"),)] == 1


async def test_expected_outcome_survives_a_carrier_report_that_beats_the_rest_answer(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any) -> None:
    """No stream here (say, a voicemail left by the carrier): the gateway says what it is
    about to do, and the carrier's hang-up arriving before the REST answer keeps it."""
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    await r.telnyx("call.initiated", direction="outgoing")
    r.gw.expect_outcome(r.call_id, "telnyx", "voicemail")
    await r.carrier_says_ended()
    assert r.gw.registry.get(r.call_id).outcome == "voicemail"
    assert not r.gw.finish_call(r.call_id, "telnyx", "voicemail")   # already settled
    assert calls_total(await scrape(r.client)) == {("outbound", "voicemail"): 1.0}


async def test_telnyx_streaming_failed_hangs_up_and_counts_failed_once(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any) -> None:
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    await r.telnyx("call.initiated", direction="incoming", state="parked")
    await r.telnyx("call.answered")
    failed = {"failure_reason": "connection_failed", "stream_id": "st-9",
              "stream_type": "websocket",
              "stream_params": {"stream_url": "wss://voice.example.com/media/telnyx/x",
                                "track": "inbound_track"}}
    await r.telnyx("streaming.failed", **failed)
    await until(lambda: (r.call_id, "hangup") in r.fake.applied)
    rec = r.gw.registry.get(r.call_id)
    assert rec.outcome == "failed" and not rec.live
    assert [e["failure_reason"] for e in rec.events if e["type"] == "stream_failed"] \
        == ["connection_failed"]
    await until(lambda: any(e["type"] == "hangup" for e in rec.events))
    hangup = next(e for e in rec.events if e["type"] == "hangup")
    assert (hangup["by"], hangup["reason"]) == ("gateway", "stream_failed")
    # Telnyx then reports the hang-up (and may repeat the failure): still one failed call.
    await r.telnyx("streaming.failed", **failed)
    await r.carrier_says_ended()
    assert rec.outcome == "failed"
    assert [a for a in r.fake.applied if a[1] == "hangup"] == [(r.call_id, "hangup")]
    assert calls_total(await scrape(r.client)) == {("inbound", "failed"): 1.0}


async def test_telnyx_caller_gone_while_answering_is_not_a_failure(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any) -> None:
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    r.fake.ended_calls.add(r.call_id)        # the answer gets 422 90018: already ended
    await r.telnyx("call.initiated", direction="incoming", state="parked")
    await until(lambda: len(r.fake.requests) == 1)
    await r.telnyx("call.hangup", hangup_cause="originator_cancel", hangup_source="caller")
    rec = r.gw.registry.get(r.call_id)
    assert rec.outcome == "canceled"
    samples = await scrape(r.client)
    assert calls_total(samples) == {("inbound", "canceled"): 1.0}
    assert "patterd_backend_errors_total" not in samples      # 90018 is not an error
    assert [q.path.rsplit("/", 1)[-1] for q in r.fake.requests] == ["answer"]


async def test_a_telnyx_stream_stopped_while_the_call_is_up_is_hung_up(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, monkeypatch: Any) -> None:
    """Telnyx stops the stream (say, streaming_stop from elsewhere) and reports no hang-up:
    the call would stay up and billing, so the daemon hangs it up after STOP_GRACE."""
    from patterd.call import recovery
    monkeypatch.setattr(recovery, "STOP_GRACE", 1.5)
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    stream = await r.answered_call()
    await stream.stop()
    rec = r.gw.registry.get(r.call_id)
    assert (r.call_id, "hangup") not in r.fake.applied     # not at once: the grace first
    await until(lambda: any(e["type"] == "hangup" and e.get("reason") == "stream_stopped"
                            for e in rec.events))
    assert r.fake.applied.count((r.call_id, "hangup")) == 1
    event = next(e for e in rec.events if e.get("reason") == "stream_stopped")
    assert event["by"] == "gateway" and event["ok"] is True


async def test_a_telnyx_stream_stopped_by_the_callers_hang_up_needs_no_rest_call(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, monkeypatch: Any) -> None:
    from patterd.call import recovery
    monkeypatch.setattr(recovery, "STOP_GRACE", 0.3)
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    stream = await r.answered_call()
    await stream.stop()
    await r.carrier_says_ended()                 # call.hangup, just after the stream's stop
    rec = r.gw.registry.get(r.call_id)
    await until(lambda: not rec.live)
    await asyncio.sleep(0.6)                     # past the grace
    assert (r.call_id, "hangup") not in r.fake.applied
    assert not any(e.get("reason") == "stream_stopped" for e in rec.events)
