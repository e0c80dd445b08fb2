"""``patterd_backend_errors_total{backend="carrier",provider=…}``: every carrier REST action
that fails for good (after the client's retries) is counted once — hang-up, transfer, DTMF,
dial, number configuration, reject, answer, recording start — and "the call had already
ended" (Twilio 20404, Telnyx 90018) is not a failure. The carriers are the local fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PHONE, config, gateway_of, telnyx_raw, twilio_raw
from tests.support.media_client import telnyx_stream, twilio_stream, until
from tests.support.signing import TelnyxSigner, call_sid, telnyx_event

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TO = "+15557654321"
REFUSED = [500, 500, 500]     # a 5xx on each of the client's three tries
UNAUTHORISED = [401]          # a 4xx is not retried


async def carrier_errors(client: Any, provider: str) -> float:
    """The scraped ``patterd_backend_errors_total`` of the carrier (0 when absent)."""
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "patterd_backend_errors_total" and s.labels == {
                    "backend": "carrier", "provider": provider}:
                return s.value
    return 0.0


async def start(daemon: Any, which: str, fakes: dict[str, Any], **sections: Any
                ) -> tuple[Any, Any, TelnyxSigner]:
    fake, base = fakes[which]
    signer = TelnyxSigner()
    sections.setdefault("admin", {"token": TOKEN})
    if which == "twilio":
        raw = twilio_raw(**sections)
    else:
        raw = telnyx_raw(signer.public_key_b64, **sections)
    raw["carrier"]["api_base_url"] = base
    return await daemon(config(raw)), fake, signer


@pytest.fixture
def fakes(fake_twilio: Any, fake_telnyx: Any) -> dict[str, Any]:
    return {"twilio": fake_twilio, "telnyx": fake_telnyx}


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_failed_steering_and_dialling_are_counted_once_each(
        daemon: Any, fakes: dict[str, Any], carrier: str) -> None:
    client, fake, _ = await start(daemon, carrier, fakes)
    resp = await client.post("/v1/calls", json={"to": TO}, headers=AUTH)
    assert resp.status == 201
    call_id = (await resp.json())["call_id"]
    actions = [("hangup", {}, REFUSED), ("transfer", {"to": TO}, UNAUTHORISED),
               ("dtmf", {"digits": "12#"}, REFUSED)]
    for n, (action, body, answers) in enumerate(actions, 1):
        fake.fail_next = list(answers)
        before = len(fake.requests)
        resp = await client.post(f"/v1/calls/{call_id}/{action}", json=body, headers=AUTH)
        assert resp.status == 502, (action, await resp.text())
        assert len(fake.requests) - before == len(answers)      # retried, counted once
        assert await carrier_errors(client, carrier) == n
    fake.fail_next = list(REFUSED)
    resp = await client.post("/v1/calls", json={"to": TO}, headers=AUTH)
    assert resp.status == 502 and "refused" in (await resp.json())["error"]
    assert await carrier_errors(client, carrier) == 4
    # A hang-up the carrier answers with "already ended" is a success, not an error.
    fake.ended_calls.add(call_id)
    resp = await client.post(f"/v1/calls/{call_id}/hangup", headers=AUTH)
    assert resp.status == 200
    assert await carrier_errors(client, carrier) == 4
    assert await carrier_errors(client, "telnyx" if carrier == "twilio" else "twilio") == 0


@pytest.mark.parametrize("answers", [UNAUTHORISED, REFUSED])
async def test_twilio_configure_number_failure_is_counted_once(
        daemon: Any, fakes: dict[str, Any], answers: list[int]) -> None:
    fake, _ = fakes["twilio"]
    fake.fail_next = list(answers)
    client, _, _ = await start(daemon, "twilio", fakes, carrier={"configure_number": True})
    await until(lambda: len(fake.requests) == len(answers) and not fake.fail_next)
    await until(lambda: gateway_of(client).metrics.backend_errors
                .labels("carrier", "twilio")._value.get() == 1)
    await asyncio.sleep(0.1)
    assert await carrier_errors(client, "twilio") == 1
    assert fake.voice_urls == {}                        # the number was not pointed here


async def test_telnyx_failed_reject_while_draining_is_counted(
        daemon: Any, fakes: dict[str, Any]) -> None:
    client, fake, signer = await start(daemon, "telnyx", fakes)
    gateway_of(client).draining = True
    fake.fail_next = list(UNAUTHORISED)
    body = telnyx_event("call.initiated", {"call_control_id": "v3:late", "direction":
                                           "incoming", "from": "+15551112222", "to": PHONE})
    assert (await client.post("/webhooks/telnyx/voice", data=body,
                              headers=signer.sign(body))).status == 200
    await until(lambda: len(fake.requests) == 1)
    assert fake.requests[0].path.endswith("/actions/reject")
    await until(lambda: gateway_of(client).metrics.backend_errors
                .labels("carrier", "telnyx")._value.get() == 1)
    assert await carrier_errors(client, "telnyx") == 1


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_failed_recording_start_is_counted_once(
        daemon: Any, fakes: dict[str, Any], carrier: str) -> None:
    """The session counts a recording that would not start; the REST client does not add
    a second count."""
    client, fake, _ = await start(daemon, carrier, fakes, recording={"enabled": True})
    fake.fail_next = list(UNAUTHORISED)
    if carrier == "twilio":
        stream = await twilio_stream(client, call_sid(21))
    else:
        stream = await telnyx_stream(client, "v3:recorded")
    await until(lambda: len(fake.requests) == 1)
    assert fake.requests[0].path.endswith(("/Recordings.json", "/actions/record_start"))
    await until(lambda: gateway_of(client).metrics.backend_errors
                .labels("carrier", carrier)._value.get() >= 1)
    await asyncio.sleep(0.1)
    assert await carrier_errors(client, carrier) == 1
    await stream.stop()
