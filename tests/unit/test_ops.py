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
