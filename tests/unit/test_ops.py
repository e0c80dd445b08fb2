"""Logging hygiene, metrics families, the registry and the deduper."""

from __future__ import annotations

import json

import structlog
from prometheus_client.parser import text_string_to_metric_families

from patterd.call.dedupe import Deduper
from patterd.call.registry import CallRegistry
from patterd.ops.logging import configure_logging, get_logger, mask_phone
from patterd.ops.metrics import Metrics

CONTRACT_FAMILIES = {
    "patterd_calls_active": "gauge", "patterd_calls": "counter",
    "patterd_webhook_requests": "counter", "patterd_webhook_signature_failures": "counter",
    "patterd_media_frames": "counter", "patterd_turn_latency_seconds": "histogram",
    "patterd_barge_ins": "counter", "patterd_backend_errors": "counter",
    "patterd_call_cost_usd": "counter", "patterd_call_duration_seconds": "histogram",
}


def test_mask_phone_keeps_last_four() -> None:
    assert mask_phone("+15550001234") == "+*******1234"
    assert mask_phone("from +447700900123 to 5551234567") == (
        "from +********0123 to ******4567")
    assert mask_phone("sip:alice.smith@example.com") == "sip:*******mith@example.com"
    assert mask_phone("CA0123456789abcdef") == "CA0123456789abcdef"  # ids untouched


def test_mask_phone_in_every_common_written_form() -> None:
    assert mask_phone("call from (415) 555-9878 now") == "call from (***) ***-9878 now"
    assert mask_phone("+1 415 555 9880") == "+* *** *** 9880"
    assert mask_phone("+44 20 7946 0958") == "+** ** **** 0958"
    assert mask_phone("415-555-9878, 415.555.9878") == "***-***-9878, ***.***.9878"
    assert mask_phone("+1 (415) 555-9878 or 020 7946 0958") == (
        "+* (***) ***-9878 or *** **** 0958")
    # Not phone numbers: dates, times, addresses, ids, amounts.
    for text in ("2026-12-07T14:21:57.738Z", "192.168.100.200", "127.0.0.1:8000",
                 "b0e6224c-c81c-11f0-afbb-02420aef93a0", "-0.0085", "latency 120 300 600",
                 "v3:2EC-70CTEjlUq3tDM0CxKXIt5-5N4iP4wo7_-PfH-qub97Sk4EqO5w", "+00:00"):
        assert mask_phone(text) == text


def test_telnyx_media_tokens_never_reach_a_log_line(capsys) -> None:  # type: ignore[no-untyped-def]
    configure_logging("info", "json")
    url = "wss://voice.example.com/media/telnyx/Q0Exfml.tag-tag_TAG"
    get_logger("t").info("answer", stream_url=url, detail=f"GET /media/telnyx/abc.def?x=1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["stream_url"] == "wss://voice.example.com/media/telnyx/***"
    assert doc["detail"] == "GET /media/telnyx/***?x=1"
    structlog.reset_defaults()


async def test_malformed_requests_are_not_error_lines(capsys) -> None:  # type: ignore[no-untyped-def]
    """The review made 641 ERROR lines with 12,000 bad requests: now one warning per 10 s."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    configure_logging("info", "json")
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    try:
        for bad in (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n") * 5:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(bad)
            assert b" 400 " in (await asyncio.wait_for(reader.read(), 5)).split(b"\r\n")[0]
            writer.close()
    finally:
        await server.close()
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    assert not [ln for ln in lines if ln.get("level") in ("error", "critical")], lines
    warned = [ln for ln in lines if ln.get("event") == "http_requests_malformed"]
    assert len(warned) == 1 and warned[0]["level"] == "warning" and warned[0]["last_reason"]
    assert "exception" not in warned[0]
    structlog.reset_defaults()


def test_log_lines_are_json_masked_and_secret_free(capsys) -> None:  # type: ignore[no-untyped-def]
    configure_logging("info", "json")
    get_logger("t").info("call", caller="+15550001234", auth_token="s3cret",
                         nested={"api_key": "k", "to": "+15559876543"}, call_id="CA1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["caller"] == "+*******1234"
    assert doc["auth_token"] == "***" and doc["nested"]["api_key"] == "***"
    assert doc["nested"]["to"] == "+*******6543"
    assert "s3cret" not in line and "15550001234" not in line
    structlog.reset_defaults()


def test_every_contract_metric_family_is_registered() -> None:
    from prometheus_client.exposition import generate_latest
    text = generate_latest(Metrics().registry).decode()
    found = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in CONTRACT_FAMILIES.items():
        assert found.get(name) == kind, name


def test_deduper_first_time_then_repeat_then_expiry() -> None:
    now = [0.0]
    d = Deduper(max_entries=3, ttl=10, clock=lambda: now[0])
    assert d.first_time("a") and not d.first_time("a")
    now[0] = 11
    assert d.first_time("a")
    for k in "bcde":
        d.first_time(k)
    assert len(d) <= 3


def test_deduper_defaults_cover_carrier_retries_and_stay_bounded() -> None:
    from patterd.call import dedupe
    now = [0.0]
    d = Deduper(clock=lambda: now[0])
    assert d.first_time(("twilio-status", "CA1", "completed", 3))
    now[0] = dedupe.TTL - 1                      # a carrier's retry, minutes later: refused
    assert not d.first_time(("twilio-status", "CA1", "completed", 3))
    now[0] = dedupe.TTL + 1                      # forgotten after ten minutes
    assert d.first_time(("twilio-status", "CA1", "completed", 3))
    assert dedupe.TTL == 600 and dedupe.MAX_ENTRIES <= 100_000
    small = Deduper(max_entries=100, clock=lambda: now[0])
    for n in range(1000):                        # a burst within the TTL: the oldest go
        small.first_time(n)
    assert len(small) == 100


def test_registry_orders_by_sequence_and_terminal_is_final() -> None:
    reg = CallRegistry()
    assert reg.apply_status("CA1", "twilio", "ringing", 1)
    assert reg.apply_status("CA1", "twilio", "completed", 3)
    assert not reg.apply_status("CA1", "twilio", "in-progress", 2)  # late, older
    rec = reg.get("CA1")
    assert rec is not None and rec.status == "completed" and rec.outcome == "completed"
    assert [h["status"] for h in rec.history] == ["ringing", "in-progress", "completed"]
    assert reg.live_count() == 0


def test_registry_live_count_and_bounds() -> None:
    reg = CallRegistry(max_records=3, max_call_seconds=3600)
    for i in range(3):
        reg.ensure(f"CA{i}", "twilio")
    assert reg.live_count() == 3
    reg.end("CA0", "completed")
    reg.ensure("CA9", "twilio")
    assert reg.get("CA0") is None and len(reg) == 3 and reg.live_count() == 3
