"""The Supervisor: one failed item is counted and logged (not flooding), a loop that dies is
restarted with back-off, and a critical one is down (``/readyz`` 503) while it waits."""

from __future__ import annotations

import asyncio
import json

import pytest

from patterd.ops.logging import configure_logging
from patterd.ops.supervise import Supervisor


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]


def test_every_failure_is_counted_and_logged_once_per_window_per_call(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    counted: list[str] = []
    supervisor = Supervisor(on_error=counted.append)
    for _ in range(50):                                 # a storm of one call's failures
        supervisor.report("vad", ValueError("bad window"), call_id="CA1")
    supervisor.report("vad", "model run failed", call_id="CA2")
    assert supervisor.errors == {"vad": 51} and counted == ["vad"] * 51
    lines = [ln for ln in logged(capsys) if ln["event"] == "internal_error"]
    assert [(ln["call_id"], ln["error"]) for ln in lines] == [
        ("CA1", "ValueError: bad window"), ("CA2", "model run failed")]
    assert all(ln["component"] == "vad" and ln["level"] == "error" for ln in lines)


def test_report_never_raises() -> None:
    def broken_counter(component: str) -> None:
        raise RuntimeError("the metric is gone")

    Supervisor(on_error=broken_counter).report("recorder", OSError(28, "No space left"))


async def test_a_loop_that_dies_is_restarted_with_back_off_and_is_down_meanwhile() -> None:
    supervisor = Supervisor()
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def run() -> None:
        starts.append(loop.time())
        if len(starts) < 4:
            raise RuntimeError("died")
        await asyncio.sleep(3600)

    task = supervisor.start("cluster_heartbeat", run, critical=True, first_delay=0.05)
    await asyncio.sleep(0.02)
    assert supervisor.down == {"cluster_heartbeat": "restarting"}
    while len(starts) < 4:
        await asyncio.sleep(0.01)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2   # doubling back-off
    assert supervisor.down == {} and supervisor.restarts == {"cluster_heartbeat": 3}
    assert supervisor.errors == {"cluster_heartbeat": 3}
    assert supervisor.running() == ["cluster_heartbeat"]
    await supervisor.stop()
    assert task.cancelled() and supervisor.running() == []


async def test_a_loop_that_returns_is_not_restarted() -> None:
    supervisor = Supervisor()
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1

    await supervisor.start("retention", run)
    assert runs == 1 and supervisor.restarts == {}
