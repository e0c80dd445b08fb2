"""Twilio's webhooks end to end on a real 127.0.0.1 socket, signed by twilio-python."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from patterd.config import build_config
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.signing import PUBLIC_URL, call_sid, twilio_form

VOICE = "/webhooks/twilio/voice"


def voice_params(n: int = 1, **extra: str) -> dict[str, str]:
    return {"CallSid": call_sid(n), "AccountSid": "AC" + "1f" * 16, "From": "+15551112222",
            "To": "+15550001234", "CallStatus": "ringing", "Direction": "inbound",
            "ApiVersion": "2010-04-01", **extra}


async def post(client, path: str, params, *, url: str | None = None, headers=None):  # type: ignore[no-untyped-def]
    body, signed = twilio_form(url or PUBLIC_URL + path, params)
    return await client.post(path, data=body, headers={**signed, **(headers or {})})


async def metric(client, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    text = await (await client.get("/metrics")).text()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_voice_answers_connect_stream_with_parameters(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    resp = await post(client, VOICE, voice_params(agent="x<\"&'>"))
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    root = ET.fromstring(await resp.text())
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://voice.example.com/media/twilio"   # no query string
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["call_id"] == call_sid(1)
    assert params["direction"] == "inbound" and params["from"] == "+15551112222"
    rec = gateway_of(client).registry.get(call_sid(1))
    assert rec is not None and rec.direction == "inbound"


async def test_signature_with_explicit_default_port_is_accepted(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    resp = await post(client, VOICE, voice_params(),
                      url="https://voice.example.com:443" + VOICE)
    assert resp.status == 200


async def test_query_string_is_part_of_the_signed_url(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    path = VOICE + "?tenant=a%20b&x=1"
    assert (await post(client, path, voice_params())).status == 200
    body, headers = twilio_form(PUBLIC_URL + VOICE + "?tenant=other", voice_params())
    assert (await client.post(path, data=body, headers=headers)).status == 403


async def test_bad_or_missing_signature_is_403_and_counted(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params())
    tampered = body.replace(b"ringing", b"in-progress")
    assert (await client.post(VOICE, data=tampered, headers=headers)).status == 403
    headers.pop("X-Twilio-Signature")
    resp = await client.post(VOICE, data=body, headers=headers)
    assert resp.status == 403 and "missing" in (await resp.json())["error"]
    # A signature made for another host (e.g. a spoofed Host header) is refused.
    body, headers = twilio_form("https://evil.example.com" + VOICE, voice_params())
    assert (await client.post(VOICE, data=body, headers={**headers,
                                                         "Host": "evil.example.com"})).status == 403
    assert await metric(client, "patterd_webhook_signature_failures_total",
                        carrier="twilio") == 3
    assert await metric(client, "patterd_webhook_requests_total", carrier="twilio",
                        endpoint="voice", code="403") == 3
    assert gateway_of(client).registry.get(call_sid(1)) is None


async def test_malformed_body_is_400_with_reason(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    resp = await post(client, VOICE, {"CallSid": "not-a-sid"})
    assert resp.status == 400 and "CallSid" in (await resp.json())["error"]
    resp = await post(client, VOICE, {"From": "+1555"})
    assert resp.status == 400 and (await resp.json())["error"] == "CallSid: required"
    resp = await client.post(VOICE, data=b"%zz=\xff", headers={
        "X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400


async def test_body_over_limit_is_413(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(server={"max_body_bytes": 2048})))
    resp = await post(client, VOICE, voice_params(Junk="x" * 4000))
    assert resp.status == 413
    assert "2048" in (await resp.json())["error"]


async def test_repeated_form_keys_are_signed(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    params = list(voice_params().items()) + [("Extra", "b"), ("Extra", "a")]
    assert (await post(client, VOICE, params)).status == 200


async def test_status_callbacks_out_of_order_and_duplicated(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    sid = call_sid(7)
    path = "/webhooks/twilio/status"
    base = {"CallSid": sid, "Direction": "outbound-api", "AccountSid": "AC" + "1f" * 16}
    for status, seq in (("ringing", "1"), ("completed", "3"), ("in-progress", "2"),
                        ("completed", "3")):
        extra = {"CallDuration": "42"} if status == "completed" else {}
        resp = await post(client, path, {**base, "CallStatus": status, "SequenceNumber": seq,
                                         **extra})
        assert resp.status == 204
    rec = gateway_of(client).registry.get(sid)
    assert rec is not None and rec.status == "completed" and rec.outcome == "completed"
    assert [h["status"] for h in rec.history] == ["ringing", "in-progress", "completed"]
    assert await metric(client, "patterd_calls_total", direction="outbound",
                        outcome="completed") == 1
    assert await metric(client, "patterd_call_duration_seconds_count",
                        direction="outbound") == 1
    resp = await post(client, path, {**base, "CallStatus": "exploded"})
    assert resp.status == 400


async def test_unanswered_outcomes_are_recorded(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    for n, status in enumerate(("busy", "no-answer", "failed", "canceled"), 20):
        resp = await post(client, "/webhooks/twilio/status", {
            "CallSid": call_sid(n), "CallStatus": status, "SequenceNumber": "2",
            "Direction": "outbound-api"})
        assert resp.status == 204
        assert gateway_of(client).registry.get(call_sid(n)).outcome == status.replace("-", "_")
    assert await metric(client, "patterd_calls_total", direction="outbound",
                        outcome="no_answer") == 1


async def test_recording_and_amd_callbacks_recorded_once(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base})))
    sid = call_sid(3)
    rec_params = {"CallSid": sid, "RecordingSid": "RE" + "ab" * 16,
                  "RecordingStatus": "completed", "RecordingDuration": "12",
                  "RecordingUrl": "https://api.twilio.com/rec/RE1", "RecordingChannels": "2"}
    amd_params = {"CallSid": sid, "AnsweredBy": "machine_end_beep",
                  "MachineDetectionDuration": "3100"}
    for _ in range(2):
        assert (await post(client, "/webhooks/twilio/recording", rec_params)).status == 204
        assert (await post(client, "/webhooks/twilio/amd", amd_params)).status == 204
    for _ in range(100):   # a machine with no voicemail message: hung up via REST
        if fake.requests:
            break
        await asyncio.sleep(0.02)
    events = gateway_of(client).registry.get(sid).events
    assert [e["type"] for e in events][:3] == ["recording", "amd", "amd_verdict"]
    assert events[0]["url"] == "https://api.twilio.com/rec/RE1" and events[0]["duration"] == 12
    assert events[1]["verdict"] == "machine_end_beep" and events[2]["verdict"] == "machine"
    assert [dict(r.form) for r in fake.requests] == [{"Status": "completed"}]
    assert gateway_of(client).registry.get(sid).outcome == "voicemail"
    bad = await post(client, "/webhooks/twilio/amd", {**amd_params, "AnsweredBy": "robot"})
    assert bad.status == 400


async def test_capacity_and_draining_reject_new_calls(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(server={"max_calls": 1})))
    assert "<Connect>" in await (await post(client, VOICE, voice_params(1))).text()
    text = await (await post(client, VOICE, voice_params(2))).text()
    assert "<Reject" in text and "<Connect>" not in text
    # The call already admitted still gets its TwiML on a retry.
    assert "<Connect>" in await (await post(client, VOICE, voice_params(1))).text()
    assert await metric(client, "patterd_calls_total", direction="inbound",
                        outcome="rejected") == 1
    gw = gateway_of(client)
    gw.registry.end(call_sid(1), "completed")
    gw.draining = True
    assert "<Reject" in await (await post(client, VOICE, voice_params(3))).text()
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_json_webhook_with_body_hash(daemon) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import json as jsonlib
    from twilio.request_validator import RequestValidator
    from tests.support.signing import TWILIO_TOKEN
    client = await daemon(config(twilio_raw()))
    body = jsonlib.dumps({"CallSid": call_sid(5), "CallStatus": "ringing"}).encode()
    path = "/webhooks/twilio/status?bodySHA256=" + hashlib.sha256(body).hexdigest()
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, {})
    headers = {"X-Twilio-Signature": sig, "Content-Type": "application/json"}
    assert (await client.post(path, data=body, headers=headers)).status == 204
    assert (await client.post(path, data=body + b" ", headers=headers)).status == 403


async def test_unknown_route_and_method_are_json_4xx(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    resp = await client.get(VOICE)
    assert resp.status == 405
    resp = await client.post("/webhooks/nope")
    assert resp.status == 404 and "error" in await resp.json()


async def test_configure_number_points_voice_url_at_us(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    await daemon(config(twilio_raw(carrier={"configure_number": True, "api_base_url": base})))
    for _ in range(50):
        if fake.voice_urls:
            break
        await asyncio.sleep(0.02)
    assert list(fake.voice_urls.values()) == [PUBLIC_URL + VOICE]
    update = [r for r in fake.requests if r.method == "POST"][0]
    form = dict(update.form)
    assert form["VoiceMethod"] == "POST"
    assert form["StatusCallback"] == PUBLIC_URL + "/webhooks/twilio/status"
    assert fake.requests[0].query == {"PhoneNumber": "+15550001234"}


async def test_configure_number_failure_is_logged_and_daemon_serves(daemon, fake_twilio,  # type: ignore[no-untyped-def]
                                                                     capsys) -> None:
    from patterd.ops.logging import configure_logging
    configure_logging("info", "json")
    fake, base = fake_twilio
    fake.auth_token = "a-different-token"   # our credentials are now wrong → 401
    client = await daemon(config(twilio_raw(carrier={"configure_number": True,
                                                     "api_base_url": base})))
    for _ in range(50):
        if "configure_number_failed" in capsys.readouterr().err:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("no configure_number_failed warning logged")
    assert (await client.get("/readyz")).status == 200
    assert (await post(client, VOICE, voice_params())).status == 200


SHARED = ("webhooks_sharedkey_01J7ZQ3X", "9f3c1a7e5b2d4c6e8a0b1d3f5e7c9a2b")
ROTATED = ("KSa1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "1b3d5f7a9c2e4a6c8e0b2d4f6a8c0e2a")


async def test_shared_key_signed_webhooks_are_accepted_per_key(daemon) -> None:  # type: ignore[no-untyped-def]
    """A Twilio Webhook Rule that applies a SharedKey Setting: HMAC-SHA256 with that key's
    secret, named in X-Twilio-Webhooks-Signature-Settings (twilio-python signs it here). Two
    keys configured (a rotation): either is accepted; anything else is 403 and counted."""
    client = await daemon(config(twilio_raw(carrier={"signing_keys": dict([SHARED, ROTATED])})))
    for key in (SHARED, ROTATED):
        body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=key)
        resp = await client.post(VOICE, data=body, headers=headers)
        assert resp.status == 200, await resp.text()
    status = "/webhooks/twilio/status"
    body, headers = twilio_form(PUBLIC_URL + status, {"CallSid": call_sid(2),
                                                      "CallStatus": "ringing"}, shared_key=SHARED)
    assert (await client.post(status, data=body, headers=headers)).status == 204
    assert (await post(client, VOICE, voice_params())).status == 200      # the auth token still
    refused = [
        twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=("KSunknown", SHARED[1])),
        twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=(SHARED[0], "wrong")),
    ]
    body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=SHARED)
    headers.pop("X-Twilio-Webhooks-Signature-Settings")   # then it is checked with the token
    refused.append((body, headers))
    body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=SHARED)
    headers["X-Twilio-Webhooks-Signature-Settings"] = f"key={SHARED[0]},algorithm=HMAC_SHA512"
    refused.append((body, headers))
    body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params())     # token-signed …
    headers["X-Twilio-Webhooks-Signature-Settings"] = f"key={SHARED[0]},algorithm=HMAC_SHA256"
    refused.append((body, headers))                                     # … naming a key
    for body, headers in refused:
        resp = await client.post(VOICE, data=body, headers=headers)
        assert resp.status == 403, await resp.text()
    assert await metric(client, "patterd_webhook_signature_failures_total",
                        carrier="twilio") == len(refused)


async def test_shared_key_from_the_environment_signs_the_media_upgrade_too(daemon) -> None:  # type: ignore[no-untyped-def]
    """TWILIO_SIGNING_KEYS=id=secret,… when the file sets none. Should a Rule apply a SharedKey
    to the stream URL, the upgrade's settings header is honoured like a webhook's."""
    cfg = build_config(twilio_raw(), env={"TWILIO_SIGNING_KEYS": f"{SHARED[0]}={SHARED[1]}, "
                                                        f"{ROTATED[0]}={ROTATED[1]}"})
    assert dict(cfg.carrier.signing_keys) == dict([SHARED, ROTATED])
    client = await daemon(cfg)
    body, headers = twilio_form(PUBLIC_URL + VOICE, voice_params(), shared_key=ROTATED)
    assert (await client.post(VOICE, data=body, headers=headers)).status == 200
    wss = "wss://voice.example.com/media/twilio"
    sig = RequestValidator(SHARED[1]).compute_signature(wss, {}, "HMAC_SHA256")
    ws = await client.ws_connect("/media/twilio", headers={
        "X-Twilio-Signature": sig,
        "X-Twilio-Webhooks-Signature-Settings": f"key={SHARED[0]},algorithm=HMAC_SHA256"})
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/media/twilio", headers={
            "X-Twilio-Signature": sig,
            "X-Twilio-Webhooks-Signature-Settings": "key=KSother,algorithm=HMAC_SHA256"})
    assert info.value.status == 403
