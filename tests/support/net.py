"""Loopback helpers for tests that start daemons as processes: a free port, a readiness probe,
and starting ``patterd --config PATH`` until its ``/readyz`` says 200."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readyz(port: int) -> int:
    """``GET /readyz``'s status on ``port`` (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def start_daemon(path: Path, port: int, *, timeout: float = 30.0,
                       env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m patterd --config path`` with piped output, once ``/readyz`` answers 200
    (the process's stderr in the failure message if it dies or times out first)."""
    proc = subprocess.Popen([sys.executable, "-m", "patterd", "--config", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while readyz(port) != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the daemon did not become ready: {proc.stderr.read()}")
        await asyncio.sleep(0.1)
    return proc
