"""``simulate()`` with several calls (summary, JSON, WAV, CPU of the daemon's process) and the
``patterd simulate`` command line (step order, exit codes)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
import wave
from pathlib import Path

import pytest
import yaml
from nacl.signing import SigningKey

from patterd.simulate import (Dtmf, Say, SimulationError, Wait, WaitForAgent,
                              WaitForAgentSpeech, make_api, simulate)
from patterd.simulate.cli import build_steps, main, parser
from patterd.simulate.speech import write_wav
from tests.unit.simulate.standin import (PHONE, PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, StandIn,
                                         Stream, free_port, telnyx_config, tone, twilio_config)

pytestmark = pytest.mark.slow       # several seconds of real-time calls


async def converse(s: Stream) -> None:
    """Greet, then answer every caller utterance or key press after 0.2 s, forever."""
    await s.send_audio(tone(0.3))
    await s.send_mark("greeting")
    voiced, keys = 0, 0

    def turn_over() -> bool:
        spoke = len(s.caller_voiced_at) > voiced and (
            time.monotonic() - s.caller_voiced_at[-1] > 0.1)
        return spoke or len(s.events("dtmf")) > keys

    while True:
        await s.wait_for(turn_over, 30)
        voiced, keys = len(s.caller_voiced_at), len(s.events("dtmf"))
        await asyncio.sleep(0.2)
        await s.send_audio(tone(0.3), frame_ms=20)
        await s.send_mark("reply")


async def test_many_calls_summary_json_wav_and_cpu(tmp_path: Path) -> None:
    cfg = twilio_config()
    out = io.StringIO()
    steps = [WaitForAgent(), Say(tone(0.3, 300), "hi"), WaitForAgent()]
    async with StandIn(cfg, converse) as d:
        report = await simulate(cfg, d.url, steps, calls=3, stagger=0.05, json_output=True,
                                out=str(tmp_path / "heard.wav"), stream=out, transcribe=False)
    assert report.ok, [r.errors for r in report.results]
    doc = json.loads(out.getvalue())
    s = doc["summary"]
    assert (s["calls"], s["ok"], s["failed"]) == (3, 3, 0)
    assert s["latency"]["count"] == 3 and 0.2 < s["latency"]["p50"] < 0.5
    assert s["pid"] == os.getpid() and s["cpu_seconds"] is not None
    assert s["cpu_per_call_minute"] > 0
    assert len({c["call_id"] for c in doc["calls"]}) == 3
    assert all(c["outcome"] == "completed" for c in doc["calls"])
    with wave.open(str(tmp_path / "heard.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert w.getnframes() / 8000 > 1.0


async def test_one_call_prints_the_transcript_and_latency() -> None:
    cfg = twilio_config()
    out = io.StringIO()
    async with StandIn(cfg, converse) as d:
        report = await simulate(cfg, d.url, [WaitForAgent(), Say(tone(0.3), "billing"),
                                             WaitForAgent()], stream=out, transcribe=False)
    text = out.getvalue()
    assert report.ok and f"({'twilio'}): completed" in text
    assert "caller  billing" in text and "agent" in text
    assert "turn 1 ('billing'): response latency 0." in text


async def test_summary_text_for_several_calls() -> None:
    cfg = twilio_config()
    out = io.StringIO()
    async with StandIn(cfg, converse) as d:
        report = await simulate(cfg, d.url, [WaitForAgent(), Dtmf("1"), WaitForAgent()],
                                calls=2, stream=out, transcribe=False, stagger=0.0)
    assert report.ok
    text = out.getvalue()
    assert text.startswith("calls: 2, ok 2, failed 0  completed 2\n")
    assert "response latency over 2 turns: p50 0." in text and "CPU" in text


def test_telnyx_needs_a_local_api_base_url() -> None:
    key = SigningKey.generate()
    cfg = telnyx_config(base64.b64encode(bytes(key.verify_key)).decode())
    object.__setattr__(cfg.carrier, "api_base_url", "https://api.telnyx.com/v2")
    with pytest.raises(SimulationError, match="carrier.api_base_url"):
        make_api(cfg)
    twilio_remote = twilio_config()
    object.__setattr__(twilio_remote.carrier, "api_base_url", "https://api.twilio.com")
    assert make_api(twilio_remote) is None


async def test_command_line_steps_keep_their_order(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", tone(0.2))
    args = parser().parse_args(["--config", "x", "--dtmf", "1", "--wav", str(tmp_path / "a.wav"),
                                "--wait", "0.5", "--dtmf", "2#"])
    assert [k for k, _ in args.steps] == ["dtmf", "wav", "wait", "dtmf"]
    steps = await build_steps(args.steps, reply_timeout=9)
    kinds = [type(s).__name__ for s in steps]
    assert kinds == ["WaitForAgent", "Dtmf", "WaitForAgent", "Say", "WaitForAgent", "Wait",
                     "Dtmf", "WaitForAgent"]
    assert isinstance(steps[-2], Dtmf) and steps[-2].digits == "2#"
    assert isinstance(steps[0], WaitForAgent) and steps[0].timeout == 9
    assert isinstance(steps[5], Wait) and steps[5].seconds == 0.5
    assert [type(s).__name__ for s in await build_steps([])] == ["WaitForAgent"]
    barge = await build_steps([("barge_in", "stop please")])
    assert isinstance(barge[0], WaitForAgentSpeech) and isinstance(barge[1], Say)


def _write_config(path: Path, **carrier: object) -> Path:
    raw = {"server": {"public_url": PUBLIC_URL, "port": free_port()}, "phone_number": PHONE,
           "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                       "auth_token": TWILIO_TOKEN, "configure_number": False,
                       "api_base_url": f"http://127.0.0.1:{free_port()}", **carrier}}
    path.write_text(yaml.safe_dump(raw))
    return path


async def test_command_line_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    cfg_path = _write_config(tmp_path / "patter.yaml")
    write_wav(tmp_path / "hello.wav", tone(0.4, 300))
    async with StandIn(twilio_config(), converse) as d:
        code = await asyncio.to_thread(main, [
            "--config", str(cfg_path), "--url", d.url, "--wav", str(tmp_path / "hello.wav"),
            "--dtmf", "1", "--out", str(tmp_path / "reply.wav"), "--json", "--no-transcribe"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    call = doc["calls"][0]
    assert [t["kind"] for t in call["turns"]] == ["speech", "dtmf"]
    assert call["turns"][0]["latency"] is not None
    assert (tmp_path / "reply.wav").stat().st_size > 44


def test_command_line_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATTERD_CONFIG", raising=False)
    monkeypatch.delenv("PATTERD_SIM_TELNYX_SIGNING_KEY", raising=False)
    assert main([]) == 2
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    cfg = _write_config(tmp_path / "c.yaml")
    assert main(["--config", str(cfg), "--wav", str(tmp_path / "none.wav")]) == 2
    assert main(["--config", str(cfg), "--dtmf", "12x"]) == 2
    assert main(["--config", str(cfg), "--calls", "0"]) == 2
    assert main(["--config", str(cfg), "--bogus"]) == 2
    assert main(["--help"]) == 0
    key = SigningKey.generate()
    raw = yaml.safe_load(cfg.read_text())
    raw["carrier"] = {"provider": "telnyx", "api_key": "K", "connection_id": "1",
                      "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
                      "api_base_url": f"http://127.0.0.1:{free_port()}/v2"}
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(cfg)]) == 2                 # no signing key
    other = base64.b64encode(bytes(SigningKey.generate())).decode()
    assert main(["--config", str(cfg), "--telnyx-signing-key", other]) == 2   # wrong key
    err = capsys.readouterr().err
    assert "--telnyx-signing-key: required" in err and "is not carrier.public_key" in err
    assert "--dtmf '12x'" in err


def test_daemon_not_running_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path / "c.yaml")
    assert main(["--config", str(cfg), "--url", f"http://127.0.0.1:{free_port()}",
                 "--no-transcribe"]) == 1
    assert "cannot reach the daemon" in capsys.readouterr().out


async def test_calls_alone_print_latency_percentiles(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--calls N` with no script: each caller says a phrase the agent answers, so the summary
    has a turn per call to time."""
    cfg_path = _write_config(tmp_path / "patter.yaml")
    raw = yaml.safe_load(cfg_path.read_text())
    raw["llm"] = {"provider": "rules", "rules": [
        {"phrases": ["sales"], "reply": "Transferring.", "action": {"transfer": "+15550001001"}},
        {"phrases": ["opening hours"], "reply": "Nine to five."}]}
    cfg_path.write_text(yaml.safe_dump(raw))
    async with StandIn(twilio_config(), converse) as d:
        code = await asyncio.to_thread(main, ["--config", str(cfg_path), "--url", d.url,
                                              "--calls", "2", "--no-transcribe"])
    assert code == 0
    captured = capsys.readouterr()
    assert "each caller says 'opening hours' once" in captured.err
    assert "response latency over 2 turns: p50 " in captured.out
    assert "p50 —" not in captured.out


def test_default_phrase_prefers_a_reply_that_keeps_the_call_up() -> None:
    from patterd.config import build_config
    from patterd.simulate.cli import default_phrase
    base = yaml.safe_load(_write_config_text())
    assert default_phrase(build_config(base, env={})) == "goodbye"        # the default rules
    base["llm"] = {"provider": "rules", "rules": [
        {"phrases": ["bye"], "reply": "Bye.", "action": {"hangup": True}},
        {"dtmf": "1", "reply": "One."}, {"phrases": ["hours"], "reply": "Nine to five."}]}
    assert default_phrase(build_config(base, env={})) == "hours"
    base["llm"] = {"provider": "openai", "api_key": "sk"}
    assert default_phrase(build_config(base, env={})) == "hello"


def _write_config_text() -> str:
    return yaml.safe_dump({"server": {"public_url": PUBLIC_URL}, "phone_number": PHONE,
                           "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                                       "auth_token": TWILIO_TOKEN}})
