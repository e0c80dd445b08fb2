"""``patterd call``: an outbound call through a running daemon's admin API (README: command line).

The daemon runs as users run it (a subprocess on 127.0.0.1); the carrier it dials through is
the fake Twilio API of the ``fake_twilio`` fixture, on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import twilio_raw
from tests.support.fake_carriers import FakeTwilio
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-0123456789abcdef"
CALLEE = "+15557654321"


async def patterd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop the fake carrier answers on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "patterd", *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def admin_get(port: int, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


class Daemon:
    """``patterd --config`` in a subprocess; its log goes to a file (no pipe to fill)."""

    def __init__(self, tmp_path: Path, carrier_url: str, agent: dict[str, Any]) -> None:
        self.port = free_port()
        self.path = tmp_path / "patter.yaml"
        self.path.write_text(yaml.safe_dump(twilio_raw(
            server={"host": "127.0.0.1", "port": self.port, "drain_timeout": 2},
            carrier={"api_base_url": carrier_url}, admin={"token": TOKEN}, agent=agent)))
        self.log = tmp_path / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("w") as log:       # the daemon keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "patterd", "--config", str(self.path), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
                env={**os.environ, "PATTERD_ADMIN_TOKEN": ""})
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(self._ready):
            assert self.proc.returncode is None, self.log.read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            await asyncio.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert await asyncio.wait_for(self.proc.wait(), 20) == 0
            finally:
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()


@pytest.fixture
async def start_daemon(tmp_path: Path, fake_twilio: tuple[FakeTwilio, str]
                       ) -> AsyncIterator[Any]:
    daemons: list[Daemon] = []

    async def start(**agent: Any) -> Daemon:
        d = Daemon(tmp_path, fake_twilio[1], agent)
        daemons.append(d)
        await d.start()
        return d

    yield start
    for d in daemons:
        await d.stop()


def dials(fake: FakeTwilio) -> list[dict[str, str]]:
    """The form of every call the daemon asked the carrier to place, in order."""
    return [dict(r.form) for r in fake.requests
            if r.method == "POST" and r.path.endswith("/Calls.json")]


def stream_params(form: dict[str, str]) -> dict[str, str]:
    stream = ET.fromstring(form["Twiml"]).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


async def test_call_keeps_the_daemons_machine_detection_unless_told(
        start_daemon: Any, fake_twilio: tuple[FakeTwilio, str]) -> None:
    fake, _ = fake_twilio
    d = await start_daemon(machine_detection=True, voicemail_message="Please call us back.")
    rc, out, err = await patterd("call", "--config", str(d.path), "--to", CALLEE,
                                 "--var", "name=Alex", "--var", "ref=a=b")
    assert rc == 0, err
    call_id = out.strip()
    assert call_id
    first = dials(fake)[-1]
    assert first["To"] == CALLEE and first["MachineDetection"] == "DetectMessageEnd"
    params = stream_params(first)
    assert params["amd"] == "1" and params["vm"] == "Please call us back."
    assert params["var_name"] == "Alex" and params["var_ref"] == "a=b"
    record = await asyncio.to_thread(admin_get, d.port, f"/v1/calls/{call_id}")
    dial = next(e for e in record["events"] if e["type"] == "dial")
    assert dial["machine_detection"] is True and record["to"] == CALLEE

    rc, out, err = await patterd("call", "--config", str(d.path), "--to", CALLEE,
                                 "--no-machine-detection", "--voicemail", "Bye for now.")
    assert rc == 0, err
    second = dials(fake)[-1]
    assert "MachineDetection" not in second and len(dials(fake)) == 2
    assert "amd" not in stream_params(second)
    assert stream_params(second)["vm"] == "Bye for now."


async def test_machine_detection_flag_turns_it_on(
        start_daemon: Any, fake_twilio: tuple[FakeTwilio, str]) -> None:
    fake, _ = fake_twilio
    d = await start_daemon()                      # agent.machine_detection: false (default)
    rc, _, err = await patterd("call", "--config", str(d.path), "--to", CALLEE)
    assert rc == 0, err
    assert "MachineDetection" not in dials(fake)[-1]
    rc, _, err = await patterd("--config", str(d.path), "call", "--to", CALLEE,
                               "--machine-detection")
    assert rc == 0, err
    assert dials(fake)[-1]["MachineDetection"] == "DetectMessageEnd"
    # What the daemon refuses is a usage error naming the field; nothing is dialled.
    rc, out, err = await patterd("call", "--config", str(d.path), "--to", "5557654321")
    assert rc == 2 and out == "" and "HTTP 400" in err and "to: expected an E.164" in err
    assert len(dials(fake)) == 2


async def test_call_errors_without_a_daemon(tmp_path: Path) -> None:
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(twilio_raw(admin={"token": TOKEN})))
    dead = f"http://127.0.0.1:{free_port()}"
    rc, _, err = await patterd("call", "--config", str(path), "--to", CALLEE, "--url", dead)
    assert rc == 1 and f"cannot reach the daemon at {dead}/v1/calls" in err
    rc, _, err = await patterd("call", "--config", str(path), "--to", CALLEE, "--var", "oops")
    assert rc == 2 and "--var 'oops': expected NAME=VALUE" in err
    rc, _, err = await patterd("call", "--config", str(path))
    assert rc == 2 and "--to" in err and "Traceback" not in err


async def test_on_a_config_whose_carrier_is_the_simulator_call_points_at_simulate(
        tmp_path: Path) -> None:
    """The shipped offline config's carrier API is the simulator's stand-in (127.0.0.1): with
    no simulation running, `patterd call` cannot work, and says what does."""
    api = f"http://127.0.0.1:{free_port()}"      # nothing listens there
    d = Daemon(tmp_path, api, {})
    await d.start()
    try:
        rc, out, err = await patterd("call", "--config", str(d.path), "--to", CALLEE)
    finally:
        await d.stop()
    assert rc == 1 and out == ""
    assert f"could not reach the carrier API at {api}" in err
    assert "patterd simulate --config PATH --outbound" in err
    assert "ClientConnectorError" not in err and '{"error"' not in err
