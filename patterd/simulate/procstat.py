"""The daemon's process, found from its listening port, and its CPU time (Linux ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"   # TCP state code of a listening socket in /proc/net/tcp


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def pid_listening_on(port: int, proc: Path = Path("/proc")) -> int | None:
    """The PID of the process listening on ``port`` (the lowest one if several share it),
    or None when none of this user's processes does."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue            # another user's process, or gone
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) in targets:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return min(found) if found else None


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds the process (all its threads) has used, or None."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])   # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
