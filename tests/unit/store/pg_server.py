"""A throwaway PostgreSQL server from the installed binaries, for tests.

``initdb`` into a temporary folder, then ``pg_ctl start`` on a free 127.0.0.1 port with trust
authentication. PostgreSQL refuses to run as root, so when the tests run as root the folder is
handed to the ``postgres`` user (or ``nobody``) and the binaries run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl (or those on PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                        else 0)
    for path in reversed(candidates):
        if (Path(path) / "initdb").exists() and (Path(path) / "pg_ctl").exists():
            return Path(path)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) are installed: "
                       "install Debian's postgresql package, or point PATTERD_TEST_PG_URL "
                       "at a running server")


def free_port() -> int:
    """A TCP port nothing listens on at the moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no postgres or nobody user to run as")


class ThrowawayPostgres:
    """One private PostgreSQL server: ``start``, ``stop``, ``start`` again, ``destroy``."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="patterd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    @property
    def admin_url(self) -> str:
        """A superuser URL to its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.root)}
        out = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False,
                             **kwargs)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr.strip()}\n"
                               f"{tail}")
        return out

    def _initdb(self) -> None:
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop at once, disconnecting every client (``-m fast``)."""
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        """Whether the server is up."""
        try:
            self._cmd("pg_ctl", "-D", str(self.data), "status", timeout=30)
        except RuntimeError:
            return False
        return True

    def destroy(self) -> None:
        """Stop it if running and delete its folder."""
        try:
            if self.running():
                self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
