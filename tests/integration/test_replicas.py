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


async def owned_by(node: Any, call_id: str, replica: str) -> None:
    for _ in range(500):
        if await node.owner_of(call_id, "twilio") == replica:
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
        # The shared record says so too, merged with what A wrote about the call.
        await gb.store_writer.flush(5)
        await ga.store_writer.flush(5)
        resp = await b.get(f"/v1/calls/{call_id}", headers=AUTH)
        stored = await resp.json()
        assert stored["outcome"] in ("replica_lost",), stored["outcome"]
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
