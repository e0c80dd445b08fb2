"""The Telnyx webhook end to end: PyNaCl-signed events in, Call Control REST out."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from patterd.carriers.telnyx.stream_token import StreamTokens
from tests.conftest import TELNYX_KEY, config, gateway_of, telnyx_raw
from tests.support.signing import telnyx_event

HOOK = "/webhooks/telnyx/voice"
CCID = "v3:2EC-abc_DEF-123"


def initiated(ccid: str = CCID, direction: str = "incoming") -> dict:
    return {"call_control_id": ccid, "call_leg_id": "leg-1", "call_session_id": "sess-1",
            "connection_id": "2811212257810187875", "from": "+18124040851",
            "to": "+15550001234", "direction": direction, "state": "parked"}


async def wait_for(predicate, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def start(daemon, signer, base_url: str, **sections):  # type: ignore[no-untyped-def]
    raw = telnyx_raw(signer.public_key_b64, **sections)
    raw["carrier"]["api_base_url"] = base_url
    return await daemon(config(raw))


async def send(client, signer, body: bytes, ts: int | None = None):  # type: ignore[no-untyped-def]
    return await client.post(HOOK, data=body, headers=signer.sign(body, ts))


async def test_incoming_call_is_acknowledged_then_answered_with_rtp_stream(  # type: ignore[no-untyped-def]
        daemon, telnyx_signer, fake_telnyx) -> None:
    fake, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    resp = await send(client, telnyx_signer, telnyx_event("call.initiated", initiated()))
    assert resp.status == 200
    await wait_for(lambda: fake.requests)
    req = fake.requests[0]
    assert req.path == "/v2/calls/v3:2EC-abc_DEF-123/actions/answer"
    assert req.headers["Authorization"] == f"Bearer {TELNYX_KEY}"
    body = req.json
    assert body["stream_bidirectional_mode"] == "rtp"
    assert body["stream_bidirectional_codec"] == "PCMU"
    assert body["stream_track"] == "inbound_track"
    assert body["command_id"] and len(body["command_id"]) == 36
    state = json.loads(base64.b64decode(body["client_state"]))
    assert state == {"call_id": CCID, "direction": "inbound"}
    prefix = "wss://voice.example.com/media/telnyx/"
    assert body["stream_url"].startswith(prefix)
    token = body["stream_url"][len(prefix):]
    assert StreamTokens(TELNYX_KEY).verify(token) == CCID        # verifiable by any replica
    assert StreamTokens("another-key").verify(token) is None


async def test_webhook_is_acknowledged_without_waiting_for_the_api(daemon, telnyx_signer,  # type: ignore[no-untyped-def]
                                                                  fake_telnyx) -> None:
    fake, base = fake_telnyx
    fake.delay = 1.5
    client = await start(daemon, telnyx_signer, base)
    began = time.monotonic()
    resp = await send(client, telnyx_signer, telnyx_event("call.initiated", initiated()))
    assert resp.status == 200 and time.monotonic() - began < 0.5
    await wait_for(lambda: fake.applied, timeout=5)
    assert fake.applied == [(CCID, "answer")]


async def test_duplicate_delivery_is_processed_once(daemon, telnyx_signer, fake_telnyx  # type: ignore[no-untyped-def]
                                                    ) -> None:
    fake, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    body = telnyx_event("call.initiated", initiated(), event_id="same-id")
    first = await send(client, telnyx_signer, body)
    second = await send(client, telnyx_signer, body)
    assert first.status == second.status == 200
    assert (await second.json())["status"] == "duplicate"
    await asyncio.sleep(0.2)
    assert [r.path.rsplit("/", 1)[-1] for r in fake.requests] == ["answer"]


async def test_a_replay_after_a_restart_is_still_a_duplicate(daemon, telnyx_signer,  # type: ignore[no-untyped-def]
                                                             fake_telnyx, tmp_path) -> None:
    """A signed event replayed within its 300 s window after the daemon restarted on its
    SQLite store is not processed again (the call is not answered twice)."""
    fake, base = fake_telnyx
    store = {"url": f"sqlite:///{tmp_path / 'calls.db'}"}
    body = telnyx_event("call.initiated", initiated(), event_id="evt-before-restart")
    headers = telnyx_signer.sign(body)
    first = await start(daemon, telnyx_signer, base, store=store)
    assert (await (await first.post(HOOK, data=body, headers=headers)).json())["status"] == "ok"
    await wait_for(lambda: fake.applied)
    await first.close()
    again = await start(daemon, telnyx_signer, base, store=store)
    resp = await again.post(HOOK, data=body, headers=headers)
    assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
    await asyncio.sleep(0.2)
    assert fake.applied == [(CCID, "answer")]


async def test_answer_is_retried_on_5xx_with_the_same_command_id(daemon, telnyx_signer,  # type: ignore[no-untyped-def]
                                                                 fake_telnyx) -> None:
    fake, base = fake_telnyx
    fake.fail_next = [503, 500]
    client = await start(daemon, telnyx_signer, base)
    await send(client, telnyx_signer, telnyx_event("call.initiated", initiated()))
    await wait_for(lambda: fake.applied, timeout=5)
    assert len(fake.requests) == 3
    assert len({r.json["command_id"] for r in fake.requests}) == 1
    assert fake.applied == [(CCID, "answer")]


async def test_4xx_is_not_retried_and_call_marked_failed(daemon, telnyx_signer, fake_telnyx  # type: ignore[no-untyped-def]
                                                         ) -> None:
    fake, base = fake_telnyx
    fake.fail_next = [422]
    client = await start(daemon, telnyx_signer, base)
    await send(client, telnyx_signer, telnyx_event("call.initiated", initiated()))
    await wait_for(lambda: gateway_of(client).registry.get(CCID).outcome == "failed")
    # The answer is not retried; the call, left ringing, is hung up rather than forgotten.
    await wait_for(lambda: len(fake.requests) == 2)
    assert [r.path.rsplit("/", 1)[-1] for r in fake.requests] == ["answer", "hangup"]
    gw = gateway_of(client)
    assert gw.metrics.calls_total.labels("inbound", "failed")._value.get() == 1
    assert gw.metrics.backend_errors.labels("carrier", "telnyx")._value.get() == 1


async def test_signature_failures_are_403(daemon, telnyx_signer, fake_telnyx) -> None:  # type: ignore[no-untyped-def]
    from tests.support.signing import TelnyxSigner
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    body = telnyx_event("call.initiated", initiated())
    now = int(time.time())
    cases = [
        TelnyxSigner().sign(body),                                  # someone else's key
        telnyx_signer.sign(body, now - 301),                        # too old
        telnyx_signer.sign(body, now + 301),                        # too far ahead
        {"Content-Type": "application/json"},                       # unsigned
    ]
    for headers in cases:
        resp = await client.post(HOOK, data=body, headers=headers)
        assert resp.status == 403, headers
    headers = telnyx_signer.sign(body)
    resp = await client.post(HOOK, data=body.replace(b"incoming", b"outgoing"), headers=headers)
    assert resp.status == 403
    assert gateway_of(client).registry.get(CCID) is None
    assert gateway_of(client).metrics.signature_failures.labels("telnyx")._value.get() == 5


async def test_several_signatures_one_valid(daemon, telnyx_signer, fake_telnyx) -> None:  # type: ignore[no-untyped-def]
    from tests.support.signing import TelnyxSigner
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    body = telnyx_event("call.answered", {"call_control_id": CCID})
    good = telnyx_signer.sign(body)
    other = TelnyxSigner().sign(body, int(good["telnyx-timestamp"]))
    good["telnyx-signature-ed25519"] = (other["telnyx-signature-ed25519"] + ","
                                        + good["telnyx-signature-ed25519"])
    assert (await client.post(HOOK, data=body, headers=good)).status == 200


async def test_malformed_events_are_400_with_reason(daemon, telnyx_signer, fake_telnyx  # type: ignore[no-untyped-def]
                                                    ) -> None:
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    cases = {
        b"not json": "body is not valid JSON",
        b"[]": "data: expected an object",
        b'{"data": {"event_type": 5, "id": "x", "payload": {}}}': "data.event_type",
        b'{"data": {"event_type": "call.hangup", "payload": {}}}': "data.id",
        b'{"data": {"event_type": "call.hangup", "id": "x", "payload": []}}': "data.payload",
        b'{"data": {"event_type": "call.hangup", "id": "y", "payload": {}}}':
            "call_control_id",
    }
    for body, reason in cases.items():
        resp = await send(client, telnyx_signer, body)
        assert resp.status == 400, body
        assert reason in (await resp.json())["error"]


async def test_body_over_limit_is_413(daemon, telnyx_signer, fake_telnyx) -> None:  # type: ignore[no-untyped-def]
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base, server={"max_body_bytes": 4096})
    payload = {**initiated(), "sip_headers": [{"name": "X", "value": "v" * 5000}]}
    resp = await send(client, telnyx_signer, telnyx_event("call.initiated", payload))
    assert resp.status == 413


async def test_call_lifecycle_events_are_recorded(daemon, telnyx_signer, fake_telnyx  # type: ignore[no-untyped-def]
                                                  ) -> None:
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    events = [
        ("call.initiated", initiated()),
        ("call.answered", {"call_control_id": CCID}),
        ("call.dtmf.received", {"call_control_id": CCID, "digit": "5"}),
        ("call.machine.detection.ended", {"call_control_id": CCID, "result": "human"}),
        ("call.recording.saved", {"call_control_id": CCID, "channels": "dual",
                                  "recording_urls": {"wav": "https://r.example/1.wav"}}),
        ("call.hangup", {"call_control_id": CCID, "hangup_cause": "normal_clearing",
                         "hangup_source": "caller"}),
        ("call.cost", {"call_control_id": CCID, "total_cost": "0.0120"}),
    ]
    for i, (kind, payload) in enumerate(events):
        resp = await send(client, telnyx_signer, telnyx_event(kind, payload, f"e{i}"))
        assert resp.status == 200
    rec = gateway_of(client).registry.get(CCID)
    assert rec.status == "completed" and rec.outcome == "completed"
    assert [e["type"] for e in rec.events] == ["dtmf", "amd", "amd_verdict", "recording",
                                               "cost"]
    assert rec.events[2]["verdict"] == "human"
    assert rec.events[1]["result"] == "human"
    assert rec.events[3]["recording_urls"]["wav"] == "https://r.example/1.wav"
    calls = gateway_of(client).metrics.calls_total.labels("inbound", "completed")
    assert calls._value.get() == 1


async def test_unanswered_outbound_outcomes(daemon, telnyx_signer, fake_telnyx) -> None:  # type: ignore[no-untyped-def]
    _, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base)
    for i, cause in enumerate(("timeout", "user_busy", "call_rejected", "originator_cancel")):
        ccid = f"v3:out-{i}"
        await send(client, telnyx_signer,
                   telnyx_event("call.initiated", initiated(ccid, "outgoing"), f"i{i}"))
        await send(client, telnyx_signer, telnyx_event(
            "call.hangup", {"call_control_id": ccid, "hangup_cause": cause}, f"h{i}"))
    reg = gateway_of(client).registry
    assert [reg.get(f"v3:out-{i}").outcome for i in range(4)] == [
        "no_answer", "busy", "rejected", "canceled"]


async def test_capacity_rejects_with_user_busy(daemon, telnyx_signer, fake_telnyx) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_telnyx
    client = await start(daemon, telnyx_signer, base, server={"max_calls": 1})
    await send(client, telnyx_signer, telnyx_event("call.initiated", initiated("v3:a"), "a"))
    await send(client, telnyx_signer, telnyx_event("call.initiated", initiated("v3:b"), "b"))
    await wait_for(lambda: len(fake.requests) == 2)
    actions = {r.path: r.json for r in fake.requests}
    assert "answer" in [p.rsplit("/", 1)[-1] for p in actions if "v3:a" in p]
    assert actions["/v2/calls/v3:b/actions/reject"]["cause"] == "USER_BUSY"


async def test_unsigned_mode_accepts_events_when_explicitly_disabled(daemon, fake_telnyx  # type: ignore[no-untyped-def]
                                                                     ) -> None:
    _, base = fake_telnyx
    raw = telnyx_raw("", carrier={"require_signature": False, "public_key": "",
                                  "api_base_url": base})
    client = await daemon(config(raw))
    body = telnyx_event("call.answered", {"call_control_id": CCID})
    resp = await client.post(HOOK, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200
