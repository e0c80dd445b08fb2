"""The price sweep: Twilio's price for calls whose own fetch was lost (the status callback
reached a replica that did not hold the call; the serving process restarted, drained or died
before Twilio priced it).

Calls are put in the store the way a finished daemon left them; the daemon under test never
saw them. The fake Twilio REST API (tests/support/fake_carriers.py) serves the Call resource
with its ``price``. The sweep's intervals are shortened through
``patterd.carriers.twilio.price``'s module constants. The cluster test runs two daemons on
the PostgreSQL server (a throwaway one when none answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from patterd.carriers.twilio import price
from patterd.store import open_store
from tests.conftest import config, gateway_of, twilio_raw
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.fake_carriers import FakeTwilio
from tests.unit.store.conformance import make_call, record_of

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ESTIMATE = {"carrier": 0.014, "stt": 0.002, "llm": 0.003, "tts": 0.001, "total": 0.02,
            "currency": "USD", "carrier_source": "estimate", "billed_seconds": 60.0}


@pytest.fixture(autouse=True)
def fast_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(price, "SWEEP_FIRST", 0.05)
    monkeypatch.setattr(price, "SWEEP_EVERY", 0.1)
    monkeypatch.setattr(price, "SWEEP_AFTER", 60.0)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def seed(url: str, *sids: str, ended_ago: float = 1200.0) -> None:
    """Twilio calls that ended ``ended_ago`` seconds ago with our estimate, as a daemon that
    is gone left them."""
    now = time.time()
    recs = []
    for sid in sids:
        rec = make_call(sid, now - ended_ago - 61.5, "completed", "completed", ended=True)
        recs.append(record_of(rec, cost=ESTIMATE))
    async with await open_store(url) as store:
        await store.upsert_calls(recs)


LOST, LATER = "CA" + "b2" * 16, "CA" + "a1" * 16   # read through /v1: CallSid-shaped


def fetches(fake: FakeTwilio, sid: str) -> int:
    return len([r for r in fake.requests if r.method == "GET"
                and r.path.endswith(f"/{sid}.json")])


def cfg_for(base: str, url: str) -> Any:
    return config(twilio_raw(admin={"token": TOKEN}, carrier={"api_base_url": base},
                             store={"url": url}))


async def test_a_call_priced_nowhere_gets_twilios_price(
        daemon, fake_twilio, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    url = f"sqlite:///{tmp_path}/calls.db"
    await seed(url, LOST, "CAgone", "CAeuro", LATER)
    await seed(url, "CArecent", ended_ago=10.0)        # its own process may still fetch it
    fake.complete_call(LOST, "-0.0200", duration=60)
    fake.complete_call("CAeuro", "-0.0150", price_unit="EUR")
    fake.complete_call(LATER, "-0.0100", after=0.6)   # Twilio has no price yet at first
    fake.complete_call("CArecent", "-0.0100")
    # CAgone: Twilio answers 404
    with capture_logs() as logs:
        client = await daemon(cfg_for(base, url))
        store = gateway_of(client).store_writer.store

        async def priced() -> bool:
            got = [await store.get_call(s) for s in (LOST, LATER)]
            return all(g["cost"]["carrier_source"] == "carrier" for g in got)
        await until(priced)
        rounds = fetches(fake, LATER)
        await until(lambda: asyncio.sleep(0.3, result=True))   # a few more rounds
    lost = await store.get_call(LOST)
    assert lost["cost"]["carrier"] == 0.02 and lost["cost"]["total"] == pytest.approx(0.026)
    assert lost["cost"]["stt"] == 0.002 and lost["transcript"]     # nothing else changed
    assert (await store.get_call(LATER))["cost"]["carrier"] == 0.01
    assert rounds >= 2                                  # null at first, asked again
    assert fetches(fake, LOST) == 1                 # priced: never asked again
    assert fetches(fake, LATER) == rounds
    assert fetches(fake, "CAgone") == 1                 # 404: given up
    assert fetches(fake, "CAeuro") == 1                 # another currency: kept the estimate
    assert (await store.get_call("CAeuro"))["cost"]["carrier_source"] == "estimate"
    assert fetches(fake, "CArecent") == 0               # too recent for the sweep
    detail = await (await client.get(f"/v1/calls/{LOST}", headers=AUTH)).json()
    assert detail["cost"]["carrier"] == 0.02
    swept = [e for e in logs if e["event"] == "twilio_price" and e["attempt"] == "sweep"]
    assert sorted(e["call_id"] for e in swept) == [LATER, LOST]


async def test_a_store_outage_fails_a_round_not_the_loop(
        daemon, fake_twilio, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    url = f"sqlite:///{tmp_path}/calls.db"
    await seed(url, "CAlost")
    fake.complete_call("CAlost", "-0.0200")
    client = await daemon(cfg_for(base, url))
    store = gateway_of(client).store_writer.store
    real = store.unpriced_calls
    failures = [2]

    async def flaky(*args: Any) -> list[str]:
        if failures[0]:
            failures[0] -= 1
            raise OSError("disk unplugged")
        return await real(*args)
    monkeypatch.setattr(store, "unpriced_calls", flaky)
    with capture_logs() as logs:
        async def priced() -> bool:
            return (await store.get_call("CAlost"))["cost"]["carrier_source"] == "carrier"
        await until(priced)
    failed = [e for e in logs if e["event"] == "twilio_price_sweep_failed"]
    assert len(failed) == 2 and "disk unplugged" in failed[0]["error"]


async def test_replicas_sweep_one_at_a_time_and_ask_twilio_once(
        daemon, fake_twilio, pg_url: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    fake, base = fake_twilio
    sids = [f"CA{n:032x}" for n in range(100, 106)]   # CallSids: /v1 reads no other shape
    await seed(pg_url, *sids)
    for sid in sids:
        fake.complete_call(sid, "-0.0300")
    clients = [await daemon(cfg_for(base, pg_url)) for _ in range(2)]
    store = gateway_of(clients[0]).store_writer.store

    async def priced() -> bool:
        got = [await store.get_call(s) for s in sids]
        return all(g["cost"]["carrier_source"] == "carrier" for g in got)
    await until(priced)
    await asyncio.sleep(0.4)                            # both replicas sweep a few more rounds
    assert [fetches(fake, s) for s in sids] == [1] * len(sids)
    for client in clients:
        detail = await (await client.get(f"/v1/calls/{sids[0]}", headers=AUTH)).json()
        assert detail["cost"]["carrier"] == 0.03 and detail["cost"]["carrier_source"] == "carrier"
