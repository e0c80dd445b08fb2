"""Whether the process that wrote a call's part still runs: host, pid and the process's start,
so that a pid reused by another process is not taken for the one that died."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from patterd.store.processes import (from_writer_name, process_start, running,
                                     this_process)

HOST = socket.gethostname()


def fake_proc(tmp_path: Path, pid: int, start_ticks: str, state: str = "S") -> Path:
    """A /proc with one process (``stat`` as Linux writes it, a name with spaces and a
    parenthesis) and a boot id."""
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("boot-1\n")
    (tmp_path / str(pid)).mkdir()
    fields = [state, "1", "1", "1", "0", "-1", "0"] + ["0"] * 12 + [start_ticks, "0"]
    (tmp_path / str(pid) / "stat").write_text(f"{pid} (python (x) y) {' '.join(fields)}\n")
    return tmp_path


def test_this_process_runs() -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.host == HOST and me.start
    assert running(me.host, me.pid, me.start) is True


def test_a_process_that_exited_does_not_run() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start(child.pid)
    child.wait()
    assert start and process_start(child.pid) is None
    assert running(HOST, child.pid, start) is False


def test_a_reused_pid_is_another_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "777")
    assert process_start(4242, proc) == "boot-1/777"
    assert running(HOST, 4242, "boot-1/777", proc) is True
    assert running(HOST, 4242, "boot-1/123", proc) is False     # same pid, started later
    assert running(HOST, 4242, "boot-0/777", proc) is False     # before a reboot


def test_a_zombie_does_not_run(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "777", state="Z")
    assert running(HOST, 4242, "boot-1/777", proc) is False


def test_another_host_cannot_be_told() -> None:
    assert running(HOST + "-elsewhere", os.getpid(), "") is None


def test_writer_names() -> None:
    assert from_writer_name("vm:123:ab12cd34") == ("vm", 123)
    assert from_writer_name("legacy") is None
    assert from_writer_name("carrier-price") is None
    assert from_writer_name("vm:x:1") is None
