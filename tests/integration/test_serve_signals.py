"""Signals as operators send them: Ctrl+C at a terminal drains like SIGTERM (the decoder
processes keep working through the drain), and a daemon built with the Python API logs like the
CLI's and survives SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from patterd.config import load_config
from patterd.simulate import HUNG_UP, Wait, make_api, say, simulate_call
from tests.support.signing import TWILIO_SID
from tests.support.net import free_port, readyz

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "patter.yaml"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def shipped_env(tmp_path: Path) -> tuple[dict[str, str], int]:
    """The shipped offline config on a free port, with a store of its own."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATTERD_", "TWILIO_", "TELNYX_"))}
    env.update(PATTERD_HOST="127.0.0.1", PATTERD_PORT=str(port),
               PATTERD_PUBLIC_URL=f"http://127.0.0.1:{port}",
               PATTERD_STORE_URL=f"sqlite:///{tmp_path / 'calls.db'}",
               TWILIO_API_BASE_URL=f"http://127.0.0.1:{free_port()}")
    return env, port


def start_shipped(tmp_path: Path, env: dict[str, str], port: int
                  ) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        # A session of its own: its process group stands for a terminal's foreground job.
        proc = subprocess.Popen([sys.executable, "-m", "patterd", "--config", str(SHIPPED)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out,
                                start_new_session=True)
    try:
        wait_for(lambda: readyz(port) == 200 or proc.poll() is not None, 30, "no start")
        assert proc.poll() is None, log.read_text()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, log


async def test_ctrl_c_drains_a_live_call_with_working_recognition(tmp_path: Path) -> None:
    env, port = shipped_env(tmp_path)
    cfg = load_config(SHIPPED, env=env)
    proc, log = start_shipped(tmp_path, env, port)
    try:
        workers = children(proc.pid)
        assert workers, "the offline config runs pocketsphinx decoder processes"
        api = make_api(cfg)
        assert api is not None
        await api.start()
        goodbye = await say("goodbye")
        live = asyncio.create_task(simulate_call(
            # Until the agent hangs up: "goodbye" must be recognised during the drain.
            cfg, f"http://127.0.0.1:{port}", [Wait(1.0), goodbye, Wait(15)], api=api,
            timeout=30))
        deadline = time.monotonic() + 10
        while '"media_started"' not in log.read_text():
            assert time.monotonic() < deadline and not live.done(), log.read_text()
            await asyncio.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)          # Ctrl+C: the whole foreground group
        await asyncio.sleep(0.3)
        assert readyz(port) == 503
        assert all(alive(w) for w in workers)
        result = await live                         # said during the drain, and understood
        await api.close()
        assert result.outcome == HUNG_UP, (result.outcome, result.detail, log.read_text())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    events = [json.loads(line) for line in err.splitlines() if line.strip()]  # all JSON
    said = [e["text"] for e in events if e["event"] == "caller_said"]
    assert said and "goodbye" in said[-1], said
    names = [e["event"] for e in events]
    assert names.index("draining") < names.index("caller_said") and names[-1] == "stopped"
    wait_for(lambda: not any(alive(w) for w in workers), 5, "decoders outlived the daemon")


def test_decoders_exit_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """They are out of the daemon's process group, but their input closes with it."""
    env, port = shipped_env(tmp_path)
    proc, _ = start_shipped(tmp_path, env, port)
    workers = children(proc.pid)
    assert workers
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(alive(w) for w in workers), 5, "decoders outlived the daemon")


API_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from patterd import Patter, Twilio
    phone = Patter(carrier=Twilio(configure_number=False), phone_number="+15550001234",
                   server={"host": "127.0.0.1", "port": int(sys.argv[1]), "drain_timeout": 2},
                   store={"url": "sqlite:///:memory:"},
                   agent={"first_message": "${GREETING}"})
    asyncio.run(phone.serve())
""")


def test_python_api_daemon_logs_json_masked_and_survives_sighup(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": "env-token",
           "PATTERD_PUBLIC_URL": f"http://127.0.0.1:{port}", "GREETING": "Hi there.",
           "PATTERD_ADMIN_TOKEN": "admin-token-from-env-0123"}
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", API_SCRIPT, str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_for(lambda: readyz(port) == 200 or proc.poll() is not None, 30, "no start")
        assert proc.poll() is None, log.read_text()
        # The admin API is on: its token came from PATTERD_ADMIN_TOKEN.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/calls", headers={
            "Authorization": "Bearer admin-token-from-env-0123"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGHUP)             # no file to reload: logged, not fatal
        wait_for(lambda: "reload_unavailable" in log.read_text() or proc.poll() is not None,
                 5, "SIGHUP was not handled")
        assert proc.poll() is None and readyz(port) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    listening = next(e for e in events if e["event"] == "listening")
    assert listening["phone_number"] == "+*******1234"
    assert "+15550001234" not in text and "env-token" not in text
    assert [e["event"] for e in events][-1] == "stopped"
