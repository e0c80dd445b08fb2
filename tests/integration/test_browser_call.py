"""``/v1/browser-call``: the console's test call, spoken by a Python client in the page's
place — authentication in the first message, the same session as a phone call (greeting,
turn, the agent's hang-up closing the socket), a record labelled ``browser`` at no carrier
cost, and an admin hang-up through the browser's own control."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from patterd.audio.codecs import get_codec
from patterd.carriers.browser import control as browser_control
from patterd.carriers.browser import route as browser_route
from patterd.simulate import synthesize
from tests.conftest import config, gateway_of, twilio_raw

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = {
    "agent": {"first_message": "Hi there."},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["goodbye"], "reply": "Goodbye!", "action": {"hangup": True}}],
        "fallback": "Sorry?"},
}
PCMU = get_codec("PCMU")
FRAME = 160


def cfg(**extra: Any) -> Any:
    return config(twilio_raw(admin={"token": TOKEN}, **AGENT, **extra))


class Page:
    """The console page's side of the socket: sends audio in real time, plays (counts) what
    it receives and echoes marks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, answers: bool = True) -> None:
        self.ws = ws
        self.answers = answers
        self.events: list[dict[str, Any]] = []
        self.agent_bytes = 0
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.events.append(frame)
            if frame["event"] == "media":
                self.agent_bytes += len(base64.b64decode(frame["media"]["payload"]))
            elif frame["event"] == "mark":
                await self.ws.send_str(json.dumps(frame))
            elif frame["event"] in ("hangup", "transfer") and self.answers:   # as the page does
                await self.ws.send_str(json.dumps({"event": "stop"}))

    async def speak(self, pcm: bytes, silence: float) -> None:
        audio = PCMU.encode(pcm) + PCMU.encode(b"\0\0" * int(8000 * silence))
        for i in range(0, len(audio), FRAME):
            if self.ws.closed:
                return
            payload = base64.b64encode(audio[i:i + FRAME]).decode()
            await self.ws.send_str(json.dumps({"event": "media", "media": {"payload": payload}}))
            await asyncio.sleep(0.02)


async def connect(client: Any, token: str = TOKEN) -> tuple[aiohttp.ClientWebSocketResponse,
                                                             dict[str, Any]]:
    ws = await client.ws_connect("/v1/browser-call")
    await ws.send_str(json.dumps({"event": "auth", "token": token}))
    msg = await ws.receive(timeout=5)
    return ws, (json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {})


async def test_a_wrong_or_late_token_closes_the_socket(daemon: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = await daemon(cfg())
    ws, _ = await connect(client, "wrong-token-0123456789abcd")
    assert ws.closed and ws.close_code == 4401
    ws = await client.ws_connect("/v1/browser-call")
    await ws.send_bytes(TOKEN.encode())          # not the auth message
    await ws.receive(timeout=5)
    assert ws.close_code == 4401
    monkeypatch.setattr(browser_route, "AUTH_TIMEOUT", 0.2)
    ws = await client.ws_connect("/v1/browser-call")
    await ws.receive(timeout=5)
    assert ws.close_code == 4408
    assert not gateway_of(client).registry.records()     # no call was started


async def test_a_browser_call_runs_the_phone_session_and_costs_no_carrier(daemon: Any) -> None:
    client = await daemon(cfg())
    gw = gateway_of(client)
    ws, hello = await connect(client)
    assert hello["event"] == "connected" and hello["call_id"].startswith("BR")
    call_id = hello["call_id"]
    page = Page(ws)
    await ws.send_str(json.dumps({"event": "start",
                                  "start": {"encoding": "PCMU", "sampleRate": 8000}}))
    await page.speak(b"", 1.5)                   # hear the greeting out
    await page.speak(await synthesize("goodbye"), 2.0)
    await asyncio.wait_for(page.reader, 10)      # the agent hangs up: the socket closes
    assert ws.close_code == 1000
    kinds = [e["event"] for e in page.events]
    assert kinds[-1] == "hangup" and "media" in kinds and "mark" in kinds
    assert page.agent_bytes > 8000 * 0.5         # the greeting and the goodbye were sent
    for _ in range(100):
        rec = gw.registry.get(call_id)
        if rec is not None and rec.ended_at is not None and rec.status == "completed":
            break
        await asyncio.sleep(0.05)
    record = await (await client.get(f"/v1/calls/{call_id}", headers=AUTH)).json()
    assert record["carrier"] == "browser" and record["direction"] == "inbound"
    assert record["outcome"] == "completed" and record["status"] == "completed", json.dumps(record)
    assert [(ln["role"], ln["text"]) for ln in record["transcript"]] == [
        ("agent", "Hi there."), ("caller", "goodbye"), ("agent", "Goodbye!")]
    assert record["turns"] and record["turns"][0]["response"] > 0
    assert record["cost"]["carrier"] == 0 and record["cost"]["billed_seconds"] > 0
    assert any(e["type"] == "hangup" and e["by"] == "agent" for e in record["events"])
    calls = gw.metrics.calls_total.labels("inbound", "completed")._value.get()
    assert calls == 1


async def test_an_admin_hang_up_goes_through_the_browser_control(daemon: Any) -> None:
    client = await daemon(cfg())
    ws, hello = await connect(client)
    page = Page(ws)
    await ws.send_str(json.dumps({"event": "start", "start": {}}))
    speaking = asyncio.ensure_future(page.speak(b"", 8.0))
    for _ in range(100):
        if page.agent_bytes:
            break
        await asyncio.sleep(0.05)
    resp = await client.post(f"/v1/calls/{hello['call_id']}/hangup", headers=AUTH)
    assert resp.status == 200, await resp.text()
    await asyncio.wait_for(page.reader, 5)
    speaking.cancel()
    assert page.events[-1] == {"event": "hangup"}
    rec = gateway_of(client).registry.get(hello["call_id"])
    assert rec is not None and rec.outcome == "completed"
    assert any(e["type"] == "hangup" and e["by"] == "admin" and e["ok"] for e in rec.events)


async def test_no_browser_calls_while_draining(daemon: Any) -> None:
    client = await daemon(cfg())
    gateway_of(client).draining = True
    ws, _ = await connect(client)
    assert ws.close_code == 4503


async def test_a_page_that_does_not_answer_a_hang_up_is_closed_after_a_grace(
        daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser_control, "STOP_GRACE", 0.3)
    client = await daemon(cfg())
    ws, hello = await connect(client)
    page = Page(ws, answers=False)
    await ws.send_str(json.dumps({"event": "start", "start": {}}))
    speaking = asyncio.ensure_future(page.speak(b"", 8.0))
    while not page.agent_bytes:
        await asyncio.sleep(0.05)
    assert (await client.post(f"/v1/calls/{hello['call_id']}/hangup", headers=AUTH)).status \
        == 200
    await asyncio.wait_for(page.reader, 3)
    speaking.cancel()
    assert ws.close_code == 1000
    for _ in range(50):
        rec = gateway_of(client).registry.get(hello["call_id"])
        if rec is not None and rec.ended_at is not None:
            break
        await asyncio.sleep(0.05)
    assert rec is not None and rec.outcome == "completed"
