"""No call record is ever dropped: a burst of final callbacks against a slow store is held
back at the door (a short wait, then 503 with Retry-After, /readyz 503) and every record is
stored once the carrier retries, while live calls go on untouched."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

import patterd.app
from patterd.simulate import Dtmf, Wait, WaitForAgent, make_api, simulate_call
from patterd.store import open_store
from patterd.web import backpressure
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_twilio_webhooks import metric, post, voice_params
from tests.support.signing import call_sid, telnyx_event
from tests.support.net import free_port

STATUS = "/webhooks/twilio/status"
MAX_PENDING = 40
BURST = 300
SENDERS = 40          # callbacks in flight at once, as a carrier's delivery workers would be
RULES = [{"dtmf": "1", "reply": "One."},
         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]


class SlowStore:
    """A real SQLite store whose writes take ``per_record`` seconds a record (a loaded
    database); with ``gate`` set, writes wait for it (a stalled one); a record in ``poison``
    makes a write raise a bug."""

    def __init__(self, inner: Any, per_record: float = 0.0) -> None:
        self.inner = inner
        self.per_record = per_record
        self.gate: asyncio.Event | None = None
        self.poison: set[str] = set()    # call ids whose write raises a bug

    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if any(r["call_id"] in self.poison for r in records):
            raise TypeError("a bug while encoding a record")
        await asyncio.sleep(self.per_record * len(records))
        await self.inner.upsert_calls(records, writer)

    async def upsert_call(self, record: dict[str, Any]) -> None:
        await self.upsert_calls([record])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def slow_store(monkeypatch: pytest.MonkeyPatch) -> list[SlowStore]:
    """The daemon opens its store through this (each SlowStore made is listed)."""
    made: list[SlowStore] = []

    async def opener(url: str) -> SlowStore:
        store = SlowStore(await open_store(url))
        made.append(store)
        return store

    monkeypatch.setattr(patterd.app, "open_store", opener)
    monkeypatch.setattr(backpressure, "WAIT", 0.2)
    return made


def completed(n: int) -> dict[str, str]:
    return {"CallSid": call_sid(10_000 + n), "AccountSid": "AC" + "1f" * 16,
            "CallStatus": "completed", "CallDuration": "42", "SequenceNumber": "3",
            "Direction": "outbound-api"}


async def deliver(client: TestClient, params: dict[str, str], refusals: list[float],
                  deadline: float) -> None:
    """POST until a 2xx, waiting ``Retry-After`` after each 503 (as a retrying carrier)."""
    while True:
        resp = await post(client, STATUS, params)
        if resp.status == 204:
            return
        assert resp.status == 503, (resp.status, await resp.text())
        retry_after = float(resp.headers["Retry-After"])
        assert 1 <= retry_after <= 30
        assert "retry" in (await resp.json())["error"]
        refusals.append(retry_after)
        assert time.monotonic() < deadline, "callbacks still refused at the deadline"
        await asyncio.sleep(retry_after)


async def test_a_burst_of_final_callbacks_is_all_stored_while_live_calls_go_on(
        daemon: Any, slow_store: list[SlowStore], tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    raw = twilio_raw(server={"max_calls": 10}, llm={"provider": "rules", "rules": RULES},
                     store={"url": f"sqlite:///{db}", "max_pending": MAX_PENDING})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    client = await daemon(cfg)
    gw = gateway_of(client)
    store = slow_store[0]
    url = str(client.make_url("")).rstrip("/")
    steps = [WaitForAgent(), Wait(1.0), Dtmf("1"), WaitForAgent(), Wait(2.0), Dtmf("1"),
             WaitForAgent(), Wait(1.0), Dtmf("9"), WaitForAgent(required=False)]
    api = make_api(cfg)
    await api.start()
    calls = [asyncio.create_task(simulate_call(cfg, url, steps, api=api, timeout=60))
             for _ in range(3)]
    deadline = time.monotonic() + 20
    while len(gw.sessions) < 3:
        assert time.monotonic() < deadline and not any(c.done() for c in calls), \
            "the live calls did not start"
        await asyncio.sleep(0.02)

    readiness: list[int] = []
    peak = 0
    burst_done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        async with aiohttp.ClientSession() as session:
            while not burst_done.is_set():
                peak = max(peak, gw.store_writer.pending)
                async with session.get(f"{url}/readyz") as resp:
                    readiness.append(resp.status)
                    if resp.status == 503:
                        assert "store" in (await resp.json())["down"]
                await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    refusals: list[float] = []
    # The database stalls at the start of the burst, then writes ~200 records/s: slower
    # than the callbacks come, whatever the load on this machine.
    store.gate, store.per_record = asyncio.Event(), 0.005

    async def recover() -> None:
        stalled_until = time.monotonic() + 10      # (a bound, should nothing be refused)
        while not refusals and time.monotonic() < stalled_until:
            await asyncio.sleep(0.01)
        store.gate.set()

    recovery = asyncio.create_task(recover())
    queue = list(range(BURST))
    deadline = time.monotonic() + 60

    async def sender() -> None:
        while queue:
            await deliver(client, completed(queue.pop()), refusals, deadline)

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    await recovery
    assert await gw.store_writer.flush(10)
    burst_done.set()
    await watcher
    results = await asyncio.gather(*calls)
    await api.close()

    assert refusals, "the burst never met back-pressure: the test is not testing it"
    assert 503 in readiness
    assert (await client.get("/readyz")).status == 200
    # Bounded: requests let in hold their place until answered, so only the live calls'
    # own snapshots can go past the mark.
    assert MAX_PENDING - SENDERS <= peak <= MAX_PENDING + 3, peak
    assert await metric(client, "patterd_store_backpressure_total",
                        outcome="refused") == len(refusals)
    assert await metric(client, "patterd_webhook_requests_total", carrier="twilio",
                        endpoint="status", code="503") == len(refusals)
    for result in results:                       # the live calls did not notice
        assert result.ok and result.outcome == "hung_up_by_agent", result.errors
        assert not result.warnings, result.warnings
        assert len(result.latencies) == 3
    await client.close()                         # shutdown flushes the writer
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT call_id FROM calls")}
    assert {completed(n)["CallSid"] for n in range(BURST)} <= ids
    assert {r.call_id for r in results} <= ids
    assert len(ids) == BURST + 3


async def test_a_refused_callback_is_processed_when_retried_and_live_calls_pass(
        daemon: Any, slow_store: list[SlowStore]) -> None:
    client = await daemon(config(twilio_raw(server={"max_calls": 5},
                                            store={"max_pending": 10})))
    gw = gateway_of(client)
    served = {}
    for n, ended_ago in ((50, 5.0), (51, 1200.0)):   # streams served here, ended and stored
        rec = served[n] = gw.registry.ensure(call_sid(n), "twilio")
        rec.media_seconds = 30.0
        gw.finish_call(rec.call_id, "twilio", "completed")
        rec.ended_at = time.time() - ended_ago
    assert await gw.store_writer.flush(5)
    store = slow_store[0]
    store.gate = asyncio.Event()                 # the database stalls
    assert (await post(client, "/webhooks/twilio/voice", voice_params(1))).status == 200
    for n in range(9):                           # with the live one, 10 pending: backed up
        assert not gw.store_writer.backed_up
        assert (await post(client, STATUS, completed(n))).status == 204
    assert gw.store_writer.backed_up
    ready = await client.get("/readyz")
    assert ready.status == 503 and "store" in (await ready.json())["down"]

    started = time.monotonic()
    refused = await post(client, STATUS, completed(99))
    assert refused.status == 503 and time.monotonic() - started >= 0.2   # waited, then 503
    assert gw.registry.get(completed(99)["CallSid"]) is None             # not taken in
    # A new call is answered, a live call's callback and a pending call's update go through.
    assert (await post(client, "/webhooks/twilio/voice", voice_params(2))).status == 200
    gw.draining = True                           # declined busy, not a 503, when not taking calls
    declined = await post(client, "/webhooks/twilio/voice", voice_params(3))
    assert declined.status == 200 and "<Reject" in await declined.text()
    gw.draining = False
    live = {**completed(0), "CallSid": call_sid(1), "CallStatus": "in-progress",
            "SequenceNumber": "2"}
    assert (await post(client, STATUS, live)).status == 204
    assert (await post(client, "/webhooks/twilio/recording", {
        "CallSid": completed(3)["CallSid"], "RecordingSid": "RE" + "ab" * 16,
        "RecordingStatus": "completed"})).status == 204
    # The final callback of a call whose stream was served here lately passes; long after,
    # it is held back like any other.
    assert (await post(client, STATUS, {**completed(0), "CallSid": call_sid(50)})).status == 204
    assert (await post(client, STATUS, {**completed(0), "CallSid": call_sid(51)})).status == 503

    store.gate.set()                             # the database catches up
    assert await gw.store_writer.room(5)
    assert (await post(client, STATUS, completed(99))).status == 204   # not a "duplicate"
    rec = gw.registry.get(completed(99)["CallSid"])
    assert rec is not None and rec.outcome == "completed"
    assert await metric(client, "patterd_store_backpressure_total", outcome="refused") == 2
    assert (await client.get("/readyz")).status == 200


async def test_telnyx_events_meet_the_same_door(daemon: Any, slow_store: list[SlowStore],
                                                telnyx_signer: Any, fake_telnyx: Any) -> None:
    _, base = fake_telnyx
    raw = telnyx_raw(telnyx_signer.public_key_b64, server={"max_calls": 5},
                     store={"max_pending": 10})
    raw["carrier"]["api_base_url"] = base
    client = await daemon(config(raw))
    gw = gateway_of(client)
    slow_store[0].gate = asyncio.Event()

    async def send(event: str, ccid: str, event_id: str) -> aiohttp.ClientResponse:
        body = telnyx_event(event, {"call_control_id": ccid, "hangup_cause": "normal_clearing",
                                    "direction": "incoming", "from": "+18124040851",
                                    "to": "+15550001234"}, event_id=event_id)
        return await client.post("/webhooks/telnyx/voice", data=body,
                                 headers=telnyx_signer.sign(body))

    for n in range(10):
        assert (await send("call.hangup", f"v3:ended-{n}", f"evt-{n}")).status == 200
    assert gw.store_writer.backed_up
    refused = await send("call.hangup", "v3:late", "evt-late")
    assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1
    assert (await send("call.initiated", "v3:new", "evt-new")).status == 200   # answered
    slow_store[0].gate.set()
    assert await gw.store_writer.room(5)
    assert (await send("call.hangup", "v3:late", "evt-late")).status == 200
    rec = gw.registry.get("v3:late")
    assert rec is not None and rec.ended_at is not None


async def test_a_bug_writing_one_record_is_counted_and_spares_the_others(
        daemon: Any, slow_store: list[SlowStore]) -> None:
    client = await daemon(config(twilio_raw()))
    gw = gateway_of(client)
    gw.store_writer.retry_base = 0.05
    bad = completed(7)["CallSid"]
    slow_store[0].poison = {bad}
    for n in range(5, 10):
        assert (await post(client, STATUS, completed(n))).status == 204
    deadline = time.monotonic() + 5
    while gw.store_writer.written < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert gw.store_writer.holds(bad) and gw.store_writer.pending == 1
    assert await metric(client, "patterd_internal_errors_total", component="store") >= 1
    assert (await client.get("/readyz")).status == 200     # one record is not an outage
    slow_store[0].poison.clear()
    assert await gw.store_writer.flush(5)
    assert await slow_store[0].get_call(bad) is not None
