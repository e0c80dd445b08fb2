"""A patterd daemon as a real process that a test can ``kill -9`` and start again (crash
recovery tests and benchmarks/crash_recovery.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from patterd.config import Config, load_config
from patterd.simulate import TelnyxSigner
from tests.conftest import telnyx_raw, twilio_raw
from tests.support.net import ROOT, free_port, readyz

SEED = bytes(range(32))     # the simulated Telnyx's signing key


class Daemon:
    """``python -m patterd --config …`` on its own port, logging to a file."""

    def __init__(self, tmp: Path, name: str, cfg_raw: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg_raw["server"] = {"host": "127.0.0.1", "port": self.port, "public_url": self.url,
                             "drain_timeout": 1}
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(cfg_raw))
        self.config: Config = load_config(self.path)
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> float:
        """Start it; returns once ``/readyz`` says 200 (the time that took)."""
        began = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "patterd", "--config",
                                          str(self.path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=out, env=dict(os.environ))
        while readyz(self.port) != 200:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() - began < 30, "the daemon did not start"
            await asyncio.sleep(0.02)
        return time.monotonic() - began

    def kill(self) -> None:
        """``kill -9``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of event ``name``."""
        lines = [line for line in self.log.read_text().splitlines() if f'"{name}"' in line]
        return [e for e in map(json.loads, lines) if e.get("event") == name]


def twilio_daemon(tmp: Path, name: str, common: dict[str, Any]) -> Daemon:
    """A Twilio daemon with the config sections ``common`` (its REST API on a free port)."""
    raw = twilio_raw(**common)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return Daemon(tmp, name, raw)


def telnyx_daemon(tmp: Path, name: str, common: dict[str, Any],
                  api_url: str | None = None) -> Daemon:
    """A Telnyx daemon (webhooks signed with ``SEED``'s key; its REST API at ``api_url``)."""
    raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **common)
    raw["carrier"]["api_base_url"] = api_url or f"http://127.0.0.1:{free_port()}/v2"
    return Daemon(tmp, name, raw)
