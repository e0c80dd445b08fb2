"""``GET /v1/events`` and ``GET /v1/live``: a simulated call's life as Server-Sent Events,
read off the wire — auth, lines as they are spoken, resuming without loss, keep-alives."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from patterd.simulate import WaitForAgent, say, simulate_call
from patterd.web import events as events_route
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.net import free_port
from tests.support.sse import SseReader

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = {
    "agent": {"first_message": "Hi there."},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["goodbye"], "reply": "Goodbye!", "action": {"hangup": True}}],
        "fallback": "Sorry?"},
}


@pytest.fixture
async def steps() -> list[Any]:
    """Listen to the greeting, say goodbye (stub STT: heard as "goodbye"), hear the agent's."""
    return [WaitForAgent(), await say("goodbye"), WaitForAgent(required=False)]


def cfg() -> Any:
    raw = twilio_raw(admin={"token": TOKEN}, **AGENT)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


async def open_stream(client: Any, **headers: str) -> tuple[aiohttp.ClientResponse, SseReader]:
    resp = await client.get("/v1/events", headers={**AUTH, **headers})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    reader = SseReader(resp)
    return resp, reader


def of_call(events: list[Any], call_id: str) -> list[Any]:
    return [e for e in events if isinstance(e.data, dict) and e.data.get("call_id") == call_id]


async def test_missing_or_wrong_token_is_401_and_no_token_no_routes(daemon: Any) -> None:
    client = await daemon(cfg())
    for path in ("/v1/events", "/v1/live"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": TOKEN}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer", path
    bare = await daemon(config(twilio_raw()))
    assert (await bare.get("/v1/events", headers=AUTH)).status == 404
    resp = await client.get("/v1/events", headers={**AUTH, "Last-Event-ID": "abc"})
    assert resp.status == 400


async def test_a_call_is_told_as_it_happens(daemon: Any, steps: list[Any]) -> None:
    c = cfg()
    client = await daemon(c)
    resp, reader = await open_stream(client)
    call = asyncio.ensure_future(simulate_call(c, url_of(client), steps, timeout=30))
    seen = await reader.until(lambda e: e.name == "turn_complete"
                              and e.data.get("role") == "caller", timeout=20)
    call_id = seen[0].data["call_id"]
    # the caller's words arrive while the call is still going on
    assert not call.done()
    assert gateway_of(client).registry.get(call_id).ended_at is None  # type: ignore[union-attr]
    assert seen[-1].data["text"] == "goodbye" and seen[-1].data["index"] == 1
    seen += await reader.until(lambda e: e.name == "call_end", timeout=20)
    result = await call
    assert result.ok and result.call_id == call_id
    names = [e.name for e in of_call(seen, call_id)]
    assert names[0] == "call_start" and names[-1] == "call_end"
    lines = [e.data for e in of_call(seen, call_id) if e.name == "turn_complete"]
    assert [(ln["index"], ln["role"], ln["text"]) for ln in lines] == [
        (0, "agent", "Hi there."), (1, "caller", "goodbye"), (2, "agent", "Goodbye!")]
    start = of_call(seen, call_id)[0].data
    assert start["direction"] == "inbound" and start["carrier"] == "twilio"
    assert start["to"].endswith("1234") and "*" in start["to"]       # masked
    hangups = [e.data for e in seen if e.name == "call_event" and e.data["type"] == "hangup"]
    assert hangups and hangups[0]["by"] == "agent"
    end = of_call(seen, call_id)[-1].data
    assert end["outcome"] == "completed" and end["duration"] > 0
    assert end["cost"]["currency"] == "USD"
    assert [int(e.id) for e in seen] == sorted(int(e.id) for e in seen)
    resp.close()


async def test_resuming_with_last_event_id_loses_nothing(daemon: Any, steps: list[Any]
                                                         ) -> None:
    c = cfg()
    client = await daemon(c)
    whole_resp, whole = await open_stream(client)
    first_resp, first = await open_stream(client)
    call = asyncio.ensure_future(simulate_call(c, url_of(client), steps, timeout=30))
    before = await first.until(lambda e: e.name == "turn_complete", timeout=20)
    first_resp.close()                 # the reader drops mid-call ...
    await asyncio.sleep(0.5)           # ... and events go on meanwhile
    again_resp, again = await open_stream(client, **{"Last-Event-ID": first.last_id})
    after = await again.until(lambda e: e.name == "call_end", timeout=20)
    everything = await whole.until(lambda e: e.name == "call_end", timeout=20)
    assert (await call).ok
    assert [e.id for e in before + after] == [e.id for e in everything]
    assert [e.data for e in before + after] == [e.data for e in everything]
    again_resp.close()
    whole_resp.close()


async def test_live_snapshot_then_the_stream_from_its_cursor(daemon: Any, steps: list[Any]
                                                             ) -> None:
    c = cfg()
    client = await daemon(c)
    call = asyncio.ensure_future(simulate_call(
        c, url_of(client), [WaitForAgent(), WaitForAgent(required=False, timeout=1.5),
                            *steps[1:]], timeout=30))
    gw = gateway_of(client)
    for _ in range(200):
        live = await (await client.get("/v1/live", headers=AUTH)).json()
        # the greeting settled (its turn_complete published before the snapshot's cursor)
        if live["calls"] and live["calls"][0]["transcript"] \
                and not live["calls"][0]["transcript"][0].get("playing"):
            break
        await asyncio.sleep(0.05)
    (snap,) = live["calls"]
    assert snap["transcript"][0]["text"] == "Hi there." and snap["to"].endswith("1234")
    resp, reader = await open_stream(client, **{"Last-Event-ID": str(live["last_event_id"])})
    rest = await reader.until(lambda e: e.name == "call_end", timeout=20)
    assert (await call).ok
    texts = [e.data["text"] for e in rest if e.name == "turn_complete"]
    assert texts == ["goodbye", "Goodbye!"]       # nothing before the snapshot, nothing lost
    assert not gw.events.snapshot(gw.registry.records())["calls"]
    resp.close()


async def test_keepalives_and_a_reset_for_a_cursor_that_cannot_be_served(
        daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_route, "KEEPALIVE", 0.2)
    client = await daemon(cfg())
    resp, reader = await open_stream(client, **{"Last-Event-ID": "5"})   # another process's
    reset = await reader.next()
    assert reset.name == "reset" and int(reset.id) == reset.data["last_event_id"]
    with pytest.raises(asyncio.TimeoutError):
        await reader.next(timeout=0.7)
    assert reader.comments.count("keep-alive") >= 2
    resp.close()


async def test_streams_end_when_the_daemon_stops(daemon: Any) -> None:
    client = await daemon(cfg())
    resp, reader = await open_stream(client)
    started = asyncio.get_running_loop().time()
    await client.server.runner.shutdown()          # what cleanup runs first (on_shutdown)
    with pytest.raises(EOFError):
        await reader.next(timeout=3)
    assert asyncio.get_running_loop().time() - started < 2      # not the 15 s keep-alive
    resp.close()
