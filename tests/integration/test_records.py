"""Call records outlive the process: written to the store as calls change, read back by the
admin API after a restart."""

from __future__ import annotations

import socket
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from patterd.app import build_app
from patterd.patter import carrier_for
from patterd.simulate import Dtmf, WaitForAgent, simulate_call
from tests.conftest import config, twilio_raw
from tests.support.stub_backends import stub_backends

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
