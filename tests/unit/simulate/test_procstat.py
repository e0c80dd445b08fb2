"""Finding the daemon's process by its listening port and reading its CPU time."""

from __future__ import annotations

import os
import socket

import pytest

from patterd.simulate.procstat import cpu_seconds, listening_inodes, pid_listening_on

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux /proc only")


def test_finds_this_process_by_its_listening_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listening_inodes(port)
        assert pid_listening_on(port) == os.getpid()
    assert pid_listening_on(port) is None


def test_cpu_seconds_grow_with_work() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    sum(i * i for i in range(2_000_000))
    after = cpu_seconds(os.getpid())
    assert after is not None and after > before
    assert cpu_seconds(2**22 + 12345) is None
