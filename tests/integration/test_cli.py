"""The ``patterd`` command as users run it: check, version, serve, signals, exit codes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import twilio_raw
from tests.support.signing import TWILIO_TOKEN
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def patterd(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "patterd", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                              **(env or {})})


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_version() -> None:
    out = patterd("version")
    assert out.returncode == 0 and out.stdout.strip() == "patterd 0.1.0"


def test_check_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    path = write_config(tmp_path, twilio_raw(admin={"token": "admin-token-0123456789abcdef"}))
    out = patterd("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["carrier"]["auth_token"] == "********"
    assert shown["admin"]["token"] == "********"
    assert shown["server"]["port"] == 8000
    assert TWILIO_TOKEN not in out.stdout and "admin-token" not in out.stdout


def test_shipped_configs_are_valid() -> None:
    assert patterd("check", "--config", "config/patter.yaml").returncode == 0
    env = {"PATTERD_PUBLIC_URL": "https://x.example.com", "PATTERD_PHONE_NUMBER": "+15550001234",
           "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t",
           "TELNYX_API_KEY": "k", "TELNYX_CONNECTION_ID": "1",
           "TELNYX_PUBLIC_KEY": "Ci5Tdzd6n5C6Iu2YvHCnEHh0rjvOrvGw5hQpJ5Sv8Bg=",
           "DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk", "ANTHROPIC_API_KEY": "sk-ant",
           "ELEVENLABS_API_KEY": "el", "CARTESIA_API_KEY": "ca"}
    for name in ("twilio", "telnyx", "cloud"):
        out = patterd("check", "--config", f"config/examples/{name}.yaml", env=env)
        assert out.returncode == 0, out.stderr


def test_bad_file_exits_2_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    raw = twilio_raw(server={"port": "x"}, agent={"barg_in": True})
    raw["carrier"] = {"provider": "twilio"}
    path = write_config(tmp_path, raw)
    out = patterd("check", "--config", str(path), env={"TWILIO_ACCOUNT_SID": "",
                                                        "TWILIO_AUTH_TOKEN": ""})
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for line in ("server.port: expected an integer, got 'x'",
                 "agent.barg_in: unknown key (did you mean 'barge_in'?)",
                 "carrier.account_sid: required (or set TWILIO_ACCOUNT_SID)",
                 "carrier.auth_token: required (or set TWILIO_AUTH_TOKEN)"):
        assert line in out.stderr
    # Serving a bad file is refused the same way.
    assert patterd("--config", str(path)).returncode == 2


def test_missing_file_and_usage_errors_exit_2(tmp_path: Path) -> None:
    out = patterd("check", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read the file" in out.stderr
    assert patterd("check", env={"PATTERD_CONFIG": ""}).returncode == 2
    assert patterd("frobnicate").returncode == 2


def _serve(tmp_path: Path, env: dict[str, str] | None = None, **sections  # type: ignore[no-untyped-def]
           ) -> tuple[subprocess.Popen[str], int, Path]:
    port = free_port()
    raw = twilio_raw(server={"host": "127.0.0.1", "port": port, "drain_timeout": 5},
                     logging={"level": "info"}, **sections)
    path = write_config(tmp_path, raw)
    proc = subprocess.Popen([sys.executable, "-m", "patterd"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PATTERD_CONFIG": str(path),
                                 **(env or {})})
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"daemon did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    return proc, port, path


def test_serve_then_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    proc, port, _ = _serve(tmp_path)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        assert b"patterd_calls_active" in r.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    # Start-up lines (e.g. store_retention_started) may come before "listening".
    assert events.index("listening") < events.index("draining") and events[-1] == "stopped"


def _log_until(proc: subprocess.Popen[str], event: str, timeout: float) -> list[str]:
    """The daemon's stderr lines up to and including the first with ``event``."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("event") == event:
            return lines
    raise AssertionError(f"no {event!r} in the daemon's log: {lines[-5:]}")


def test_sighup_reload_good_and_bad(tmp_path: Path) -> None:
    proc, _, path = _serve(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["agent"] = {"first_message": "Reloaded hello"}
    path.write_text(yaml.safe_dump(raw))
    proc.send_signal(signal.SIGHUP)
    seen = _log_until(proc, "reloaded", timeout=30)    # the providers restart: seconds
    path.write_text("server: [oops")
    proc.send_signal(signal.SIGHUP)
    seen += _log_until(proc, "reload_rejected", timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    events = [json.loads(line) for line in seen + err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "reloaded" in names and "reload_rejected" in names
    # The agent changed, so the providers were restarted in the background (the bad file
    # may be rejected before that finishes); the good file's reload still completed.
    assert next(e for e in events if e["event"] == "reloaded").get("backends") == "restarted"
    rejected = next(e for e in events if e["event"] == "reload_rejected")
    assert any("expected" in p for p in rejected["problems"]), rejected


def test_systemd_notify_ready_and_stopping(tmp_path: Path) -> None:
    sock_path = os.path.join(tempfile.mkdtemp(), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(10)
    try:
        proc, _, _ = _serve(tmp_path, env={"NOTIFY_SOCKET": sock_path})
        assert sock.recv(1024).startswith(b"READY=1")
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(1024).startswith(b"STOPPING=1")
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        sock.close()


def test_port_in_use_is_a_runtime_failure(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, twilio_raw(server={"host": "127.0.0.1", "port": port}))
        out = patterd("--config", str(path))
    assert out.returncode == 1
    failed = [json.loads(line) for line in out.stderr.splitlines()
              if '"startup_failed"' in line]
    assert len(failed) == 1, out.stderr
    assert failed[0]["component"] == "server" and failed[0]["path"] == f"127.0.0.1:{port}"
    assert failed[0]["error"] == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_startup_failed_names_the_component(tmp_path: Path) -> None:
    """A provider that cannot start, a store that cannot open: which part, and what file."""
    path = write_config(tmp_path, twilio_raw(tts={"provider": "espeak", "voice": "alloy"}))
    out = patterd("--config", str(path))
    (failed,) = [json.loads(line) for line in out.stderr.splitlines()
                 if '"startup_failed"' in line]
    assert out.returncode == 1
    assert failed["component"] == "backends"
    assert failed["error"] == "ValueError: espeak TTS: unknown voice 'alloy'"
    (tmp_path / "taken").write_text("a file, not a folder")
    path = write_config(tmp_path, twilio_raw(
        store={"url": f"sqlite:///{tmp_path / 'taken' / 'calls.db'}"}))
    out = patterd("--config", str(path))
    (failed,) = [json.loads(line) for line in out.stderr.splitlines()
                 if '"startup_failed"' in line]
    assert failed["component"] == "store" and str(tmp_path / "taken") in failed["error"]
    assert failed["path"] == f"sqlite:///{tmp_path / 'taken' / 'calls.db'}"


@pytest.mark.parametrize("cmd", [["serve", "--config"], ["--config"]])
def test_serve_spellings(tmp_path: Path, cmd: list[str]) -> None:
    path = write_config(tmp_path, twilio_raw(server={"port": "bad"}))
    out = patterd(*cmd, str(path))
    assert out.returncode == 2 and "server.port" in out.stderr


@pytest.mark.parametrize("cmd", [["--config", "{path}", "check"], ["--config={path}", "check"],
                                 ["check", "--config", "{path}"]])
def test_global_config_before_or_after_check(tmp_path: Path, cmd: list[str]) -> None:
    path = write_config(tmp_path, twilio_raw(server={"port": 8123}))
    out = patterd(*(a.format(path=path) for a in cmd))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["server"]["port"] == 8123


@pytest.mark.parametrize("cmd", [["--config", "{path}", "simulate"],
                                 ["--config={path}", "simulate"],
                                 ["simulate", "--config", "{path}"],
                                 ["--config", "{other}", "simulate", "--config", "{path}"]])
def test_global_config_before_simulate_runs_the_simulator(tmp_path: Path, cmd: list[str]
                                                           ) -> None:
    """The simulator gets the file (the last --config wins), and the daemon is not started."""
    path = write_config(tmp_path, twilio_raw(server={"port": "bad"}))
    other = tmp_path / "missing.yaml"
    out = patterd(*(a.format(path=path, other=other) for a in cmd), timeout=20)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"patterd simulate: invalid configuration in {path}:")
    assert "server.port" in out.stderr


def test_global_config_before_simulate_help_and_call_and_version(tmp_path: Path) -> None:
    path = write_config(tmp_path, twilio_raw())
    sim = patterd("--config", str(path), "simulate", "--help")
    assert sim.returncode == 0 and sim.stdout.startswith("usage: patterd simulate")
    # "call" parses its own options after the global --config: no admin token → exit 2.
    call = patterd("--config", str(path), "call", "--to", "+15557654321",
                   env={"PATTERD_ADMIN_TOKEN": ""})
    assert call.returncode == 2 and "admin.token is not set" in call.stderr
    assert patterd("--config", str(path), "version").stdout.strip() == "patterd 0.1.0"
    # A config file that happens to be called "simulate" is a file, not the subcommand.
    (tmp_path / "simulate").write_text(yaml.safe_dump(twilio_raw(server={"port": "bad"})))
    out = patterd("--config", "simulate", "check", env={"PATTERD_CONFIG": ""}, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("patterd: invalid configuration in")
