"""Call records outlive the process: written to the store as calls change, read back by the
admin API after a restart."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from patterd.app import build_app
from patterd.patter import carrier_for
from patterd.simulate import Dtmf, WaitForAgent, simulate_call
from tests.conftest import config, twilio_raw
from tests.support.stub_backends import stub_backends
from tests.support.net import free_port

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_records_are_stored_and_read_after_a_restart(tmp_path: Path) -> None:
    raw = twilio_raw(admin={"token": TOKEN}, store={"url": f"sqlite:///{tmp_path}/calls.db"},
                     llm={"provider": "rules", "rules": [
                         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)

    async def daemon() -> TestClient:
        app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        return client

    first = await daemon()
    url = str(first.make_url("")).rstrip("/")
    result = await simulate_call(cfg, url, [WaitForAgent(), Dtmf("9"),
                                            WaitForAgent(required=False)], timeout=30)
    assert result.outcome == "hung_up_by_agent"
    listed = await (await first.get("/v1/calls", headers=AUTH)).json()
    assert [c["call_id"] for c in listed["calls"]] == [result.call_id]
    await first.close()                         # shutdown flushes the writer

    second = await daemon()                     # a new process: nothing in memory
    try:
        resp = await second.get(f"/v1/calls/{result.call_id}", headers=AUTH)
        assert resp.status == 200
        rec = await resp.json()
        assert rec["outcome"] == "completed" and rec["direction"] == "inbound"
        assert [ln["role"] for ln in rec["transcript"]] == ["agent", "caller", "agent"]
        assert rec["dtmf"] == "9"
        assert any(e["type"] == "hangup" for e in rec["events"])
        listed = await (await second.get("/v1/calls?status=completed", headers=AUTH)).json()
        assert [c["call_id"] for c in listed["calls"]] == [result.call_id]
        assert (await second.get("/v1/calls/CAnope", headers=AUTH)).status == 404
    finally:
        await second.close()


async def test_call_cost_breakdown_metric_and_carrier_price(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    raw = twilio_raw(admin={"token": TOKEN},
                     pricing={"carrier": {"twilio": {"inbound_per_minute": 0.01}},
                              "tts": {"espeak": {"per_thousand_chars": 1.0}},
                              "stt": {"pocketsphinx": {"per_minute": 0.6}}},
                     llm={"provider": "rules", "rules": [
                         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        url = str(client.make_url("")).rstrip("/")
        result = await simulate_call(cfg, url, [WaitForAgent(), Dtmf("9"),
                                                WaitForAgent(required=False)], timeout=30)
        rec = await (await client.get(f"/v1/calls/{result.call_id}", headers=AUTH)).json()
        cost = rec["cost"]
        # A call under a minute is billed as one minute; "Thanks for calling." + "Goodbye!"
        # were synthesised once each (27 characters); no caller speech reached the STT.
        assert cost["carrier"] == 0.01 and cost["billed_seconds"] == 60
        assert cost["tts"] == round(27 / 1000, 6) and cost["stt"] == 0 and cost["llm"] == 0
        assert cost["total"] == round(0.01 + 0.027, 6)
        text = await (await client.get("/metrics")).text()
        values = {s.labels["component"]: s.value for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "patterd_call_cost_usd_total"}
        assert values["carrier"] == 0.01 and values["tts"] == 0.027
    finally:
        await client.close()


async def test_telnyx_reported_cost_replaces_the_estimate(daemon, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import gateway_of, telnyx_raw
    from tests.support.signing import telnyx_event
    client = await daemon(config(telnyx_raw(telnyx_signer.public_key_b64)))
    gw = gateway_of(client)
    rec = gw.registry.ensure("v3:c1", "telnyx", direction="outbound")
    rec.media_seconds = 30
    gw.price_call(rec)
    assert rec.cost["carrier"] == 0.007 and rec.cost["carrier_source"] == "estimate"
    body = telnyx_event("call.cost", {"call_control_id": "v3:c1", "total_cost": "0.0123",
                                      "billed_duration_secs": 30}, "cost-1")
    assert (await client.post("/webhooks/telnyx/voice", data=body,
                              headers=telnyx_signer.sign(body))).status == 200
    assert rec.cost["carrier"] == 0.0123 and rec.cost["carrier_source"] == "carrier"
    assert rec.cost["total"] == 0.0123
    assert gw.metrics.call_cost.labels("carrier")._value.get() == 0.0123
