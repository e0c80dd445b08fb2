"""``recording.local_dir``: whole simulated calls on 127.0.0.1 (stub STT/TTS) leave a WAV of
both sides on one timeline, and a recording that cannot be written never troubles the call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patterd.call.recorder import wav_name
from patterd.ops.logging import configure_logging, get_logger
from patterd.simulate import Dtmf, Say, TelnyxSigner, Wait, WaitForAgent, simulate_call
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.stub_backends import StubTts, stub_backends, tone
from tests.support.net import free_port

SEED = bytes(range(32))
FRAME = 160
TONE_SECONDS = 1.0
AGENT = {
    "agent": {"first_message": "Hi there."},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry?"},
}
# the caller waits for the greeting, speaks (a 1 kHz tone), waits, then presses 9 (goodbye)
STEPS = [WaitForAgent(), Say(tone(TONE_SECONDS, 1000.0), "tone"), Wait(0.8), Dtmf("9"),
         WaitForAgent(required=False)]


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


def twilio_cfg(rec_dir: Path, channels: str = "dual") -> Any:
    raw = twilio_raw(**AGENT, recording={"local_dir": str(rec_dir), "channels": channels})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


def telnyx_cfg(rec_dir: Path) -> Any:
    raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **AGENT,
                     recording={"local_dir": str(rec_dir)})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


def read(path: Path) -> tuple[Any, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), "<i2")
    return params, data.reshape(-1, params.nchannels)


def voiced(channel: np.ndarray) -> list[int]:
    """The 20 ms windows with energy."""
    frames = channel[: len(channel) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    return [int(i) for i in np.nonzero(np.sqrt((frames ** 2).mean(axis=1)) > 500)[0]]


def spans(windows: list[int], gap: int = 35) -> list[tuple[float, float]]:
    """Voiced windows as (start, end) seconds; pauses under 0.7 s join (as the simulator)."""
    out: list[list[int]] = []
    for w in windows:
        if out and w - out[-1][1] <= gap:
            out[-1][1] = w
        else:
            out.append([w, w])
    return [(a * 0.02, (b + 1) * 0.02) for a, b in out]


def far_from(windows: list[int], others: set[int], slack: int = 2) -> list[int]:
    """The windows with none of ``others`` within ``slack`` windows (40 ms) of them."""
    return [w for w in windows if not any(w + d in others for d in range(-slack, slack + 1))]


async def recording_event(client: Any, call_id: str) -> dict[str, Any]:
    for _ in range(100):   # the daemon finishes the file as the media socket closes
        rec = gateway_of(client).registry.get(call_id)
        found = [e for e in (rec.events if rec else []) if e["type"] == "recording"]
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no recording event")


async def check_call(client: Any, result: Any, rec_dir: Path) -> np.ndarray:
    """The WAV's format, length, both channels and the record's event; returns the audio."""
    assert result.ok, (result.outcome, result.detail, result.errors)
    path = rec_dir / wav_name(result.call_id)
    event = await recording_event(client, result.call_id)
    params, data = read(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    # one sample per caller sample the daemon received: the call's media, frame for frame
    assert abs(params.nframes - result.frames["tx_media"] * FRAME) <= 2 * FRAME
    assert event == {"type": "recording", "source": "local", "path": str(path),
                     "duration": round(params.nframes / 8000, 3), "at": event["at"]}
    # left: the caller, only where and as long as the caller spoke
    (caller_line,) = [ln for ln in result.lines if ln.who == "caller" and ln.text == "tone"]
    left = spans(voiced(data[:, 0]))
    assert len(left) == 1, left
    start, end = left[0]
    assert abs((end - start) - TONE_SECONDS) <= 0.04
    offset = caller_line.start - start      # caller time of the recording's first sample
    # right: the agent, exactly where the caller heard it (within a couple of frames)
    heard = voiced(np.frombuffer(result.agent_audio, "<i2"))
    shift = round((result.audio_start - offset) / 0.02)    # heard window → recording window
    heard_at = {w + shift for w in heard}
    right = voiced(data[:, 1])
    assert right and abs(len(right) - len(heard)) <= 3, (len(right), len(heard))
    assert not far_from(right, heard_at) and not far_from(sorted(heard_at), set(right))
    assert right[0] <= 10                   # the greeting starts with the stream
    return data


async def test_twilio_call_is_recorded_caller_left_agent_right(daemon: Any,
                                                                tmp_path: Path) -> None:
    cfg = twilio_cfg(tmp_path / "rec")
    client = await daemon(cfg)
    result = await simulate_call(cfg, url_of(client), STEPS, timeout=30)
    await check_call(client, result, tmp_path / "rec")
    assert [p.name for p in (tmp_path / "rec").iterdir()] == [f"{result.call_id}.wav"]


async def test_telnyx_call_is_recorded_caller_left_agent_right(daemon: Any,
                                                                tmp_path: Path) -> None:
    cfg = telnyx_cfg(tmp_path / "rec")
    client = await daemon(cfg)
    result = await simulate_call(cfg, url_of(client), STEPS, signer=TelnyxSigner(SEED),
                                 codec="PCMA", timeout=30)
    await check_call(client, result, tmp_path / "rec")
    # a Telnyx id ("v3:…") is made a safe file name
    assert [p.name for p in (tmp_path / "rec").iterdir()] == [wav_name(result.call_id)]


async def test_mono_recording_mixes_both_sides(daemon: Any, tmp_path: Path) -> None:
    cfg = twilio_cfg(tmp_path, channels="mono")
    client = await daemon(cfg)
    result = await simulate_call(cfg, url_of(client), STEPS, timeout=30)
    assert result.ok, (result.outcome, result.detail, result.errors)
    event = await recording_event(client, result.call_id)
    params, data = read(Path(event["path"]))
    assert params.nchannels == 1
    assert abs(params.nframes - result.frames["tx_media"] * FRAME) <= 2 * FRAME
    mixed = voiced(data[:, 0])
    heard = voiced(np.frombuffer(result.agent_audio, "<i2"))
    # every agent utterance and the caller's tone, each as long as it was
    assert len(spans(mixed, gap=5)) == len(spans(heard, gap=5)) + 1
    assert abs(len(mixed) - (len(heard) + TONE_SECONDS / 0.02)) <= 4, (len(mixed), len(heard))


async def test_a_resumed_stream_continues_the_same_file(daemon: Any, tmp_path: Path) -> None:
    """Twilio re-opens the media stream after the agent sends DTMF: one file, one event."""
    raw = twilio_raw(agent=AGENT["agent"], recording={"local_dir": str(tmp_path)},
                     llm={"provider": "rules", "fallback": "Sorry?", "rules": [
                         {"dtmf": "5", "reply": "Sending tones.", "action": {"send_dtmf": "1"}},
                         {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}]})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    client = await daemon(cfg)
    steps = [WaitForAgent(), Dtmf("5"), WaitForAgent(), Wait(0.5), Dtmf("9"),
             WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=30)
    assert result.ok and len(result.stream_ids) == 2, (result.outcome, result.errors)
    event = await recording_event(client, result.call_id)
    params, data = read(tmp_path / wav_name(result.call_id))
    assert list(tmp_path.iterdir()) == [tmp_path / wav_name(result.call_id)]
    # both streams' media, back to back
    assert abs(params.nframes - result.frames["tx_media"] * FRAME) <= 2 * FRAME
    rec = gateway_of(client).registry.get(result.call_id)
    assert [e for e in rec.events if e["type"] == "recording"] == [event]
    assert event["duration"] == round(params.nframes / 8000, 3)
    # the agent's three replies (60 ms of stub tone per character), both streams' parts
    said = [0.06 * len(t) for t in ("Hi there.", "Sending tones.", "Goodbye!")]
    lengths = [e - s for s, e in spans(voiced(data[:, 1]), gap=5)]
    assert len(lengths) == 3 and all(abs(a - b) <= 0.04 for a, b in zip(lengths, said)), lengths


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (Python ignores
    SIGXFSZ; works as root too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def test_a_full_disk_mid_call_stops_only_the_recording(
        daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    cfg = twilio_cfg(tmp_path)
    client = await daemon(cfg)
    with file_size_limit(44 + 32000 + 100):   # the first second fits, the second does not
        result = await simulate_call(cfg, url_of(client), STEPS, timeout=30)
        event = await recording_event(client, result.call_id)
    assert result.ok and result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
    rec = gateway_of(client).registry.get(result.call_id)
    assert rec.outcome == "completed"
    assert [ln["text"] for ln in rec.transcript if ln["role"] == "agent"][-1] == "Goodbye!"
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("{")]
    failed = [ln for ln in lines if ln["event"] == "recording_failed"]
    assert len(failed) == 1 and failed[0]["call_id"] == result.call_id, failed
    assert "File too large" in failed[0]["error"]
    params, _ = read(Path(event["path"]))         # still a valid file: the first second
    assert params.nframes == 8000
    assert event["duration"] == 1.0 and "File too large" in event["error"]


async def test_a_recording_directory_replaced_by_a_file_leaves_the_call_alone(
        daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    cfg = twilio_cfg(tmp_path / "rec")
    (tmp_path / "rec").write_text("someone put a file here after start-up")
    client = await daemon(cfg)
    result = await simulate_call(cfg, url_of(client), STEPS, timeout=30)
    assert result.ok and result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
    await asyncio.sleep(0.2)
    rec = gateway_of(client).registry.get(result.call_id)
    assert rec.outcome == "completed"
    [event] = [e for e in rec.events if e["type"] == "recording"]     # no file: the event
    assert event["duration"] == 0.0 and "Error" in event["error"]      # says why
    events = [json.loads(ln)["event"] for ln in capsys.readouterr().err.splitlines()
              if ln.startswith("{")]
    assert events.count("recording_failed") == 1


class ProbeTts(StubTts):
    """Logs from inside the call's reply task, naming no call itself."""

    def synthesize(self, text: str, encoding: str = "PCM16") -> Any:
        get_logger("probe").info("probe_tts", text=text)
        return super().synthesize(text, encoding)


async def test_log_lines_of_a_calls_tasks_carry_its_call_id(
        daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    raw = twilio_raw(**AGENT)         # no local_dir: no recording
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw)
    backends = stub_backends(cfg)
    backends.tts = ProbeTts()
    client = await daemon(cfg, backends)
    result = await simulate_call(cfg, url_of(client), [WaitForAgent(), Dtmf("9"),
                                                       WaitForAgent(required=False)], timeout=30)
    assert result.ok, (result.outcome, result.errors)
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("{")]
    probes = [ln for ln in lines if ln["event"] == "probe_tts"]
    assert [p["text"] for p in probes] == ["Hi there.", "Goodbye!"]
    assert all(p.get("call_id") == result.call_id for p in probes), probes
