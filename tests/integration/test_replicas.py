"""Two replicas on one PostgreSQL database: a steering request that lands on the replica that
does not hold the call's media socket is applied once by the one that does; a replica that
dies leaves its calls to the survivor, which hangs them up through the carrier."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from patterd.carriers.twilio import price
from patterd.gateway import GATEWAY
from patterd.simulate import Wait, WaitForAgent, simulate_call
from tests.conftest import config, twilio_raw
from tests.integration.test_postgres_end_to_end import (AGENT, AUTH, TOKEN, free_port, start,
                                                        url_of)
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401

pytestmark = pytest.mark.slow


def gw_of(client: TestClient) -> Any:
    return client.server.app[GATEWAY]


async def until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def owned_by(node: Any, call_id: str, replica: str, carrier: str = "twilio") -> None:
    for _ in range(500):
        if await node.owner_of(call_id, carrier) == replica:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the call was never claimed")


@pytest.fixture
def replica_config(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    monkeypatch.setattr(price, "SCHEDULE", (3600.0,))   # no Twilio price fetch here
    raw = twilio_raw(admin={"token": TOKEN}, store={"url": pg_url}, **AGENT)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


async def test_admin_hangup_on_the_other_replica_is_applied_by_the_holder(
        replica_config: Any) -> None:
    cfg = replica_config
    a, b = await start(cfg), await start(cfg)
    try:
        ga, gb = gw_of(a), gw_of(b)
        assert ga.cluster is not None and gb.cluster is not None
        call = asyncio.create_task(simulate_call(cfg, url_of(a), [WaitForAgent(), Wait(20)],
                                                 timeout=60))
        await until(lambda: bool(ga.sessions))
        session = next(iter(ga.sessions))
        await owned_by(gb.cluster, session.call_id, ga.cluster.replica_id)
        began = time.monotonic()
        resp = await b.post(f"/v1/calls/{session.call_id}/hangup", headers=AUTH)
        took = time.monotonic() - began
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["action"] == "hangup"
        result = await call
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
        assert [x.action for x in result.actions].count("hangup") == 1   # applied once
        rec = ga.registry.get(session.call_id)        # the holder applied and recorded it
        assert any(e["type"] == "hangup" and e.get("by") == "admin" for e in rec.events)
        assert took < 5.0
        # A request for an unknown call is still a 404 on either replica.
        assert (await b.post("/v1/calls/CAnope/hangup", headers=AUTH)).status == 404
    finally:
        await a.close()
        await b.close()


async def test_a_dead_replicas_call_is_hung_up_by_the_survivor(replica_config: Any) -> None:
    cfg = replica_config
    a, b = await start(cfg), await start(cfg)
    try:
        ga, gb = gw_of(a), gw_of(b)
        call = asyncio.create_task(simulate_call(cfg, url_of(a), [WaitForAgent(), Wait(40)],
                                                 timeout=60))
        await until(lambda: bool(ga.sessions))
        call_id = next(iter(ga.sessions)).call_id
        await owned_by(gb.cluster, call_id, ga.cluster.replica_id)
        await ga.cluster.abort()          # replica A stops heartbeating, as if it had died
        ga.cluster = None
        died = time.monotonic()
        result = await call
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
        assert time.monotonic() - died < 20
        rec = gb.registry.get(call_id)
        assert rec is not None and rec.outcome == "replica_lost"
        assert any(e.get("reason") == "replica_lost" for e in rec.events)
        # The carrier accepted the hang-up: the survivor's own view says the call is over
        # (the carrier's final callback went to A, the replica the call came in through).
        assert rec.status == "completed" and rec.ended_at is not None
        assert any(h["status"] == "completed" and h.get("via") == "hangup"
                   for h in rec.history), rec.history
        # The shared record says so too, merged with what A wrote about the call.
        await gb.store_writer.flush(5)
        await ga.store_writer.flush(5)
        resp = await b.get(f"/v1/calls/{call_id}", headers=AUTH)
        stored = await resp.json()
        assert stored["outcome"] == "replica_lost", stored["outcome"]
        assert stored["status"] == "completed" and stored["ended_at"], stored
    finally:
        await a.close()
        await b.close()


async def test_a_dead_replicas_call_the_carrier_ended_first_is_recorded_replica_lost(
        replica_config: Any) -> None:
    """The dead replica's media socket closing ends a Twilio call, and the carrier's final
    status callback may reach the survivor before its reaper runs: the callback ends the call
    there as ``completed`` without counting it (another replica held the stream); the
    take-over then records it ``replica_lost``, counted once, here."""
    from tests.support.signing import twilio_form

    cfg = replica_config
    a, b = await start(cfg), await start(cfg)
    try:
        ga, gb = gw_of(a), gw_of(b)
        call = asyncio.create_task(simulate_call(cfg, url_of(a), [WaitForAgent(), Wait(40)],
                                                 timeout=60, status_callback=False))
        await until(lambda: bool(ga.sessions))
        call_id = next(iter(ga.sessions)).call_id
        await owned_by(gb.cluster, call_id, ga.cluster.replica_id)
        await ga.cluster.abort()          # replica A stops heartbeating, as if it had died
        ga.cluster = None
        path = "/webhooks/twilio/status"
        body, headers = twilio_form(cfg.server.public_url + path, {
            "CallSid": call_id, "CallStatus": "completed", "SequenceNumber": "3",
            "CallDuration": "4", "Direction": "inbound"})
        resp = await b.post(path, data=body, headers=headers)
        assert resp.status == 204, await resp.text()
        rec = gb.registry.get(call_id)
        assert rec is not None and rec.ended_at is not None and rec.outcome == "completed"
        assert calls_counted(b) == {}
        await until(lambda: rec.outcome == "replica_lost", timeout=20)
        assert calls_counted(b) == {("inbound", "replica_lost"): 1.0}
        assert rec.status == "completed" and [h["status"] for h in rec.history] == ["completed"]
        result = await call
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
        await gb.store_writer.flush(5)
        await ga.store_writer.flush(5)
        stored = await (await b.get(f"/v1/calls/{call_id}", headers=AUTH)).json()
        assert stored["outcome"] == "replica_lost" and stored["status"] == "completed", stored
    finally:
        await a.close()
        await b.close()


async def test_a_redelivered_callback_on_another_replica_is_processed_once(
        replica_config: Any) -> None:
    """Twilio retries a status callback and the balancer sends the retry to the other
    replica: only the first one records it (and counts the call)."""
    from tests.integration.test_twilio_webhooks import voice_params
    from tests.support.signing import call_sid, twilio_form

    cfg = replica_config
    a, b = await start(cfg), await start(cfg)
    try:
        path = "/webhooks/twilio/status"
        params = {**voice_params(7), "CallStatus": "completed", "SequenceNumber": "3",
                  "CallDuration": "12"}
        body, headers = twilio_form(cfg.server.public_url + path, params)
        for client in (a, b, a):
            resp = await client.post(path, data=body, headers=headers)
            assert resp.status in (200, 204), await resp.text()
        seen = [gw_of(c).registry.get(call_sid(7)) for c in (a, b)]
        statuses = [[h["status"] for h in rec.history] if rec else [] for rec in seen]
        assert statuses == [["completed"], []], statuses
        assert await gw_of(b).first_delivery(("twilio-status", call_sid(7), "completed", 3)) \
            is False
    finally:
        await a.close()
        await b.close()


def calls_counted(client: TestClient) -> dict[tuple[str, str], float]:
    metric = gw_of(client).metrics.calls_total
    return {(s.labels["direction"], s.labels["outcome"]): s.value
            for family in metric.collect() for s in family.samples
            if s.name.endswith("_total") and s.value}


async def test_a_status_callback_on_the_other_replica_does_not_count_or_price_twice(
        replica_config: Any) -> None:
    """Media on A, Twilio's final status callback on B: the call is counted once in the
    cluster (by A, with its own outcome), and its carrier cost is not estimated twice."""
    from tests.support.signing import twilio_form

    cfg = replica_config
    a, b = await start(cfg), await start(cfg)
    try:
        result = await simulate_call(cfg, url_of(a), [WaitForAgent(), Wait(1.0)],
                                     timeout=60, status_callback=False)
        assert result.ok, (result.outcome, result.errors)
        sid = result.call_id
        ga, gb = gw_of(a), gw_of(b)
        await until(lambda: not ga.sessions)
        path = "/webhooks/twilio/status"
        body, headers = twilio_form(cfg.server.public_url + path, {
            "CallSid": sid, "CallStatus": "completed", "SequenceNumber": "3",
            "CallDuration": "125", "Direction": "inbound"})
        resp = await b.post(path, data=body, headers=headers)
        assert resp.status == 204, await resp.text()
        seen_by_b = gb.registry.get(sid)
        assert seen_by_b is not None and not seen_by_b.live and seen_by_b.cost is None
        counted = [calls_counted(c) for c in (a, b)]
        assert counted[1] == {} and sum(v for c in counted for v in c.values()) == 1, counted
        a_cost = ga.registry.get(sid).cost
        assert a_cost is not None
        assert await ga.store_writer.flush(5) and await gb.store_writer.flush(5)
        stored = await (await b.get(f"/v1/calls/{sid}", headers=AUTH)).json()
        # A's estimate alone (B's 125 s would have added three more billed minutes).
        assert stored["cost"]["carrier"] == a_cost["carrier"], (stored["cost"], a_cost)
        assert stored["status"] == "completed"
        assert "completed" in [h["status"] for h in stored["status_history"]]
    finally:
        await a.close()
        await b.close()


async def test_a_telnyx_hangup_on_the_other_replica_is_counted_once(
        pg_url: str, fake_telnyx: Any) -> None:  # noqa: F811
    """Telnyx: media on A, ``call.hangup`` on B (after A's stream ended): counted once."""
    from tests.conftest import telnyx_raw
    from tests.support.media_client import telnyx_stream
    from tests.support.signing import TelnyxSigner, telnyx_event

    _, base = fake_telnyx
    signer = TelnyxSigner()
    cfg = config(telnyx_raw(signer.public_key_b64, admin={"token": TOKEN},
                            store={"url": pg_url}, carrier={"api_base_url": base}, **AGENT))
    a, b = await start(cfg), await start(cfg)
    call_id = "v3:replica-hangup-1"
    try:
        async def post(client: TestClient, event_type: str, n: int, **payload: Any) -> None:
            body = telnyx_event(event_type, {"call_control_id": call_id, **payload},
                                f"evt-r{n}")
            resp = await client.post("/webhooks/telnyx/voice", data=body,
                                     headers=signer.sign(body))
            assert resp.status == 200, await resp.text()
        ga, gb = gw_of(a), gw_of(b)
        await post(a, "call.initiated", 1, direction="incoming", state="parked",
                   **{"from": "+15551112222", "to": "+15550001234"})
        await post(a, "call.answered", 2)
        stream = await telnyx_stream(a, call_id)
        await until(lambda: bool(ga.sessions))
        assert ga.cluster is not None
        await owned_by(ga.cluster, call_id, ga.cluster.replica_id, "telnyx")
        await asyncio.sleep(0.5)
        await stream.stop()
        await until(lambda: not ga.sessions)
        await post(b, "call.hangup", 3, hangup_cause="normal_clearing", hangup_source="caller")
        await until(lambda: gb.registry.get(call_id) is not None
                    and not gb.registry.get(call_id).live)
        counted = [calls_counted(c) for c in (a, b)]
        assert counted == [{("inbound", "completed"): 1.0}, {}], counted
    finally:
        await a.close()
        await b.close()

