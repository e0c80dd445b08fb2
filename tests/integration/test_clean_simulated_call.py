"""The first hour: a healthy simulated call on the shipped offline config leaves no warning
and no error metric — including the Twilio price fetch that comes after the simulator (the
stand-in for Twilio's REST API) has gone — while a real carrier API that cannot be reached
still counts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from patterd.carriers.twilio import price
from patterd.carriers.twilio.rest import TwilioRest
from patterd.config import load_config
from patterd.simulate import Dtmf, WaitForAgent, make_api, say, simulate_call
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "patter.yaml"


def samples(counter) -> float:  # type: ignore[no-untyped-def]
    """The sum of every labelled series of a Prometheus counter."""
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total"))


async def until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_healthy_simulated_call_leaves_no_warning_and_no_error_metric(
        daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(price, "SCHEDULE", (0.2, 0.3))   # the fetch comes after the call
    cfg = load_config(SHIPPED, env={
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",   # the simulator's, while it runs
        "PATTERD_STORE_URL": f"sqlite:///{tmp_path / 'calls.db'}"})
    with capture_logs() as logs:
        client = await daemon(cfg, real=True)           # pocketsphinx, espeak, silero, rules
        gw = gateway_of(client)
        url = str(client.make_url("")).rstrip("/")
        result = await simulate_call(cfg, url, [WaitForAgent(), await say("goodbye"),
                                                WaitForAgent(required=False)], timeout=60)
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
        assert result.ok and not result.warnings, result.warnings
        await until(lambda: not [t for t in gw.tasks if t.get_name() == "twilio-price"], 10)
    noisy = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert noisy == []
    assert any(e["event"] == "twilio_price_stand_in_gone" for e in logs)   # it was tried
    assert samples(gw.metrics.backend_errors) == 0
    assert samples(gw.metrics.internal_errors) == 0


async def test_a_later_simulation_run_that_does_not_know_the_call_is_no_failure(
        daemon, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`patterd simulate` run after run: the price is asked of the next run's stand-in, which
    answers 404 (marked as the simulator's) for a call of the previous one."""
    monkeypatch.setattr(price, "SCHEDULE", (1.0,))
    raw = twilio_raw(llm={"provider": "rules", "rules": [
        {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    client = await daemon(cfg)
    gw = gateway_of(client)
    url = str(client.make_url("")).rstrip("/")
    with capture_logs() as logs:
        first = await simulate_call(cfg, url, [WaitForAgent(), Dtmf("9"),
                                               WaitForAgent(required=False)], timeout=30)
        assert first.outcome == "hung_up_by_agent", (first.outcome, first.errors)
        async with make_api(cfg):                  # the next run's stand-in, knowing nothing
            await until(lambda: not [t for t in gw.tasks if t.get_name() == "twilio-price"],
                        10)
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
    assert any(e["event"] == "twilio_price_unknown_to_simulator" for e in logs)
    assert samples(gw.metrics.backend_errors) == 0


async def test_twilio_itself_unreachable_still_counts(daemon) -> None:  # type: ignore[no-untyped-def]
    """The daemon talks to api.twilio.com: a price fetch that cannot connect is a failure
    (here the request goes to a closed local port, the configured API is Twilio's)."""
    cfg = config(twilio_raw(carrier={"api_base_url": "https://api.twilio.com"}))
    client = await daemon(cfg)
    gw = gateway_of(client)
    settings = cfg.carrier
    closed = type(settings)(settings.account_sid, settings.auth_token, False,
                            f"http://127.0.0.1:{free_port()}")
    rec = gw.registry.ensure("CA" + "1" * 32, "twilio", direction="inbound")
    with capture_logs() as logs:
        got = await price.fetch_price(gw, TwilioRest(gw.session, closed), rec, schedule=(0.0,))
    assert got is None
    failed = [e for e in logs if e["event"] == "twilio_price_fetch_failed"]
    assert failed and failed[0]["log_level"] == "warning"
    assert failed[0]["reason"].startswith("GET /Calls/")
    assert "cannot connect to 127.0.0.1" in failed[0]["reason"]        # words, not a repr
    assert gw.metrics.backend_errors.labels("carrier", "twilio")._value.get() == 1
    assert [e["log_level"] for e in logs if e["event"] == "twilio_price_unavailable"] == [
        "warning"]
