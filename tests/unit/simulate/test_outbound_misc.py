"""Outbound pieces on their own: callback delivery order (shuffle, duplicates), the callee's
ring and AMD plans, Twilio's create-call checks and Telnyx's dial checks, synchronous Twilio AMD
with a Url, admin API failures and ``patterd simulate --outbound``."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from patterd.config import load_config
from patterd.simulate import (BUSY, DEFAULT_GREETING, ERROR, Callee, Say, make_api,
                              simulate_outbound)
from patterd.simulate.callee import Pending, machine_greeting, telnyx_verdicts, twilio_verdict
from patterd.simulate.cli import main
from patterd.simulate.deliver import Deliveries, Delivery
from patterd.simulate.telnyx_out import parse_dial
from tests.unit.simulate.dialer import ADMIN_TOKEN, Dialer
from tests.unit.simulate.standin import (PHONE, PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, free_port,
                                         tone, twilio_config)

TO = "+15557654321"


async def test_deliveries_order_shuffle_and_duplicates() -> None:
    sent: list[tuple[str, int]] = []

    def item(kind: str, reorder: bool = True) -> Delivery:
        async def send(attempt: int) -> None:
            sent.append((kind, attempt))
        return Delivery(kind, send, reorder)

    plain = Deliveries()
    for k in "abc":
        plain.post(item(k))
    await plain.drain()
    assert sent == [("a", 1), ("b", 1), ("c", 1)]
    sent.clear()
    mixed = Deliveries(shuffle=True, duplicate=True)
    for k in ("a", "b", "c"):
        mixed.post(item(k))
    mixed.post(item("amd", reorder=False))          # not held back
    await mixed.drain()
    assert sent == [("b", 1), ("b", 2), ("a", 1), ("a", 2), ("amd", 1), ("amd", 2),
                    ("c", 1), ("c", 2)]
    assert mixed.order == ["b", "a", "amd", "c"]


def test_callee_ring_and_verdict_plans() -> None:
    with pytest.raises(ValueError, match="kind"):
        Callee("robot")
    assert Callee().ring_for(30) == (1.0, False)
    assert Callee("busy").ring_for(30) == (0.5, False)
    assert Callee("no-answer").ring_for(30) == (30, True)
    assert Callee("no-answer", ring_seconds=2).ring_for(30) == (2, True)
    assert Callee(ring_seconds=40).ring_for(30) == (30, True)        # picks up too late
    machine = Callee("machine")
    assert twilio_verdict(machine, "DetectMessageEnd", 3.0) == ("machine_end_beep", 3.2)
    assert twilio_verdict(Callee("machine", beep=False), "DetectMessageEnd", 3.0) == \
        ("machine_end_silence", 4.2)
    assert twilio_verdict(Callee("machine", amd_delay=1.0), "DetectMessageEnd", 3.0)[1] == 3.2
    assert twilio_verdict(machine, "Enable", 3.0) == ("machine_start", 2.5)
    assert twilio_verdict(Callee(answered_by="fax"), "Enable", 0) == ("fax", 1.5)
    assert telnyx_verdicts(Callee(), "detect", 0) == [
        ("call.machine.detection.ended", "human", 1.5)]
    assert [e for e, _, _ in telnyx_verdicts(machine, "detect", 3.0)] == [
        "call.machine.detection.ended"]
    assert telnyx_verdicts(machine, "greeting_end", 3.0)[1] == (
        "call.machine.greeting.ended", "beep_detected", 3.2)
    assert telnyx_verdicts(Callee("machine", beep=False), "detect_beep", 3.0) == []
    assert [r for _, r, _ in telnyx_verdicts(machine, "premium", 3.0)] == [
        "machine", "beep_detected"]


async def test_default_machine_greeting_ends_with_a_beep(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    greeting, seconds, notes = await machine_greeting(Callee("machine"))
    assert greeting.text == DEFAULT_GREETING + " [beep]" and seconds > 3.0
    tail = np.frombuffer(greeting.pcm[-8000:], "<i2").astype(float)     # the last 0.5 s
    spectrum = np.abs(np.fft.rfft(tail))
    assert np.argmax(spectrum) * 8000 / len(tail) == pytest.approx(1000, abs=5)
    from patterd.simulate import speech

    async def no_espeak(text: str) -> Say:
        raise speech.SpeechError("espeak is not installed")
    monkeypatch.setattr(speech, "say", no_espeak)
    stand_in, seconds, notes = await machine_greeting(Callee("machine", beep=False))
    assert seconds == 4.0 and "stand-in" in notes[0] and stand_in.text == DEFAULT_GREETING


GOOD = {"To": TO, "From": PHONE, "Twiml": "<Response/>", "StatusCallback": PUBLIC_URL + "/s"}


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"To": None}, 400, 21201), ({"To": "5551234"}, 400, 21211),
    ({"From": None}, 400, 21213), ({"From": "nope"}, 400, 21212),
    ({"From": "+15559999999"}, 400, 21210), ({"Twiml": None}, 400, 21205),
    ({"Twiml": None, "Url": "ftp://x"}, 400, 21205), ({"Timeout": "soon"}, 400, 21200),
    ({"StatusCallback": "not a url"}, 400, 21609), ({"MachineDetection": "Yes"}, 400, 21200),
    ({"StatusCallbackMethod": "PUT"}, 400, 21200), ({"Twiml": "x" * 4001}, 400, 21200),
    ({"To": "+15550000000"}, 400, 21211),          # valid, but no such call is expected
])
async def test_twilio_create_checks(change: dict[str, str | None], status: int,
                                    code: int) -> None:
    cfg = twilio_config()
    api = make_api(cfg)
    assert api is not None
    pending = Pending(TO, Callee(), make=lambda fields: pytest.fail("placed"))
    api.pending[TO] = [pending]
    form = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    auth = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    async with api, aiohttp.ClientSession() as s:
        url = f"{api.base_url}/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"
        async with s.post(url, data=form, headers={"Authorization": f"Basic {auth}"}) as r:
            body = await r.json()
        async with s.post(url, data=form, headers={"Authorization": "Basic eDp5"}) as r2:
            denied = (r2.status, (await r2.json())["code"])
    assert (r.status, body["code"]) == (status, code), body
    assert body["more_info"].endswith(str(code)) and body["status"] == status
    assert denied == (401, 20003)
    if form.get("To") == TO:
        assert [q.status for q in pending.refused] == [status] and pending.call is None


def test_telnyx_dial_checks() -> None:
    good = {"connection_id": "c1", "to": TO, "from": PHONE, "timeout_secs": 30,
            "answering_machine_detection": "greeting_end", "client_state": "e30=",
            "stream_url": "wss://x/media"}
    assert parse_dial(good, "c1") is None
    for change, pointer in [({"to": ""}, "/to"), ({"from": "x"}, "/from"),
                            ({"connection_id": "c2"}, "/connection_id"),
                            ({"timeout_secs": 2}, "/timeout_secs"),
                            ({"answering_machine_detection": "yes"},
                             "/answering_machine_detection"),
                            ({"client_state": "not base64!"}, "/client_state"),
                            ({"stream_url": "https://x"}, "/stream_url")]:
        resp = parse_dial({**good, **change}, "c1")
        assert resp is not None and resp.status == 422
        assert json.loads(resp.body)["errors"][0]["source"]["pointer"] == pointer  # type: ignore[arg-type]


async def test_twilio_synchronous_amd_fetches_the_url_with_the_verdict() -> None:
    cfg = twilio_config()
    extra = {"Url": PUBLIC_URL + "/webhooks/twilio/voice", "AsyncAmd": "false"}
    callee = Callee("machine", greeting=Say(tone(0.6, 300), "hello"))
    async with Dialer(cfg, drop=("Twiml",), extra=extra) as d:
        r = await simulate_outbound(cfg, d.url, TO, callee, admin_token=ADMIN_TOKEN,
                                    machine_detection=True, settle=0.1, timeout=3)
    voice = d.webhook_params("voice")[0]
    assert (voice["CallStatus"], voice["Direction"], voice["AnsweredBy"]) == \
        ("in-progress", "outbound-api", "machine_end_beep")
    assert int(voice["MachineDetectionDuration"]) == pytest.approx(1600, abs=60)
    assert d.arrived("amd") == [] and r.answered_by == "machine_end_beep"
    assert r.media_opened and all(ok for *_, ok in d.webhooks)
    # the stream opened only after the verdict: the daemon never heard the greeting
    assert d.streams[0].caller_voiced_at == []


async def test_finished_calls_can_still_be_fetched() -> None:
    cfg = twilio_config()
    auth = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    async with Dialer(cfg) as d, make_api(cfg) as api:  # type: ignore[union-attr]
        r = await simulate_outbound(cfg, d.url, TO, Callee("busy", ring_seconds=0.1),
                                    admin_token=ADMIN_TOKEN, api=api, settle=0)
        url = f"{api.base_url}/2010-04-01/Accounts/{TWILIO_SID}/Calls/{r.call_id}.json"
        async with aiohttp.ClientSession() as s, s.get(
                url, headers={"Authorization": f"Basic {auth}"}) as resp:
            call = (resp.status, await resp.json())
        status, body = await d.twilio_update(r.call_id, {"Status": "completed"})
    assert r.outcome == BUSY and call[0] == 200
    assert (call[1]["status"], call[1]["direction"], call[1]["duration"]) == \
        ("busy", "outbound-api", None)
    assert (status, body["code"]) == (404, 20404)            # nothing left to hang up


async def test_admin_api_failures() -> None:
    cfg = twilio_config()
    async with Dialer(cfg) as d:
        denied = await simulate_outbound(cfg, d.url, TO, admin_token="wrong", settle=0)
    assert denied.admin_status == 401 and denied.outcome == ERROR and not denied.ok
    assert "did not ask the carrier" in denied.detail and d.dials == []
    gone = await simulate_outbound(cfg, f"http://127.0.0.1:{free_port()}", TO,
                                   admin_token=ADMIN_TOKEN, settle=0)
    assert gone.admin_status == 0 and "cannot reach the daemon" in gone.errors[-1]


async def test_command_line_outbound(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    raw = {"server": {"public_url": PUBLIC_URL}, "phone_number": PHONE,
           "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                       "auth_token": TWILIO_TOKEN, "configure_number": False,
                       "api_base_url": f"http://127.0.0.1:{free_port()}"}}
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(raw))
    async with Dialer(load_config(path, env={})) as d:
        code = await asyncio.to_thread(main, [
            "--config", str(path), "--url", d.url, "--outbound", TO, "--callee", "busy",
            "--admin-token", ADMIN_TOKEN, "--ring", "0.2", "--json"])
        text_code = await asyncio.to_thread(main, [
            "--config", str(path), "--url", d.url, "--outbound", TO, "--callee", "failed",
            "--admin-token", ADMIN_TOKEN])
    assert code == 0 and text_code == 0
    out = capsys.readouterr().out
    doc = json.loads(out[:out.index("\n}\n") + 2])
    assert doc["outcome"] == BUSY and doc["ok"] and doc["admin"]["status"] == 201
    assert [w["kind"] for w in doc["webhooks"]] == ["status:initiated", "status:ringing",
                                                     "status:busy"]
    assert "callee failed: failed" in out and "[ok]" in out
    assert main(["--config", str(path), "--outbound", TO, "--calls", "2"]) == 2
