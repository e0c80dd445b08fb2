"""Re-reading the config (SIGHUP) never stalls the daemon, and a storm of reloads starts one set
of backends: the file is parsed in a worker thread within size/alias limits, a hostile file is
refused (at start-up: exit 2; on SIGHUP: ``reload_rejected``, the running config stays), and
SIGHUPs that arrive during a reload coalesce into one more run after it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from patterd.call.backends import Backends
from patterd.config import Config
from patterd.config.bounded_yaml import MAX_NODES
from patterd.reload import Reloader
from tests.conftest import config, gateway_of, twilio_raw
from tests.integration.test_serve_signals import (SHIPPED, alive, children, shipped_env,
                                                  wait_for)
from tests.support.net import ROOT, readyz
from tests.support.stub_backends import stub_backends
from tests.unit.test_config_limits import alias_bomb

# Said once in every refusal of the bomb: the file, and the limit that refused it.
REFUSED = f"more than {MAX_NODES} nodes once its aliases (*name) are expanded"
HEALTHZ_BOUND = 0.1      # seconds: /healthz answers within this while a reload runs
TARGETS = 20_000         # transfer targets in a large valid file (two nodes each)


def healthz_latency(port: int) -> float:
    """Seconds one ``GET /healthz`` took."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    return time.monotonic() - started


# -- start-up ----------------------------------------------------------------------------------

MEASURED = textwrap.dedent("""
    import json, resource, sys, time
    from patterd.cli import main
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "seconds": time.monotonic() - started,
                      "grown_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
""")


def test_an_alias_bomb_at_start_up_exits_2_quickly_naming_the_file(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    # Seven levels: 9**7 strings, ~5 s and ~170 MB before the limits; nine never finish.
    bomb.write_text(alias_bomb(levels=7))
    for command in (["check", "--config", str(bomb)], ["--config", str(bomb)]):
        out = subprocess.run([sys.executable, "-c", MEASURED, *command], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        figures = json.loads(out.stdout.splitlines()[-1])
        print(f"\npatterd {command[0]}: exit {figures['code']} after "
              f"{figures['seconds'] * 1000:.0f} ms, peak RSS +{figures['grown_kib']} KiB")
        assert figures["code"] == 2, out.stderr
        assert out.stderr.startswith(f"patterd: invalid configuration in {bomb}:\n"), out.stderr
        assert f"{bomb}: refused at line " in out.stderr and REFUSED in out.stderr
        assert "Traceback" not in out.stderr
        assert figures["seconds"] < 1.0 and figures["grown_kib"] < 20_000, figures


# -- SIGHUP on a running daemon ------------------------------------------------------------------

async def test_a_reload_is_parsed_off_the_loop_and_a_bomb_leaves_the_running_config(
        daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A large valid file (tens of thousands of nodes: about a second of parsing) and then
    an alias bomb: /healthz answers within ``HEALTHZ_BOUND`` throughout; the bomb is
    rejected and the running config stays."""
    raw = twilio_raw(store={"url": f"sqlite:///{tmp_path}/c.db"})
    client = await daemon(config(raw))
    gw = gateway_of(client)
    started_sets: list[Config] = []

    async def stub_set(cfg: Config, **_: object) -> object:   # the providers are not the point
        started_sets.append(cfg)
        return stub_backends(cfg)

    monkeypatch.setattr(Backends, "from_config", stub_set)
    path = tmp_path / "patter.yaml"
    # A long directory of transfer desks: within the limits, but 40,000 nodes to compose.
    desks = {f"desk{i}": f"+1555{i:07d}" for i in range(TARGETS)}
    path.write_text(yaml.safe_dump({**raw, "agent": {"transfer_targets": desks}}))
    reloader = Reloader(gw, path)

    async def during(reload: asyncio.Task[None]) -> tuple[float, int]:
        """The slowest /healthz answer while ``reload`` runs, and how many were asked."""
        slowest, asked = 0.0, 0
        while not reload.done():
            started = time.monotonic()
            resp = await client.get("/healthz")
            assert resp.status == 200
            slowest, asked = max(slowest, time.monotonic() - started), asked + 1
            await asyncio.sleep(0.01)
        await reload
        return slowest, asked

    with capture_logs() as logs:
        started = time.monotonic()
        slowest, asked = await during(reloader.request())
        took = time.monotonic() - started
    print(f"\nreload of a {path.stat().st_size // 1024} KiB file: {took:.2f} s; slowest "
          f"/healthz meanwhile {slowest * 1000:.0f} ms of {asked}")
    assert [e["event"] for e in logs if e["event"].startswith("reload")] == ["reloaded"], logs
    assert len(gw.config.agent.transfer_targets) == TARGETS and len(started_sets) == 1
    assert asked >= 5 and slowest < HEALTHZ_BOUND, (slowest, asked)

    applied = gw.config
    path.write_text(alias_bomb())
    with capture_logs() as logs:
        slowest, asked = await during(reloader.request())
    assert slowest < HEALTHZ_BOUND, slowest
    assert gw.config is applied and len(started_sets) == 1
    [rejected] = [e for e in logs if e["event"] == "reload_rejected"]
    assert rejected["problems"][0].startswith(f"{path}: refused at line ")
    assert REFUSED in rejected["problems"][0]


def test_a_storm_of_sighups_starts_one_backend_set(tmp_path: Path) -> None:
    """20 SIGHUPs after one change of the shipped offline config (pocketsphinx decoder
    processes): one new set of backends, the old one closed, /healthz answering throughout."""
    env, port = shipped_env(tmp_path)
    path = tmp_path / "patter.yaml"
    path.write_text(SHIPPED.read_text())
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "patterd", "--config", str(path)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_for(lambda: readyz(port) == 200 or proc.poll() is not None, 30, "no start")
        assert proc.poll() is None, log.read_text()
        first = children(proc.pid)
        assert first, "the offline config runs pocketsphinx decoder processes"
        path.write_text(path.read_text().replace("Thanks for calling Example Company.",
                                                 "Hello from the reloaded file."))

        def events(name: str) -> list[dict]:  # type: ignore[type-arg]
            return [e for e in (json.loads(line) for line in log.read_text().splitlines()
                                if line.startswith("{")) if e["event"] == name]

        for _ in range(20):          # spaced so that each is delivered (pending ones merge)
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(0.02)
        most, slowest = len(first), 0.0
        deadline = time.monotonic() + 60
        # Until the new set runs, the old one is closed, and the queued re-read is done.
        while not (events("reloaded") and len(events("reloaded")) >= 1 + bool(
                events("reload_queued")) and not any(alive(p) for p in first)):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            most = max(most, len(children(proc.pid)))
            slowest = max(slowest, healthz_latency(port))
            time.sleep(0.05)
        time.sleep(1.0)                              # room for a wrongly started extra set
        now = children(proc.pid)
        print(f"\n20 SIGHUPs: decoder processes {len(first)} → at most {most} → {len(now)}; "
              f"slowest /healthz {slowest * 1000:.0f} ms")
        restarted = [e for e in events("reloaded") if e.get("backends") == "restarted"]
        assert len(restarted) == 1, events("reloaded")
        assert not events("reload_rejected")
        assert most <= 2 * len(first), most          # the running set and one new one
        assert len(now) == len(first) and not set(now) & set(first), (first, now)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()
