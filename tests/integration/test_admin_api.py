"""The admin API: bearer auth, placing calls on both carriers, reading and steering calls."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def twilio_admin(base: str, **extra):  # type: ignore[no-untyped-def]
    return config(twilio_raw(admin={"token": TOKEN}, carrier={"api_base_url": base},
                             agent={"transfer_targets": {"sales": "+15550001001"}}, **extra))


async def test_no_token_configured_means_no_admin_api(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    assert (await client.get("/v1/calls", headers=AUTH)).status == 404


async def test_missing_or_wrong_token_is_401(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    _, base = fake_twilio
    client = await daemon(twilio_admin(base))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.get("/v1/calls", headers=headers)
        assert resp.status == 401 and "error" in await resp.json()
    assert (await client.get("/v1/calls", headers=AUTH)).status == 200


async def test_place_twilio_call_with_amd_voicemail_and_variables(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(twilio_admin(base))
    resp = await client.post("/v1/calls", headers=AUTH, json={
        "to": "+15557654321", "machine_detection": True,
        "voicemail_message": 'Hi <Alex> & co, call us "back".',
        "variables": {"name": "Alex <script>", "ref": 42}})
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["call_id"]
    create = [r for r in fake.requests if r.path.endswith("/Calls.json")][0]
    form = create.form
    fields = dict(form)
    assert fields["To"] == "+15557654321" and fields["From"] == "+15550001234"
    assert [v for k, v in form if k == "StatusCallbackEvent"] == [
        "initiated", "ringing", "answered", "completed"]
    assert fields["StatusCallback"] == "https://voice.example.com/webhooks/twilio/status"
    assert fields["Timeout"] == "30"
    assert fields["MachineDetection"] == "DetectMessageEnd" and fields["AsyncAmd"] == "true"
    assert fields["AsyncAmdStatusCallback"].startswith(
        "https://voice.example.com/webhooks/twilio/amd?ctx=")
    # The TwiML is well-formed: every value escaped, context in <Parameter>s, no query string.
    stream = ET.fromstring(fields["Twiml"]).find("./Connect/Stream")
    assert stream.get("url") == "wss://voice.example.com/media/twilio"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["var_name"] == "Alex <script>" and params["var_ref"] == "42"
    assert params["vm"] == 'Hi <Alex> & co, call us "back".'
    assert params["direction"] == "outbound" and params["amd"] == "1"
    rec = await (await client.get(f"/v1/calls/{call_id}", headers=AUTH)).json()
    assert rec["direction"] == "outbound" and rec["to"] == "+15557654321"
    assert rec["status"] == "queued"


async def test_place_call_input_errors_are_400(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(twilio_admin(base))
    bad = [
        ({"to": "5551234"}, "to:"), ({}, "to:"), ({"to": "+15551234567", "nope": 1}, "nope"),
        ({"to": "+15551234567", "machine_detection": "yes"}, "machine_detection"),
        ({"to": "+15551234567", "variables": {"bad name": "x"}}, "variables"),
        ({"to": "+15551234567", "voicemail_message": "x" * 1001}, "voicemail_message"),
        ({"to": "+15551234567", "ring_timeout": 4}, "ring_timeout"),
        ({"to": "+15551234567", "ring_timeout": 601}, "ring_timeout"),
        ({"to": "+15551234567", "ring_timeout": 20.5}, "ring_timeout"),
    ]
    for body, field in bad:
        resp = await client.post("/v1/calls", headers=AUTH, json=body)
        assert resp.status == 400 and field in (await resp.json())["error"], body
    resp = await client.post("/v1/calls", headers=AUTH, data=b"{not json")
    assert resp.status == 400
    assert not [r for r in fake.requests if r.path.endswith("/Calls.json")]


async def test_place_telnyx_call(daemon, fake_telnyx, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_telnyx
    raw = telnyx_raw(telnyx_signer.public_key_b64, admin={"token": TOKEN})
    raw["carrier"]["api_base_url"] = base
    client = await daemon(config(raw))
    resp = await client.post("/v1/calls", headers=AUTH, json={
        "to": "+15557654321", "machine_detection": True, "voicemail_message": "Call back.",
        "ring_timeout": 45})
    assert resp.status == 201
    assert (await resp.json())["call_id"] == "v3:dialled-1"
    body = fake.requests[0].json
    assert body["connection_id"] == "2811212257810187875" and body["to"] == "+15557654321"
    assert body["stream_bidirectional_mode"] == "rtp" and body["timeout_secs"] == 45
    assert body["answering_machine_detection"] == "greeting_end"
    assert body["stream_url"].startswith("wss://voice.example.com/media/telnyx/")
    state = json.loads(base64.b64decode(body["client_state"]))
    assert state["vm"] == "Call back." and state["direction"] == "outbound"


async def test_read_calls_newest_first_with_cursor_and_status(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    _, base = fake_twilio
    client = await daemon(twilio_admin(base))
    ids = []
    for n in range(5):
        resp = await client.post("/v1/calls", headers=AUTH, json={"to": f"+1555765432{n}"})
        ids.append((await resp.json())["call_id"])
    gateway_of(client).registry.apply_status(ids[0], "twilio", "busy", 5)
    page1 = await (await client.get("/v1/calls?limit=3", headers=AUTH)).json()
    assert [c["call_id"] for c in page1["calls"]] == ids[::-1][:3]
    page2 = await (await client.get(f"/v1/calls?limit=3&cursor={page1['next_cursor']}",
                                    headers=AUTH)).json()
    assert [c["call_id"] for c in page2["calls"]] == ids[::-1][3:]
    assert "next_cursor" not in page2
    busy = await (await client.get("/v1/calls?status=busy", headers=AUTH)).json()
    assert [c["call_id"] for c in busy["calls"]] == [ids[0]]
    for query in ("limit=0", "limit=x", "cursor=%%%"):
        assert (await client.get(f"/v1/calls?{query}", headers=AUTH)).status == 400
    assert (await client.get("/v1/calls/CAnope", headers=AUTH)).status == 404


async def test_steering_a_call(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(twilio_admin(base))
    call_id = (await (await client.post("/v1/calls", headers=AUTH,
                                        json={"to": "+15557654321"})).json())["call_id"]
    for path in ("hangup", "transfer", "dtmf"):
        assert (await client.post(f"/v1/calls/CAunknown/{path}", headers=AUTH,
                                  json={})).status == 404
        assert (await client.post(f"/v1/calls/{call_id}/{path}", json={})).status == 401
    resp = await client.post(f"/v1/calls/{call_id}/transfer", headers=AUTH,
                             json={"to": "+1 (555) evil"})
    assert resp.status == 400
    resp = await client.post(f"/v1/calls/{call_id}/dtmf", headers=AUTH, json={"digits": "12x"})
    assert resp.status == 400
    assert (await client.post(f"/v1/calls/{call_id}/dtmf", headers=AUTH,
                              json={"digits": "12#"})).status == 200
    assert (await client.post(f"/v1/calls/{call_id}/transfer", headers=AUTH,
                              json={"to": "sales"})).status == 200
    updates = [dict(r.form) for r in fake.requests if r.path.endswith(f"/{call_id}.json")]
    assert '<Play digits="12#"/>' in updates[0]["Twiml"]
    assert "<Number>+15550001001</Number>" in updates[1]["Twiml"]
    assert (await client.post(f"/v1/calls/{call_id}/hangup", headers=AUTH)).status == 200
    assert dict(fake.requests[-1].form) == {"Status": "completed"}
    # Hang-up is idempotent: Twilio's 20404 ("already ended") counts as done.
    assert (await client.post(f"/v1/calls/{call_id}/hangup", headers=AUTH)).status == 200
    assert call_id in fake.ended_calls
    events = (await (await client.get(f"/v1/calls/{call_id}", headers=AUTH)).json())["events"]
    assert [e["type"] for e in events if e.get("by") == "admin"] == [
        "send_dtmf", "transfer", "hangup", "hangup"]
