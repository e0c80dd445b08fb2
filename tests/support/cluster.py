"""A real patterd cluster on 127.0.0.1: N ``patterd`` processes sharing one PostgreSQL store,
behind HAProxy running a templated copy of ``deploy/haproxy/haproxy.cfg``.

Each replica is ``python -m patterd --config FILE`` on its own port with the same config apart
from the port: ``server.public_url`` is HAProxy's address, ``store.url`` the test's PostgreSQL
database (or schema), the Twilio carrier's ``api_base_url`` a loopback port where the
simulator serves Twilio's REST API (start a :class:`~patterd.simulate.CarrierApi` on it, or let
``simulate_call`` do it). Fast-starting offline backends: the rules agent (DTMF rules), the
energy VAD, espeak. HAProxy's only changes: its ports and servers, its runtime socket in the
temporary directory, logs on stderr, no chroot/user switch. Use::

    async with Cluster(tmp_path, pg_url, replicas=3) as cluster:
        result = await simulate_call(cluster.config, cluster.lb_url, steps)
        cluster.replicas[0].events("media_started")     # what replica 0 logged
        cluster.drain(1)                                 # SIGTERM
        await cluster.wait_backend(1, "DOWN")
        cluster.kill(2)                                  # SIGKILL

Everything started is stopped on exit (SIGTERM, then SIGKILL after a bound): no leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from patterd.config import Config
from tests.conftest import config as build_config
from tests.conftest import _merge as merge
from patterd.simulate.telnyx_wire import TelnyxSigner
from tests.conftest import telnyx_raw, twilio_raw

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
ADMIN_TOKEN = "cluster-admin-token-0123456789abcdef"
BACKEND = "patterd"

# The agent: every turn is a key press, so no speech recognition is needed to drive a call.
AGENT: dict[str, Any] = {
    "agent": {"first_message": "Hello.", "silence_timeout": 60},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["one"], "dtmf": "1", "reply": "You pressed one."},
        {"phrases": ["two"], "dtmf": "2", "reply": "You pressed two."},
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry?"},
    "vad": {"provider": "energy"},
    "tts": {"provider": "espeak"},
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str:
    """The haproxy executable (Debian installs it in /usr/sbin)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("haproxy is not installed: `apt-get install haproxy` "
                           "(deploy/scripts/system-deps.sh test does it)")
    return found


def template_haproxy(text: str, *, bind_port: int, servers: list[tuple[str, int]],
                     socket_path: Path) -> str:
    """``deploy/haproxy/haproxy.cfg`` with this cluster's frontend port, servers and runtime
    socket; everything else (timeouts, health checks, balancing, headers) as shipped."""
    out: list[str] = []
    in_backend = servers_written = False
    for line in text.splitlines():
        stripped = line.strip()
        words = stripped.split()
        if re.match(r"^(frontend|backend|defaults|global|listen)\b", line):
            in_backend = line.startswith(f"backend {BACKEND}")
        if words[:1] in (["chroot"], ["user"], ["group"], ["daemon"]):
            continue                       # unprivileged, in the foreground
        if words[:2] == ["log", "/dev/log"]:
            line = "    log stderr format raw local0 info"
        elif words[:1] == ["maxconn"]:
            line = "    maxconn 2000"            # within a test runner's file-descriptor limit
        elif words[:2] == ["stats", "socket"]:
            line = f"    stats socket {socket_path} mode 600 level admin"
        elif words[:1] == ["bind"]:
            line = f"    bind 127.0.0.1:{bind_port}"
        elif in_backend and words[:1] == ["server"]:
            if servers_written:
                continue
            line = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers)
            servers_written = True
        out.append(line)
    assert servers_written, "no server lines in the backend to replace"
    return "\n".join(out) + "\n"


def _die_with_parent() -> None:
    """In the child: SIGKILL it if the test process dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATTERD_", "TWILIO_", "TELNYX_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONUNBUFFERED"] = "1"      # a SIGKILLed replica's last lines are in its log
    return env


@dataclass
class Replica:
    """One patterd process."""

    index: int
    name: str
    port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    signals: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def lines(self) -> list[dict[str, Any]]:
        """The replica's JSON log lines so far."""
        out = []
        with contextlib.suppress(OSError):
            for raw in self.log_path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(raw))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        """Log lines whose ``event`` is ``name``."""
        return [ln for ln in self.lines() if ln.get("event") == name]

    def call_ids(self, event: str) -> set[str]:
        """The call ids this replica logged ``event`` for."""
        return {ln["call_id"] for ln in self.events(event) if "call_id" in ln}

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, waiting up to ``timeout`` seconds (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) still running after "
                                   f"{timeout:g} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return code


class Cluster:
    """N patterd replicas behind HAProxy (see the module docstring)."""

    def __init__(self, workdir: Path, store_url: str, *, replicas: int = 3,
                 drain_timeout: float = 30.0, log_level: str = "info",
                 extra: dict[str, Any] | None = None, carrier: str = "twilio",
                 store_urls: dict[int, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_url = store_url
        self.lb_port = free_port()
        self.api_port = free_port()
        self.lb_url = f"http://127.0.0.1:{self.lb_port}"
        self.api_base_url = f"http://127.0.0.1:{self.api_port}"
        self.admin_token = ADMIN_TOKEN
        self.socket_path = self.workdir / "haproxy.sock"
        self.haproxy_log = self.workdir / "haproxy.log"
        self.haproxy: subprocess.Popen[bytes] | None = None
        sections: dict[str, Any] = dict(
            server={"host": "127.0.0.1", "port": 8000, "public_url": self.lb_url,
                    "drain_timeout": drain_timeout},
            store={"url": store_url}, admin={"token": ADMIN_TOKEN},
            logging={"level": log_level, "format": "json"}, **AGENT)
        # Telnyx: webhooks signed with this key (pass ``signer=cluster.signer`` to the calls).
        self.signer: TelnyxSigner | None = None
        if carrier == "telnyx":
            self.signer = TelnyxSigner(bytes(range(32)))
            raw = telnyx_raw(self.signer.public_key_b64, **sections)
        else:
            raw = twilio_raw(**sections)
        extra = dict(extra or {})
        if "llm" in extra:            # another agent: the rules' keys do not belong to it
            raw["llm"] = extra.pop("llm")
        raw = merge(raw, extra)
        raw["carrier"]["api_base_url"] = self.api_base_url
        self.raw = raw
        self.replicas: list[Replica] = []
        for i in range(replicas):
            port = free_port()
            per = json.loads(json.dumps(raw))
            per["server"]["port"] = port
            if store_urls and i in store_urls:     # e.g. through a TcpProxy the test cuts
                per["store"]["url"] = store_urls[i]
            path = self.workdir / f"replica-{i}.yaml"
            path.write_text(json.dumps(per, indent=2))    # JSON is YAML
            self.replicas.append(Replica(i, f"r{i}", port, path,
                                         self.workdir / f"replica-{i}.log"))
        # What simulate_call needs: the carrier as the daemon sees it, the public URL = HAProxy.
        self.config: Config = build_config(raw)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Cluster":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 60.0) -> None:
        """Start the replicas, wait for each /readyz, then HAProxy until every backend is UP."""
        for r in self.replicas:
            self._spawn(r)
        await asyncio.gather(*(self._ready(r, timeout) for r in self.replicas))
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(template_haproxy(
            HAPROXY_CFG.read_text(), bind_port=self.lb_port, socket_path=self.socket_path,
            servers=[(r.name, r.port) for r in self.replicas]))
        check = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(cfg)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the templated config:\n{check.stdout}"
                               f"{check.stderr}")
        with self.haproxy_log.open("wb") as sink:
            # -db: foreground; -W is not used: one process, killed by its pid.
            self.haproxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)],
                                            stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            preexec_fn=_die_with_parent)
        for r in self.replicas:
            await self.wait_backend(r.index, "UP", timeout=timeout)

    def _spawn(self, r: Replica) -> None:
        # Popen from this (the main) thread: PR_SET_PDEATHSIG follows the spawning thread.
        with r.log_path.open("ab") as sink:
            r.proc = subprocess.Popen(
                [sys.executable, "-m", "patterd", "--config", str(r.config_path)],
                cwd=self.workdir, env=_clean_env(), stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    async def _ready(self, r: Replica, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if r.returncode is not None:
                    raise RuntimeError(f"{r.name} exited with {r.returncode}:\n{r.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with http.get(r.url + "/readyz",
                                        timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{r.name} not ready after {timeout:g} s:\n"
                                       f"{r.log_tail()}")
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process still running, SIGKILL what is left after ``timeout``."""
        procs = [r.proc for r in self.replicas if r.proc is not None]
        if self.haproxy is not None:
            procs.append(self.haproxy)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=5)

    # ------------------------------------------------------------------ faults
    def kill(self, i: int) -> None:
        """SIGKILL replica ``i`` (a crash: no drain, no goodbye)."""
        self.replicas[i].signals.append("SIGKILL")
        self.replicas[i].proc.kill()  # type: ignore[union-attr]

    def drain(self, i: int) -> None:
        """SIGTERM replica ``i``: it drains (readyz 503, live calls go on) and exits 0."""
        self.replicas[i].signals.append("SIGTERM")
        self.replicas[i].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    async def restart(self, i: int, timeout: float = 60.0) -> None:
        """Start replica ``i`` again (after it exited) on its port and config; returns once
        its /readyz answers 200 and HAProxy has it UP."""
        r = self.replicas[i]
        assert r.returncode is not None, f"{r.name} is still running"
        self._spawn(r)
        await self._ready(r, timeout)
        await self.wait_backend(i, "UP", timeout=timeout)

    # ------------------------------------------------------------------ HAProxy
    async def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API (its stats socket)."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def backend_states(self) -> dict[str, str]:
        """Server name → HAProxy's status (``UP``, ``DOWN``, ``UP 1/2``, ``NOLB``, …)."""
        csv = await self.runtime("show stat")
        lines = csv.splitlines()
        header = lines[0].lstrip("# ").split(",")
        px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
        out = {}
        for line in lines[1:]:
            cols = line.split(",")
            if len(cols) > st and cols[px] == BACKEND and cols[sv] not in ("BACKEND",
                                                                             "FRONTEND"):
                out[cols[sv]] = cols[st]
        return out

    async def wait_backend(self, i: int, state: str, timeout: float = 10.0) -> float:
        """Wait until HAProxy reports replica ``i`` exactly ``state``; the seconds it took."""
        name = self.replicas[i].name
        started = time.monotonic()
        seen = ""
        while time.monotonic() - started < timeout:
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.haproxy.returncode}:\n"
                                   + self.haproxy_log.read_text(errors="replace")[-3000:])
            with contextlib.suppress(OSError):
                seen = (await self.backend_states()).get(name, "")
                if seen == state:
                    return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise TimeoutError(f"HAProxy reports {name} as {seen!r}, not {state!r}, after "
                           f"{timeout:g} s")

    # ------------------------------------------------------------------ reading
    def who_logged(self, event: str, call_id: str) -> list[int]:
        """The replicas that logged ``event`` for ``call_id``."""
        return [r.index for r in self.replicas if call_id in r.call_ids(event)]

    def count(self, event: str) -> int:
        """How many ``event`` lines all replicas logged together."""
        return sum(len(r.events(event)) for r in self.replicas)

    async def admin_get(self, path: str, session: aiohttp.ClientSession) -> tuple[int, Any]:
        """GET an admin API path through HAProxy (any replica answers)."""
        async with session.get(self.lb_url + path,
                               headers={"Authorization": f"Bearer {self.admin_token}"},
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body
