"""The daemon on the machine's PostgreSQL, end to end: simulated calls on both carriers, their
records read back through the admin API, then again after the apps restarted on the same
database (nothing left in memory).

Isolation as in tests/integration/test_store_postgres.py (whose fixtures this reuses): a
database of this module's own, a schema per test, both dropped afterwards; a throwaway server
when none answers at ``PATTERD_TEST_PG_URL`` / 127.0.0.1:5432.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from patterd.app import build_app
from patterd.carriers.twilio import price
from patterd.config import Config
from patterd.patter import carrier_for
from patterd.simulate import (Callee, Dtmf, TelnyxSigner, WaitForAgent, say, simulate_call,
                              simulate_outbound)
from tests.conftest import config, telnyx_raw, twilio_raw
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.stub_backends import stub_backends
from tests.support.net import free_port

pytestmark = pytest.mark.slow

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED = bytes(range(32))
AGENT = {
    "agent": {"first_message": "Hello, how can I help?"},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["opening hours", "hours"], "reply": "We are open nine to five."},
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry?"},
}
SCRIPT_TEXT = "what are your opening hours"


async def start(cfg: Config) -> TestClient:
    app = build_app(cfg, carrier_for(cfg.carrier),
                    backends=stub_backends(cfg, stt_text=SCRIPT_TEXT))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def url_of(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def get(client: TestClient, path: str) -> Any:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 200, (path, resp.status, await resp.text())
    return await resp.json()


async def script() -> list[Any]:
    return [WaitForAgent(), await say(SCRIPT_TEXT), WaitForAgent(), Dtmf("9"),
            WaitForAgent(required=False)]


def check_answered(rec: dict[str, Any], carrier: str) -> None:
    """A call answered by the agent, one spoken turn, hung up by key: all of it stored."""
    assert rec["carrier"] == carrier and rec["direction"] == "inbound"
    assert rec["status"] == "completed" and rec["outcome"] == "completed"
    assert rec["ended_at"] is not None and rec["ended_at"] >= rec["created_at"]
    lines = [(ln["role"], ln["text"], ln.get("dtmf", "")) for ln in rec["transcript"]]
    assert lines == [("agent", "Hello, how can I help?", ""), ("caller", SCRIPT_TEXT, ""),
                     ("agent", "We are open nine to five.", ""), ("caller", "", "9"),
                     ("agent", "Goodbye!", "")]
    assert rec["dtmf"] == "9"
    assert "completed" in [h["status"] for h in rec["status_history"]]
    assert any(e["type"] == "hangup" for e in rec["events"])
    # each turn's waterfall: the spoken one went through endpointing and STT, the key did not
    spoken, keyed = rec["turns"]
    assert {"response", "endpointing", "stt", "llm_first_token", "tts_first_byte"} <= set(spoken)
    assert "response" in keyed and "stt" not in keyed and "endpointing" not in keyed
    cost = rec["cost"]
    assert cost["currency"] == "USD" and cost["carrier_source"] == "estimate"
    assert cost["billed_seconds"] == 60 and cost["carrier"] > 0
    assert cost["total"] == pytest.approx(sum(cost[k] for k in ("carrier", "stt", "llm",
                                                                "tts")))


async def test_calls_on_both_carriers_stored_in_postgresql_and_read_after_a_restart(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(price, "SCHEDULE", (3600.0,))   # no Twilio price fetch here
    signer = TelnyxSigner(SEED)
    traw = twilio_raw(admin={"token": TOKEN}, store={"url": pg_url}, **AGENT)
    traw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    xraw = telnyx_raw(signer.public_key_b64, admin={"token": TOKEN}, store={"url": pg_url},
                      **AGENT)
    xraw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    tcfg, xcfg = config(traw), config(xraw)

    # Two daemons (one per carrier) sharing the database, like replicas would.
    twilio_app, telnyx_app = await start(tcfg), await start(xcfg)
    try:
        tw = await simulate_call(tcfg, url_of(twilio_app), await script(), timeout=60)
        tx = await simulate_call(xcfg, url_of(telnyx_app), await script(), signer=signer,
                                 timeout=60)
        busy = await simulate_outbound(tcfg, url_of(twilio_app), "+15557654321",
                                       Callee("busy"), admin_token=TOKEN)
        for r in (tw, tx):
            assert r.outcome == "hung_up_by_agent", (r.outcome, r.errors)
        assert busy.ok, (busy.outcome, busy.errors)
        # The list comes from the database: either daemon sees all three calls.
        for app in (twilio_app, telnyx_app):
            listed = await get(app, "/v1/calls")
            assert [c["call_id"] for c in listed["calls"]] == [busy.call_id, tx.call_id,
                                                               tw.call_id]
        before = {cid: await get(twilio_app if cid != tx.call_id else telnyx_app,
                                 f"/v1/calls/{cid}")
                  for cid in (tw.call_id, tx.call_id, busy.call_id)}
    finally:
        await twilio_app.close()     # shutdown flushes the writers
        await telnyx_app.close()

    # The rows as PostgreSQL holds them (jsonb columns, this test's schema).
    schema = pg_url.partition("search_path=")[2]
    conn = await asyncpg.connect(pg_url.partition("?")[0], server_settings={"search_path": schema})
    try:
        rows = {r["call_id"]: r for r in await conn.fetch(
            "SELECT call_id, carrier, outcome, jsonb_array_length(transcript) AS lines, "
            "cost->>'carrier_source' AS source FROM calls")}
    finally:
        await conn.close()
    assert {k: (r["carrier"], r["outcome"]) for k, r in rows.items()} == {
        tw.call_id: ("twilio", "completed"), tx.call_id: ("telnyx", "completed"),
        busy.call_id: ("twilio", "busy")}
    assert rows[tw.call_id]["lines"] == rows[tx.call_id]["lines"] == 5
    assert rows[tw.call_id]["source"] == rows[tx.call_id]["source"] == "estimate"

    # A new process on the same database: everything is read from PostgreSQL.
    again = await start(tcfg)
    try:
        listed = await get(again, "/v1/calls?limit=2")
        assert [c["call_id"] for c in listed["calls"]] == [busy.call_id, tx.call_id]
        rest = await get(again, f"/v1/calls?limit=2&cursor={listed['next_cursor']}")
        assert [c["call_id"] for c in rest["calls"]] == [tw.call_id] and "next_cursor" not in rest
        completed = await get(again, "/v1/calls?status=completed")
        assert [c["call_id"] for c in completed["calls"]] == [tx.call_id, tw.call_id]
        for cid, carrier in ((tw.call_id, "twilio"), (tx.call_id, "telnyx")):
            rec = await get(again, f"/v1/calls/{cid}")
            check_answered(rec, carrier)
            assert {k: v for k, v in rec.items() if k != "updated_at"} == \
                {k: v for k, v in before[cid].items() if k != "updated_at"}
        rec = await get(again, f"/v1/calls/{busy.call_id}")
        assert rec["direction"] == "outbound" and rec["outcome"] == "busy"
        assert rec["to"] == "+15557654321" and rec["transcript"] == []
        assert [h["status"] for h in rec["status_history"]][-1] == "busy"
        assert rec["status_history"][0]["status"] == "queued"
        assert any(e["type"] == "dial" for e in rec["events"])
        assert (await again.get("/v1/calls/CAnope", headers=AUTH)).status == 404
    finally:
        await again.close()
