"""Which process wrote a call's part, and whether that process still runs (crash recovery with
SQLite, where every writer of the file runs on this host).

A process is named by its host, its pid and its *start*: the boot id and the process's start
time in clock ticks since boot (``/proc/<pid>/stat``), so that a pid reused by another process
(after a reboot, or pid 1 again in a restarted container) is never taken for the dead one.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process: host, pid, and its start (``""`` where the platform cannot say)."""

    host: str
    pid: int
    start: str


def _boot_id(proc: Path) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int, proc: Path = PROC) -> str | None:
    """``<boot id>/<start ticks>`` of process ``pid``; None when no such process runs
    (a zombie counts as gone), ``""`` when ``/proc`` cannot tell (another platform)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id(proc)}/{fields[19]}"


@functools.cache
def this_process() -> ProcessId:
    """This process (computed once)."""
    pid = os.getpid()
    return ProcessId(socket.gethostname(), pid, process_start(pid) or "")


def running(host: str, pid: int, start: str, proc: Path = PROC) -> bool | None:
    """Whether the process still runs: True or False on this host, None (unknown) on
    another host. Without ``/proc`` the pid alone is checked."""
    if host != socket.gethostname():
        return None
    if pid <= 0:
        return False
    now = process_start(pid, proc)
    if now is None:
        return False
    if now and start:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def from_writer_name(writer: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a writer name ``host:pid:tag`` (:func:`~.merge.writer_name`), or
    None for a name of another shape (``legacy``, ``carrier-price``)."""
    host, _, rest = writer.partition(":")
    pid, _, _ = rest.partition(":")
    if not host or not pid.isdigit():
        return None
    return host, int(pid)
