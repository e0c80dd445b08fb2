"""Ended calls leave memory once stored (issue 11), and a late callback for one merges into
the stored record: the call stays over, with its outcome, transcript and cost — never a new
live call (live count, ``max_calls``, ``/readyz``, ``/v1/live``). A real SQLite store; the
registry's grace is cut to nothing once the call is over, so that it is evicted at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from patterd.app import build_app
from patterd.gateway import Gateway
from patterd.patter import carrier_for
from patterd.simulate import Dtmf, WaitForAgent, simulate_call
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.net import free_port
from tests.support.signing import PUBLIC_URL, TWILIO_SID, telnyx_event, twilio_form
from tests.support.stub_backends import stub_backends

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS = "/webhooks/twilio/status"


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def evicted(gw: Gateway, call_id: str) -> None:
    """Let the ended call go: no grace left, stored, swept (then the grace is back)."""
    grace, gw.registry.evict_after = gw.registry.evict_after, 0.0
    assert await gw.store_writer.flush(5)

    def gone() -> bool:
        gw.registry.live_count()          # (its sweep runs at most once a second)
        return gw.registry.get(call_id) is None

    await until(gone)
    assert gw.registry.evicted(call_id) is not None
    gw.registry.evict_after = grace


async def stored(client: TestClient, call_id: str) -> dict[str, Any]:
    """The call as the admin API gives it (from memory or the store; ``updated_at`` is the
    store's alone)."""
    resp = await client.get(f"/v1/calls/{call_id}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    doc.pop("updated_at", None)
    return doc


async def started(cfg: Any) -> TestClient:
    """The daemon app (stub speech) serving on 127.0.0.1."""
    app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def nothing_live(client: TestClient) -> None:
    gw = gateway_of(client)
    assert gw.registry.live_count() == 0
    assert (await (await client.get("/v1/live", headers=AUTH)).json())["calls"] == []
    assert (await client.get("/readyz")).status == 200


async def test_a_late_twilio_status_callback_merges_into_the_stored_record(
        tmp_path: Path) -> None:
    raw = twilio_raw(admin={"token": TOKEN}, store={"url": f"sqlite:///{tmp_path}/calls.db"},
                     pricing={"carrier": {"twilio": {"inbound_per_minute": 0.01}}},
                     llm={"provider": "rules", "rules": [
                         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    client = await started(cfg)
    try:
        gw = gateway_of(client)
        url = str(client.make_url("")).rstrip("/")
        result = await simulate_call(cfg, url, [WaitForAgent(), Dtmf("9"),
                                                WaitForAgent(required=False)], timeout=30)
        sid = result.call_id
        await until(lambda: not gw.sessions)
        before = await stored(client, sid)
        assert before["outcome"] == "completed" and before["ended_at"] is not None
        assert [ln["role"] for ln in before["transcript"]] == ["agent", "caller", "agent"]
        assert before["cost"]["carrier"] == 0.01
        counted = gw.metrics.calls_total.labels("inbound", "completed")._value.get()
        await evicted(gw, sid)
        assert await stored(client, sid) == before   # read from the store now

        # Twilio's own status callback, late (and a later one than any seen).
        params = {"CallSid": sid, "AccountSid": TWILIO_SID, "CallStatus": "completed",
                  "SequenceNumber": "9", "CallDuration": "12", "Direction": "inbound",
                  "From": "+15551112222", "To": "+15550001234", "ApiVersion": "2010-04-01"}
        body, headers = twilio_form(PUBLIC_URL + STATUS, params)
        assert (await client.post(STATUS, data=body, headers=headers)).status == 204
        await nothing_live(client)
        rec = gw.registry.get(sid)
        assert rec is not None and not rec.live and not rec.stub   # read back, still over
        assert await gw.store_writer.flush(5)
        after = await stored(client, sid)
        assert after["outcome"] == "completed" and after["status"] == "completed"
        assert after["ended_at"] == before["ended_at"]
        assert after["transcript"] == before["transcript"] and after["dtmf"] == "9"
        assert after["cost"] == before["cost"] and after["events"] == before["events"]
        late = [h for h in after["status_history"] if h.get("sequence") == 9]
        assert len(late) == 1 and late[0]["duration"] == 12
        assert after["status_history"][:-1] == before["status_history"]
        # One writer's part, whole: the late callback did not start a record of its own.
        parts = await gw.store_writer.store.call_parts(sid)
        assert [name for name, _ in parts] == [gw.store_writer.store.writer]
        assert gw.metrics.calls_total.labels("inbound", "completed")._value.get() == counted
        await evicted(gw, sid)                          # and it leaves memory again
        # Steering an evicted call: it has ended (as when it was in memory).
        resp = await client.post(f"/v1/calls/{sid}/hangup", headers=AUTH)
        assert resp.status == 409 and "ended" in (await resp.json())["error"]
        listed = await (await client.get("/v1/calls", headers=AUTH)).json()
        assert [c["call_id"] for c in listed["calls"]] == [sid]
    finally:
        await client.close()


async def test_late_telnyx_hangup_and_cost_merge_into_the_stored_record(
        tmp_path: Path, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    raw = telnyx_raw(telnyx_signer.public_key_b64, admin={"token": TOKEN},
                     store={"url": f"sqlite:///{tmp_path}/calls.db"})
    cfg = config(raw)
    client = await started(cfg)
    try:
        gw = gateway_of(client)
        call_id, leg = "v3:late-call", "leg-late-1"
        rec = gw.registry.ensure(call_id, "telnyx", direction="outbound",
                                 from_number="+15550001234", to_number="+15557654321",
                                 leg_id=leg)
        rec.transcript.append({"role": "agent", "text": "Leaving a message.", "at": time.time()})
        rec.media_seconds = 30
        gw.price_call(rec)
        assert gw.finish_call(call_id, "telnyx", "voicemail")
        estimate = dict(rec.cost)
        assert estimate["carrier_source"] == "estimate"
        await evicted(gw, call_id)

        async def post(event: str, payload: dict[str, Any], event_id: str) -> None:
            body = telnyx_event(event, payload, event_id)
            resp = await client.post("/webhooks/telnyx/voice", data=body,
                                     headers=telnyx_signer.sign(body))
            assert resp.status == 200, await resp.text()

        await post("call.hangup", {"call_control_id": call_id, "call_leg_id": leg,
                                   "hangup_cause": "normal_clearing",
                                   "hangup_source": "callee"}, "evt-hangup")
        await nothing_live(client)
        await post("call.cost", {"call_control_id": call_id, "total_cost": "0.0123",
                                 "billed_duration_secs": 30}, "evt-cost")
        # A recording saved later names only the leg.
        await post("call.recording.saved", {"call_leg_id": leg,
                                            "recording_urls": {"mp3": "https://x/r.mp3"}},
                   "evt-rec")
        await nothing_live(client)
        assert await gw.store_writer.flush(5)
        after = await stored(client, call_id)
        assert after["outcome"] == "voicemail" and after["status"] == "completed"
        assert [ln["text"] for ln in after["transcript"]] == ["Leaving a message."]
        assert after["cost"]["carrier"] == 0.0123 and after["cost"]["carrier_source"] == "carrier"
        assert after["cost"]["tts"] == estimate["tts"]
        kinds = [e["type"] for e in after["events"]]
        assert "cost" in kinds and "recording" in kinds
        assert any(h.get("hangup_cause") == "normal_clearing" for h in after["status_history"])
        parts = await gw.store_writer.store.call_parts(call_id)
        assert [name for name, _ in parts] == [gw.store_writer.store.writer]
    finally:
        await client.close()


async def test_with_the_store_unreadable_a_late_callback_keeps_the_call_over(
        tmp_path: Path) -> None:
    raw = twilio_raw(admin={"token": TOKEN}, store={"url": f"sqlite:///{tmp_path}/calls.db"})
    cfg = config(raw)
    client = await started(cfg)
    try:
        gw = gateway_of(client)
        sid = "CA" + "7e" * 16
        gw.registry.ensure(sid, "twilio", direction="outbound")
        gw.registry.apply_status(sid, "twilio", "completed", 3)
        gw.registry.get(sid).outcome = "no_answer"   # (say)
        gw.registry.touch(gw.registry.get(sid))
        await evicted(gw, sid)
        store = gw.store_writer.store

        async def unreadable(call_id: str) -> list[Any]:
            raise OSError("disk gone")

        store.call_parts = unreadable   # type: ignore[method-assign]
        params = {"CallSid": sid, "AccountSid": TWILIO_SID, "CallStatus": "completed",
                  "SequenceNumber": "4", "Direction": "outbound-api",
                  "ApiVersion": "2010-04-01"}
        body, headers = twilio_form(PUBLIC_URL + STATUS, params)
        assert (await client.post(STATUS, data=body, headers=headers)).status == 204
        await nothing_live(client)
        rec = gw.registry.get(sid)
        assert rec is not None and rec.stub and rec.outcome == "no_answer"
        assert await gw.store_writer.flush(5)
        assert (await stored(client, sid))["outcome"] == "no_answer"   # left as it was
    finally:
        await client.close()
