"""Fault drills with live calls (issue 11, item 8): the call-record store unreachable, the
recording disk full. The other calls are unaffected, and every call ends with a complete
record that says what failed.

The store outage runs PostgreSQL behind a TCP proxy that refuses connections and drops the
open ones (``OUTAGE`` seconds; the store writer and the cluster loops go through exactly the
same failures and retries at 30 s, only with more of them). The disk is a small tmpfs mounted
under ``recording.local_dir`` (root is needed; without it the per-process file size limit
stands in: the same failed write mid-file, as EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patterd.simulate import Dtmf, TelnyxSigner, WaitForAgent, say, simulate_call
from patterd.simulate.runner import make_api
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.net import free_port
from tests.support.stub_backends import stub_backends
from tests.support.tcp_proxy import proxied_url

PHRASE = "what are your opening hours"
AGENT = {
    "agent": {"first_message": "Hello, how can I help?"},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["opening hours", "hours"], "reply": "We are open nine to five."},
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry?"},
}
OUTAGE = 6.0           # seconds the store is unreachable
SEED = bytes(range(32))
TRANSCRIPT = [("agent", "Hello, how can I help?"), ("caller", PHRASE),
              ("agent", "We are open nine to five."), ("caller", ""), ("agent", "Goodbye!")]


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


def carrier_cfg(carrier: str, **sections: Any) -> Any:
    if carrier == "twilio":
        raw = twilio_raw(**AGENT, **sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    else:
        raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **AGENT, **sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


async def conversation() -> list[Any]:
    """Greeting, one spoken turn, then 9: goodbye and the agent hangs up."""
    return [WaitForAgent(), await say(PHRASE), WaitForAgent(), Dtmf("9"),
            WaitForAgent(required=False)]


def assert_unaffected(result: Any) -> None:
    """A call that went as if nothing had happened: both turns answered promptly."""
    assert result.ok and result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
    assert len(result.turns) == 2 and all(t.latency is not None and t.latency < 2.0
                                          for t in result.turns), result.turns
    greeted = min(ln.start for ln in result.lines if ln.who == "agent")
    assert greeted < 2.0, [(w.kind, w.at, w.status) for w in result.webhooks]   # answered at once


def lines(rec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(ln["role"], ln["text"]) for ln in rec["transcript"]]


@pytest.mark.parametrize("carrier, outage", [("twilio", "cut"), ("telnyx", "hang")])
async def test_store_unreachable_during_live_calls(daemon, pg_url: str, carrier: str,  # type: ignore[no-untyped-def]  # noqa: F811
                                                   outage: str) -> None:
    """``cut``: connections refused and dropped; ``hang``: a black hole, where every request
    waits for its own timeout (the daemon's dependence on the store shows as lost time)."""
    proxy, via_proxy = await proxied_url(pg_url)
    cfg = carrier_cfg(carrier, store={"url": via_proxy})
    client = await daemon(cfg, stub_backends(cfg, stt_text=PHRASE))
    gw = gateway_of(client)
    gw.store_writer.retry_max = 0.5              # a short retry: back within 0.5 s of the store
    api = make_api(cfg)
    assert api is not None
    await api.start()
    steps = await conversation()

    async def call(delay: float) -> Any:
        await asyncio.sleep(delay)
        return await simulate_call(cfg, url_of(client), steps, api=api, timeout=40,
                                   signer=TelnyxSigner(SEED))

    try:
        # three calls live when the store goes away, one starting in the middle of it
        calls = [asyncio.ensure_future(call(d)) for d in (0.0, 0.3, 0.6, 3.0)]
        await asyncio.sleep(1.0)
        await (proxy.cut() if outage == "cut" else proxy.hang())
        await asyncio.sleep(OUTAGE)
        during = gw.store_writer.pending
        await proxy.resume()
        results = await asyncio.gather(*calls)
        assert await gw.store_writer.flush(15)
    finally:
        await api.close()
        await proxy.resume()
    for result in results:
        assert_unaffected(result)
    assert during > 0                            # the outage really held the records back
    for result in results:                       # every record whole once the store is back
        rec = await gw.store_writer.store.get_call(result.call_id)
        assert rec is not None and rec["status"] == "completed", rec
        assert rec["outcome"] == "completed" and rec["ended_at"] is not None
        assert lines(rec) == TRANSCRIPT
        assert len(rec["turns"]) == 2
    assert gw.store_writer.pending == 0          # all written (the writer never drops one)
    await client.close()                         # before the proxy goes
    await proxy.cut()


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[str]:
    """A ``size`` tmpfs at ``path`` (ENOSPC once full); without the right to mount, a file
    size limit of the same size (EFBIG). Yields the error a full disk gives."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    if mounted:
        try:
            yield "No space left on device"
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = int(size.rstrip("k")) * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield "File too large"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def test_recording_disk_full_during_live_calls(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec_dir = tmp_path / "rec"
    with small_disk(rec_dir, "100k") as full:    # about three seconds of one stereo call
        cfg = carrier_cfg("twilio", recording={"local_dir": str(rec_dir)})
        client = await daemon(cfg, stub_backends(cfg, stt_text=PHRASE))
        gw = gateway_of(client)
        api = make_api(cfg)
        assert api is not None
        await api.start()
        steps = await conversation()

        async def call(delay: float) -> Any:
            await asyncio.sleep(delay)
            return await simulate_call(cfg, url_of(client), steps, api=api, timeout=40)

        try:   # three calls fill the disk together; a fourth starts on a full disk
            results = await asyncio.gather(*(call(d) for d in (0.0, 0.2, 0.4, 2.5)))
        finally:
            await api.close()
        await asyncio.sleep(0.3)                 # the last recording events land
        for result in results:
            assert_unaffected(result)
            rec = gw.registry.get(result.call_id)
            assert rec is not None and rec.outcome == "completed"
            assert [(ln["role"], ln["text"]) for ln in rec.transcript] == TRANSCRIPT
        events = [e for r in results for e in gw.registry.get(r.call_id).events
                  if e["type"] == "recording"]
        assert len(events) == 4 and all(e["source"] == "local" for e in events)
        failed = [e for e in events if "error" in e]
        assert len(failed) >= 3 and all(full in e["error"] for e in failed), events
        assert gw.supervisor.errors.get("recorder") == len(failed)
