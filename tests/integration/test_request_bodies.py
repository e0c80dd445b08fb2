"""Request bodies are read whole on every route, whatever TCP does to them: a correctly signed
request sent in several writes with pauses between them (no buffering proxy in front) is
answered as if it had arrived at once; a body too slow is 408, one too large 413, a client
that hangs up mid-body is neither a 500 nor an ERROR line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from aiohttp import web

from patterd.app import build_app
from patterd.config import Config
from patterd.gateway import GATEWAY, Gateway
from patterd.patter import carrier_for
from patterd.server import make_runner
from tests.support.stub_backends import stub_backends

from tests.conftest import config, telnyx_raw, twilio_raw
from tests.integration.test_twilio_webhooks import metric, voice_params
from tests.support.raw_http import request_bytes, send_in_pieces
from tests.support.signing import PUBLIC_URL, call_sid, telnyx_event, twilio_form

ADMIN_TOKEN = "c3f1a9e07b5d4e2f8a6c1d9b0e7f3a25"


def twilio_request(path: str, params: dict[str, str]) -> bytes:
    body, headers = twilio_form(PUBLIC_URL + path, params)
    return request_bytes("POST", path, body, headers)


TWILIO_CASES = [
    ("/webhooks/twilio/voice", voice_params(), 200),
    ("/webhooks/twilio/status", {"CallSid": call_sid(2), "CallStatus": "ringing",
                                 "SequenceNumber": "0", "Direction": "inbound"}, 204),
    ("/webhooks/twilio/recording", {"CallSid": call_sid(3), "RecordingSid": "RE" + "ab" * 16,
                                    "RecordingStatus": "completed",
                                    "RecordingUrl": "https://api.twilio.com/r"}, 204),
    ("/webhooks/twilio/amd", {"CallSid": call_sid(4), "AnsweredBy": "human",
                              "MachineDetectionDuration": "1200"}, 204),
]


@pytest.mark.parametrize(("path", "params", "status"), TWILIO_CASES,
                         ids=[c[0].rsplit("/", 1)[1] for c in TWILIO_CASES])
async def test_twilio_body_in_several_writes(daemon, path, params, status) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw()))
    data = twilio_request(path, {**params, "Padding": "x" * 600})
    resp = await send_in_pieces(client.server.port, data, pieces=5, delay=0.05)
    assert resp.status == status, resp.body
    assert await metric(client, "patterd_webhook_signature_failures_total",
                        carrier="twilio") == 0


async def test_telnyx_body_in_several_writes(daemon, telnyx_signer) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(telnyx_raw(telnyx_signer.public_key_b64)))
    body = telnyx_event("call.answered", {"call_control_id": "v3:split-body-1",
                                          "client_state": None, "padding": "x" * 600})
    data = request_bytes("POST", "/webhooks/telnyx/voice", body, telnyx_signer.sign(body))
    resp = await send_in_pieces(client.server.port, data, pieces=5, delay=0.05)
    assert resp.status == 200, resp.body
    assert resp.json() == {"status": "ok"}
    assert await metric(client, "patterd_webhook_signature_failures_total",
                        carrier="telnyx") == 0


async def test_admin_body_in_several_writes(daemon, fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(admin={"token": ADMIN_TOKEN},
                                            carrier={"api_base_url": base})))
    body = json.dumps({"to": "+15557654321", "variables": {"note": "y" * 150}}).encode()
    data = request_bytes("POST", "/v1/calls", body, {"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                     "Content-Type": "application/json"})
    resp = await send_in_pieces(client.server.port, data, pieces=5, delay=0.05)
    assert resp.status == 201, resp.body
    assert resp.json()["call_id"].startswith("CA")


async def test_a_body_that_stops_arriving_is_408(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(server={"body_timeout": 0.3})))
    data = twilio_request("/webhooks/twilio/voice", voice_params())
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(data[:-20])                      # the last 20 bytes never come
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408 "), head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert b"did not arrive within 0.3 s" in await reader.readexactly(length)
    writer.close()
    assert await metric(client, "patterd_webhook_requests_total", carrier="twilio",
                        endpoint="voice", code="408") == 1


async def test_a_body_over_the_limit_is_413_on_every_route(daemon) -> None:  # type: ignore[no-untyped-def]
    client = await daemon(config(twilio_raw(server={"max_body_bytes": 1024},
                                            admin={"token": ADMIN_TOKEN})))
    big = urlencode({"CallSid": call_sid(1), "Padding": "x" * 2000}).encode()
    for path in ("/webhooks/twilio/voice", "/webhooks/twilio/status", "/v1/calls"):
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Twilio-Signature": "x",
                   "Content-Type": "application/x-www-form-urlencoded"}
        # Announced (Content-Length) and not announced (chunked): both refused.
        resp = await client.post(path, data=big, headers=headers)
        assert resp.status == 413, (path, await resp.text())

        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(big), 300):
                yield big[i:i + 300]
                await asyncio.sleep(0.01)
        resp = await client.post(path, data=chunks(), headers=headers)
        assert resp.status == 413, (path, await resp.text())


@contextlib.asynccontextmanager
async def served(cfg: Config) -> AsyncIterator[tuple[Gateway, int]]:
    """The app run by the daemon's own runner (``patterd.server.make_runner``): a handler is
    not cancelled when its client leaves (aiohttp's test server would cancel it)."""
    app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield app[GATEWAY], site.port
    finally:
        await runner.cleanup()


async def test_a_client_hanging_up_mid_body_is_not_a_server_error(caplog) -> None:  # type: ignore[no-untyped-def]
    data = twilio_request("/webhooks/twilio/status", {"CallSid": call_sid(9),
                                                      "CallStatus": "ringing"})
    caplog.set_level(logging.DEBUG)
    async with served(config(twilio_raw())) as (gw, port):
        def count(code: str) -> float:
            return gw.metrics.registry.get_sample_value(
                "patterd_webhook_requests_total",
                {"carrier": "twilio", "endpoint": "status", "code": code}) or 0.0

        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data[:-10])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
        for _ in range(100):
            if count("499") == 3:
                break
            await asyncio.sleep(0.02)
        assert count("499") == 3 and count("500") == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
