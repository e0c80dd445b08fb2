"""Calls whose media stream's process is gone, in one daemon (the process-level crash is in
test_crash_recovery.py): the start-up recovery pass over an SQLite file that dead and live
processes wrote, and Telnyx's ``streaming.stopped`` for a call no stream here holds."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from patterd.call import recovery
from patterd.store.processes import process_start
from patterd.store.queries import Queries
from patterd.store.sqlite import SqliteStore
from tests.conftest import config, gateway_of, telnyx_raw
from tests.integration.test_call_outcomes import AUTH, TOKEN, rig
from tests.support.media_client import until
from tests.support.signing import TelnyxSigner

HOST = socket.gethostname()
SAID = "one two three four five six"
TWILIO_LOST = "CA" + "0123456789abcdef" * 2     # a call of the other carrier        # 3 s of speech, 0.5 s a word


def part(call_id: str, carrier: str, transcript: list[dict[str, Any]], *, streaming: bool,
         at: float) -> dict[str, Any]:
    """A live call's snapshot as a process writes it (records.snapshot)."""
    return {"call_id": call_id, "carrier": carrier, "direction": "inbound",
            "from": "+15551112222", "to": "+15550001234", "status": "in-progress",
            "outcome": None, "created_at": at - 30, "updated_at": at, "ended_at": None,
            "status_history": [], "events": [], "transcript": transcript,
            "turns": [{"response": 0.4}], "cost": None, "streaming": streaming,
            "meter": {"at": at, "media_seconds": 30.0,
                      "usage": {"stt_seconds": 2.0, "tts_chars": 120}}}


async def seed(path: Path, beat_at: float, live_pid: int) -> dict[str, str]:
    """A file written by a process that died (pid of an exited child) and one that still runs
    (``live_pid``): the dead one held a Telnyx call (its last reply still playing) and a
    Twilio call, the live one a Telnyx call."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_start = process_start(child.pid)
    child.wait()
    dead, live = f"{HOST}:{child.pid}:dead0001", f"{HOST}:{live_pid}:live0001"
    store = await SqliteStore.open(str(path))
    q = Queries("sqlite")
    try:
        for writer, pid, start in ((dead, child.pid, dead_start),
                                   (live, live_pid, process_start(live_pid))):
            await store._run(store._write, q.process_register,
                             (writer, HOST, pid, start, beat_at - 60, beat_at))
        lines = [{"role": "agent", "text": "Hello.", "at": beat_at - 20},
                 {"role": "caller", "text": "hours please", "at": beat_at - 10},
                 {"role": "agent", "text": SAID, "at": beat_at - 1.5, "playing": True,
                  "seconds": 3.0}]
        await store.upsert_calls([part("v3:lost", "telnyx", lines, streaming=True,
                                       at=beat_at - 1.0),
                                  part(TWILIO_LOST, "twilio", lines[:1], streaming=True,
                                       at=beat_at - 1.0)], writer=dead)
        await store.upsert_calls([part("v3:kept", "telnyx", lines[:1], streaming=True,
                                       at=beat_at)], writer=live)
    finally:
        await store.close()
    return {"dead": dead, "live": live}


async def test_startup_ends_the_calls_a_dead_process_held_and_no_other(
        daemon: Any, fake_telnyx: Any, tmp_path: Path) -> None:
    fake, base = fake_telnyx
    path = tmp_path / "calls.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        beat_at = time.time() - 5
        writers = await seed(path, beat_at, sleeper.pid)
        signer = TelnyxSigner()
        raw = telnyx_raw(signer.public_key_b64, carrier={"api_base_url": base},
                         admin={"token": TOKEN}, store={"url": f"sqlite:///{path}"},
                         # priced like OpenAI's voice (the stub TTS speaks in the tests)
                         tts={"provider": "openai", "api_key": "sk-test"})
        client = await daemon(config(raw))
        await until(lambda: ("v3:lost", "hangup") in fake.applied, 10)
        await until(lambda: (rec := gateway_of(client).registry.get("v3:lost")) is not None
                    and rec.ended_at is not None, 5)
        await gateway_of(client).store_writer.flush(5)
        resp = await client.get("/v1/calls/v3:lost", headers=AUTH)
        doc = await resp.json()
        assert doc["outcome"] == "process_lost" and doc["status"] == "completed", doc
        assert doc["ended_at"] is not None
        # What the dead process wrote is kept; the reply that was playing when it last
        # showed a sign of life (1.5 s into 3 s) is cut to the words heard by then.
        assert [(ln["role"], ln["text"], ln.get("interrupted")) for ln in doc["transcript"]] \
            == [("agent", "Hello.", None), ("caller", "hours please", None),
                ("agent", "one two three", True)]
        assert not any("playing" in ln or "seconds" in ln for ln in doc["transcript"])
        assert doc["turns"] == [{"response": 0.4}]
        hangup = [e for e in doc["events"] if e["type"] == "hangup"]
        assert [(e["by"], e["reason"], e["ok"]) for e in hangup] == [
            ("gateway", "process_lost", True)]
        # Priced from what the dead process had metered, billed until the hang-up.
        cost = doc["cost"]
        assert cost["billed_seconds"] >= 35 and cost["tts"] > 0, cost
        # The live process's call and the other carrier's are not touched.
        await asyncio.sleep(0.3)
        assert [c for c, a in fake.applied if a == "hangup"] == ["v3:lost"]
        for call_id in ("v3:kept", TWILIO_LOST):
            other = await (await client.get(f"/v1/calls/{call_id}", headers=AUTH)).json()
            assert other["ended_at"] is None and other.get("outcome") is None, other
        # The dead process stays listed while a call it held waits for a Twilio daemon.
        await gateway_of(client).store_writer.flush(5)
        rows = sqlite3.connect(path).execute("SELECT writer, reaped_by FROM processes")
        listed = dict(rows.fetchall())
        store_writer = gateway_of(client).store_writer.store.writer
        assert listed[writers["dead"]] == store_writer and writers["live"] in listed
        # A later pass finds nothing more to do.
        assert await recovery.recover_once(gateway_of(client)) == 0
        assert [c for c, a in fake.applied if a == "hangup"] == ["v3:lost"]
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_a_hang_up_the_carrier_refuses_is_tried_again_on_the_next_pass(
        daemon: Any, fake_telnyx: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(recovery, "HANGUP_RETRIES", (0.0, 0.0))
    fake, base = fake_telnyx
    fake.fail_next = [503, 503]                 # the start-up pass: both attempts refused
    path = tmp_path / "calls.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        await seed(path, time.time() - 5, sleeper.pid)
        raw = telnyx_raw(TelnyxSigner().public_key_b64, carrier={"api_base_url": base},
                         admin={"token": TOKEN}, store={"url": f"sqlite:///{path}"})
        client = await daemon(config(raw))
        gw = gateway_of(client)
        await until(lambda: not fake.fail_next and len(fake.requests) == 2, 10)
        await asyncio.sleep(0.2)
        doc = await (await client.get("/v1/calls/v3:lost", headers=AUTH)).json()
        assert doc["ended_at"] is None and not fake.applied, doc     # nothing recorded yet
        assert await recovery.recover_once(gw) == 1                  # the next pass
        assert fake.applied == [("v3:lost", "hangup")]
        await gw.store_writer.flush(5)
        doc = await (await client.get("/v1/calls/v3:lost", headers=AUTH)).json()
        assert doc["outcome"] == "process_lost", doc
        assert [ln["text"] for ln in doc["transcript"]][-1] == "one two three"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def short_grace(monkeypatch: Any) -> None:
    monkeypatch.setattr(recovery, "STOP_GRACE", 0.3)


async def test_telnyx_stream_stopped_for_a_call_no_stream_here_holds_is_hung_up(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, short_grace: None) -> None:
    """The call was answered, but its stream is on no live process (say, the one that held
    it died): Telnyx keeps it up with nobody on it, so it is hung up after the grace."""
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    await r.telnyx("call.initiated", direction="incoming", state="parked",
                   **{"from": "+15551112222", "to": "+15550001234"})
    await r.telnyx("call.answered")
    await r.telnyx("streaming.stopped", stream_url="wss://example/media")
    assert (r.call_id, "hangup") not in r.fake.applied        # the grace first
    await until(lambda: (r.call_id, "hangup") in r.fake.applied, 5)
    rec = r.gw.registry.get(r.call_id)
    await until(lambda: not rec.live)
    assert rec.outcome == "failed"
    hangup = [e for e in rec.events if e["type"] == "hangup"]
    assert [(e["by"], e["reason"], e["ok"]) for e in hangup] == [
        ("gateway", "stream_stopped", True)]
    assert r.fake.applied.count((r.call_id, "hangup")) == 1


async def test_telnyx_stream_stopped_then_the_hang_up_report_needs_no_rest_call(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, short_grace: None) -> None:
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    await r.telnyx("call.initiated", direction="incoming", state="parked",
                   **{"from": "+15551112222", "to": "+15550001234"})
    await r.telnyx("call.answered")
    await r.telnyx("streaming.stopped", stream_url="wss://example/media")
    await r.carrier_says_ended()
    await asyncio.sleep(0.6)                                  # past the grace
    assert (r.call_id, "hangup") not in r.fake.applied
    assert r.gw.registry.get(r.call_id).outcome == "completed"


async def test_telnyx_stream_stopped_for_an_unknown_call_is_left_alone(
        daemon: Any, fake_twilio: Any, fake_telnyx: Any, short_grace: None) -> None:
    r = await rig(daemon, "telnyx", fake_twilio, fake_telnyx)
    await r.telnyx("streaming.stopped", stream_url="wss://example/media")
    await asyncio.sleep(0.6)
    assert r.fake.applied == []
