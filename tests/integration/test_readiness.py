"""``/readyz`` follows whether a new call would be answered; ``/healthz`` only whether the
process serves (a liveness probe must never restart a busy or draining daemon)."""

from __future__ import annotations

from typing import Any

from tests.conftest import config, gateway_of, twilio_raw
from tests.support.signing import PUBLIC_URL, call_sid, twilio_form

VOICE = "/webhooks/twilio/voice"


async def ring(client: Any, n: int) -> str:
    body, headers = twilio_form(PUBLIC_URL + VOICE, {
        "CallSid": call_sid(n), "From": "+15551112222", "To": "+15550001234",
        "CallStatus": "ringing", "Direction": "inbound"})
    resp = await client.post(VOICE, data=body, headers=headers)
    assert resp.status == 200
    return await resp.text()


async def test_readyz_is_503_at_capacity_and_200_again_when_a_call_ends(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(server={"max_calls": 2})))
    ready = await client.get("/readyz")
    assert ready.status == 200 and await ready.json() == {"status": "ready", "calls": 0}
    assert "<Connect>" in await ring(client, 1)
    assert (await client.get("/readyz")).status == 200
    assert "<Connect>" in await ring(client, 2)
    full = await client.get("/readyz")
    assert full.status == 503 and await full.json() == {"status": "at_capacity", "calls": 2}
    assert "<Reject" in await ring(client, 3)       # what the 503 announced
    assert (await client.get("/healthz")).status == 200
    gateway_of(client).registry.end(call_sid(1), "completed")
    again = await client.get("/readyz")
    assert again.status == 200 and await again.json() == {"status": "ready", "calls": 1}
    gateway_of(client).draining = True
    assert await (await client.get("/readyz")).json() == {"status": "draining"}
