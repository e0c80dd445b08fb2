"""The event-loop monitor: lag observed when the loop is blocked, tasks counted, and both
families on /metrics of a running daemon."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from patterd.app import build_app
from patterd.config.load import build_config
from patterd.ops.loop_monitor import watch_loop
from patterd.ops.metrics import Metrics
from patterd.patter import carrier_for
from tests.conftest import twilio_raw
from tests.support.stub_backends import stub_backends


def _lag_samples(metrics: Metrics) -> dict[str, float]:
    """Bucket upper bound → cumulative count, plus ``count``."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name == "patterd_event_loop_lag_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    out[s.labels["le"]] = s.value
                elif s.name.endswith("_count"):
                    out["count"] = s.value
    return out


async def test_a_blocked_loop_is_observed_as_lag_and_tasks_are_counted() -> None:
    metrics = Metrics()
    monitor = asyncio.create_task(watch_loop(metrics, interval=0.01, tasks_every=0.0))
    sleepers = [asyncio.create_task(asyncio.sleep(10)) for _ in range(7)]
    try:
        await asyncio.sleep(0.1)
        quiet = _lag_samples(metrics)
        assert quiet["count"] >= 3
        assert quiet["0.2"] == quiet["count"]            # no stall yet
        time.sleep(0.25)                                  # block the loop, as a bad call would
        await asyncio.sleep(0.05)
        after = _lag_samples(metrics)
        assert after["count"] > quiet["count"]
        assert after["0.2"] < after["count"]              # one observation above 200 ms
        assert after["0.5"] == after["count"]
        assert metrics.asyncio_tasks._value.get() >= 8   # the sleepers, the monitor, this test
    finally:
        for t in [*sleepers, monitor]:
            t.cancel()
        await asyncio.gather(*sleepers, monitor, return_exceptions=True)


async def test_the_daemon_exports_loop_lag_and_tasks_and_supervises_the_monitor() -> None:
    config = build_config(twilio_raw())
    app = build_app(config, carrier_for(config.carrier), backends=stub_backends(config))
    async with TestClient(TestServer(app)) as client:
        await asyncio.sleep(1.2)          # one task count is due every second
        text = await (await client.get("/metrics")).text()
        from patterd.gateway import GATEWAY
        running = app[GATEWAY].supervisor.running()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["patterd_event_loop_lag_seconds"].type == "histogram"
    count = [s.value for s in families["patterd_event_loop_lag_seconds"].samples
             if s.name.endswith("_count")]
    assert count and count[0] >= 5
    assert families["patterd_asyncio_tasks"].type == "gauge"
    assert families["patterd_asyncio_tasks"].samples[0].value >= 1
    assert "loop_monitor" in running
