"""Twilio's own price of a call, fetched from the Call resource after the call completed.

The daemon talks to the fake Twilio REST API (tests/support/fake_carriers.py), which serves
``GET /Calls/{CallSid}.json`` like Twilio: ``price`` null until a while after completion, then
a negative decimal string in ``price_unit``. Status callbacks are signed by twilio-python.
The fetch schedule is shortened through ``patterd.carriers.twilio.price.SCHEDULE``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from patterd.app import build_app
from patterd.carriers.twilio import price
from patterd.patter import carrier_for
from patterd.simulate import Dtmf, WaitForAgent, simulate_call
from tests.conftest import PHONE, config, gateway_of, twilio_raw
from tests.support.fake_carriers import FakeTwilio
from tests.support.signing import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, call_sid, twilio_form
from tests.support.stub_backends import stub_backends

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS = "/webhooks/twilio/status"


@pytest.fixture
def schedule(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def use(*delays: float) -> None:
        monkeypatch.setattr(price, "SCHEDULE", tuple(delays))
    return use


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def cfg_for(base: str, **extra: Any):  # type: ignore[no-untyped-def]
    return config(twilio_raw(admin={"token": TOKEN}, carrier={"api_base_url": base}, **extra))


async def status(client: TestClient, sid: str, state: str, seq: int,
                 duration: int | None = None) -> float:
    """Post Twilio's signed status callback; returns how long the answer took."""
    params = {"CallSid": sid, "AccountSid": TWILIO_SID, "CallStatus": state,
              "SequenceNumber": str(seq), "Direction": "outbound-api", "From": PHONE,
              "To": "+15557654321", "ApiVersion": "2010-04-01"}
    if duration is not None:
        params["CallDuration"] = str(duration)
    body, headers = twilio_form(PUBLIC_URL + STATUS, params)
    began = time.monotonic()
    resp = await client.post(STATUS, data=body, headers=headers)
    assert resp.status == 204, await resp.text()
    return time.monotonic() - began


async def placed_and_completed(client: TestClient, duration: int = 42) -> str:
    """An outbound call placed through the admin API, answered and completed."""
    resp = await client.post("/v1/calls", headers=AUTH, json={"to": "+15557654321"})
    assert resp.status == 201, await resp.text()
    sid = (await resp.json())["call_id"]
    for seq, state in enumerate(("initiated", "ringing", "in-progress")):
        await status(client, sid, state, seq)
    return sid


def fetches(fake: FakeTwilio, sid: str) -> list[Any]:
    return [r for r in fake.requests if r.method == "GET" and r.path.endswith(f"/{sid}.json")]


def carrier_cost(client: TestClient) -> float:
    return gateway_of(client).metrics.call_cost.labels("carrier")._value.get()


async def test_price_replaces_the_estimate_once_twilio_has_it(
        daemon, fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(0.5, 0.1, 0.1, 0.2, 0.4, 0.8, 1.6)
    client = await daemon(cfg_for(base))
    sid = await placed_and_completed(client)
    fake.complete_call(sid, "-0.0200", after=0.7, duration=42, direction="outbound-api")
    with capture_logs() as logs:
        took = await status(client, sid, "completed", 3, duration=42)
        assert not fetches(fake, sid), "the webhook answer waited for the price"
        assert took < 0.5
        rec = gateway_of(client).registry.get(sid)
        # Our estimate first: 42 s billed as one minute at the list price.
        assert rec.cost["carrier"] == 0.014 and rec.cost["carrier_source"] == "estimate"
        await until(lambda: rec.cost["carrier_source"] == "carrier")
    assert len(fetches(fake, sid)) >= 2          # price was still null at the first fetch
    assert rec.cost["carrier"] == 0.02 and rec.cost["total"] == 0.02
    assert carrier_cost(client) == pytest.approx(0.02)   # the counter adds what was missing
    got = [e for e in logs if e["event"] == "twilio_price"]
    assert got and got[0]["price"] == -0.02 and got[0]["call_id"] == sid
    # The admin API and the store see the carrier's figure.
    detail = await (await client.get(f"/v1/calls/{sid}", headers=AUTH)).json()
    assert detail["cost"]["carrier_source"] == "carrier" and detail["cost"]["carrier"] == 0.02
    writer = gateway_of(client).store_writer
    assert await writer.flush(5)
    stored = await writer.store.get_call(sid)
    assert stored["cost"]["carrier_source"] == "carrier" and stored["cost"]["carrier"] == 0.02
    # A redelivered callback starts no second fetch.
    n = len(fetches(fake, sid))
    await status(client, sid, "completed", 3, duration=42)
    assert not [t for t in gateway_of(client).tasks if t.get_name() == "twilio-price"]
    assert len(fetches(fake, sid)) == n


async def test_api_failures_are_logged_counted_and_retried(
        daemon, fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(0.05, 0.05, 0.1)
    client = await daemon(cfg_for(base))
    sid = await placed_and_completed(client)
    fake.complete_call(sid, "-0.0300", direction="outbound-api")
    fake.fail_next = [500, 500, 500]             # the client's three tries of one fetch
    errors = gateway_of(client).metrics.backend_errors.labels("carrier", "twilio")
    with capture_logs() as logs:
        await status(client, sid, "completed", 3, duration=42)
        rec = gateway_of(client).registry.get(sid)
        await until(lambda: rec.cost["carrier_source"] == "carrier")
    failed = [e for e in logs if e["event"] == "twilio_price_fetch_failed"]
    assert [(e["status"], e["attempt"]) for e in failed] == [(500, 1)]
    assert errors._value.get() == 1
    assert rec.cost["carrier"] == 0.03
    assert len(fetches(fake, sid)) == 4           # 3 refused, then the priced one


async def test_unknown_call_gives_up_and_a_price_that_never_comes_keeps_the_estimate(
        daemon, fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(0.02, 0.02, 0.02)
    client = await daemon(cfg_for(base))
    gone = await placed_and_completed(client)
    del fake.calls[gone]                          # Twilio answers 404 for this one
    unpriced = await placed_and_completed(client)  # and null for ever for this one
    with capture_logs() as logs:
        await status(client, gone, "completed", 3, duration=10)
        await status(client, unpriced, "completed", 3, duration=10)
        await until(lambda: {"twilio_price_unavailable", "twilio_price_fetch_failed"}
                    <= {e["event"] for e in logs})
        await until(lambda: not [t for t in gateway_of(client).tasks
                                 if t.get_name() == "twilio-price"])
    assert len(fetches(fake, gone)) == 1          # 404: asking again would not help
    assert len(fetches(fake, unpriced)) == 3
    for sid in (gone, unpriced):
        assert gateway_of(client).registry.get(sid).cost["carrier_source"] == "estimate"
    failed = next(e for e in logs if e["event"] == "twilio_price_fetch_failed")
    assert failed["status"] == 404 and failed["call_id"] == gone


async def test_a_price_in_another_currency_is_not_mixed_in(
        daemon, fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(0.02)
    client = await daemon(cfg_for(base))
    sid = await placed_and_completed(client)
    fake.complete_call(sid, "-0.0150", price_unit="EUR", direction="outbound-api")
    with capture_logs() as logs:
        await status(client, sid, "completed", 3, duration=10)
        await until(lambda: any(e["event"] == "twilio_price_not_usd" for e in logs))
    assert gateway_of(client).registry.get(sid).cost["carrier_source"] == "estimate"


async def test_stray_callback_for_a_call_not_served_here_fetches_nothing(
        daemon, fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(0.01)
    client = await daemon(cfg_for(base))
    await status(client, call_sid(77), "completed", 2, duration=30)
    await status(client, call_sid(77), "completed", 3, duration=30)   # a second report
    assert gateway_of(client).registry.get(call_sid(77)).outcome == "completed"
    assert not [t for t in gateway_of(client).tasks if t.get_name() == "twilio-price"]
    assert not fake.requests


async def test_shutdown_stops_a_pending_fetch(fake_twilio, schedule) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    schedule(30.0)
    cfg = cfg_for(base)
    client = TestClient(TestServer(build_app(cfg, carrier_for(cfg.carrier),
                                             backends=stub_backends(cfg)), host="127.0.0.1"))
    await client.start_server()
    sid = await placed_and_completed(client)
    fake.complete_call(sid, direction="outbound-api")
    await status(client, sid, "completed", 3, duration=10)
    task = next(t for t in gateway_of(client).tasks if t.get_name() == "twilio-price")
    with capture_logs() as logs:
        began = time.monotonic()
        await client.close()
        assert time.monotonic() - began < 5
    assert task.cancelled()
    assert any(e["event"] == "twilio_price_abandoned" for e in logs)
    assert not fetches(fake, sid)


async def test_inbound_call_served_here_gets_twilio_price(daemon, schedule) -> None:  # type: ignore[no-untyped-def]
    """A whole simulated call (media stream served here), priced afterwards: the simulator
    plays Twilio during the call; then the fake Twilio API takes its port and answers the
    price fetch, as Twilio's REST API would a while after the call."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    schedule(1.0, 0.5, 0.5, 1.0, 2.0)
    raw = twilio_raw(admin={"token": TOKEN}, llm={"provider": "rules", "rules": [
        {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{port}"
    cfg = config(raw)
    client = await daemon(cfg)
    url = str(client.make_url("")).rstrip("/")
    result = await simulate_call(cfg, url, [WaitForAgent(), Dtmf("9"),
                                            WaitForAgent(required=False)], timeout=30)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
    fake = FakeTwilio(TWILIO_SID, TWILIO_TOKEN, [PHONE])
    fake.complete_call(result.call_id, "-0.0085")
    server = TestServer(fake.app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        rec = gateway_of(client).registry.get(result.call_id)
        await until(lambda: rec.cost is not None and rec.cost["carrier_source"] == "carrier")
        assert rec.cost["carrier"] == 0.0085
        assert fetches(fake, result.call_id)
        writer = gateway_of(client).store_writer
        assert await writer.flush(5)
        stored = await writer.store.get_call(result.call_id)
        assert stored["cost"]["carrier_source"] == "carrier"
        assert [ln["role"] for ln in stored["transcript"]] == ["agent", "caller", "agent"]
    finally:
        await server.close()


@pytest.mark.parametrize("resource, expected", [
    ({"price": None, "price_unit": "USD"}, (None, "USD")),
    ({"price": "", "price_unit": "USD"}, (None, "USD")),
    ({"price": "-0.0085", "price_unit": "USD"}, (-0.0085, "USD")),
    ({"price": "0", "price_unit": "usd"}, (0.0, "USD")),
    ({"price": "-0.01"}, (-0.01, "USD")),
])
def test_read_price(resource: dict[str, Any], expected: tuple[Any, str]) -> None:
    assert price.read_price(resource) == expected


@pytest.mark.parametrize("resource", [
    {"price": "free"}, {"price": True}, {"price": "nan"}, {"price": "-1e9"}, {"price": {}},
    ["not", "an", "object"],
])
def test_read_price_refuses_malformed(resource: Any) -> None:
    with pytest.raises(ValueError):
        price.read_price(resource)
