"""Drain with live calls: SIGTERM → /readyz 503, new calls declined, live calls go on until they
end or drain_timeout passes (then a goodbye and a carrier hang-up), exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from patterd.config import load_config
from patterd.simulate import TelnyxSigner, Wait, WaitForAgent, make_api, simulate_call
from tests.conftest import telnyx_raw, twilio_raw
from tests.support.net import free_port, readyz, start_daemon



def drain_sections(port: int) -> dict[str, Any]:
    """A daemon on ``port`` with a 4 s drain and a call that would not end by itself."""
    return {"server": {"host": "127.0.0.1", "port": port, "drain_timeout": 4,
                       "public_url": f"http://127.0.0.1:{port}"},
            "agent": {"first_message": "Hello.", "silence_timeout": 60},
            "logging": {"level": "info"}}


def write_config(tmp_path: Path, raw: dict[str, Any], api_path: str) -> tuple[Path, Any]:
    """The config file (the carrier's REST API on a free port, served by the simulator)."""
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}{api_path}"
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, load_config(path)


async def test_sigterm_drains_live_calls_then_exits_0(tmp_path: Path) -> None:
    port = free_port()
    path, cfg = write_config(tmp_path, twilio_raw(**drain_sections(port)), "")
    proc = await start_daemon(path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        api = make_api(cfg)            # the carrier's REST API, shared by both calls
        await api.start()
        live = asyncio.create_task(simulate_call(cfg, url, [WaitForAgent(), Wait(30)],
                                                 api=api, timeout=60))
        await asyncio.sleep(2.5)                      # the call is up and greeted
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert readyz(port) == 503
        declined = await simulate_call(cfg, url, [Wait(1)], api=api, timeout=20)
        assert declined.outcome == "rejected"
        result = await live
        # The live call was not dropped: it went on until drain_timeout, then the agent said
        # goodbye and hung up through the carrier's REST API.
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
        assert any(a.fields.get("Status") == "completed" for a in result.actions)
        assert time.monotonic() - began >= 3.5
        assert proc.wait(timeout=40) == 0
        await api.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert '"event": "drain_timeout"' in err and '"event": "stopped"' in err


async def test_telnyx_drain_rejects_new_calls_through_the_rest_api(tmp_path: Path) -> None:
    """On Telnyx the webhook answer is ignored: while draining, a new call.initiated is
    declined with the REST reject action (USER_BUSY), and /readyz says 503."""
    port = free_port()
    signer = TelnyxSigner(bytes(range(32)))
    path, cfg = write_config(tmp_path, telnyx_raw(signer.public_key_b64,
                                                  **drain_sections(port)), "/v2")
    proc = await start_daemon(path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        api = make_api(cfg)            # Telnyx's REST API as the simulator serves it
        assert api is not None
        await api.start()
        live = asyncio.create_task(simulate_call(cfg, url, [WaitForAgent(), Wait(30)],
                                                 api=api, signer=signer, timeout=60))
        await asyncio.sleep(2.5)                      # the call is up and greeted
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert readyz(port) == 503
        declined = await simulate_call(cfg, url, [Wait(1)], api=api, signer=signer,
                                       timeout=20)
        assert declined.outcome == "rejected", (declined.outcome, declined.detail)
        # The REST API received a reject (and nothing else) for the new call.
        assert [(a.action, a.fields.get("cause")) for a in declined.actions] == [
            ("reject", "USER_BUSY")]
        assert [w.status for w in declined.webhooks if w.kind == "call.initiated"] == [200]
        result = await live
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
        assert [a.action for a in result.actions][-1] == "hangup"
        assert proc.wait(timeout=40) == 0
        await api.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert '"event": "call_rejected"' in err and '"reason": "draining"' in err
