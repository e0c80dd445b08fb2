"""The caller's audio: WAV files in any common shape, espeak speech, silence trimming, and the
agent vocabulary/transcription hook."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from patterd.config import build_config
from patterd.simulate.results import CallResult, Line
from patterd.simulate.speech import (SpeechError, closest_message, make_transcriber, read_wav,
                                     say, say_wav, synthesize, transcribe_agent, trim_silence,
                                     vocabulary, write_wav)
from tests.unit.simulate.standin import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, tone


def _dominant_hz(pcm: bytes, rate: int = 8000) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate / len(x))


def _write(path: Path, samples: np.ndarray, rate: int, channels: int, width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def _sine(rate: int, seconds: float = 0.5, freq: float = 500.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_wav_16_bit_stereo_any_rate_becomes_8k_mono(tmp_path: Path, rate: int) -> None:
    x = (_sine(rate) * 10000).astype("<i2")
    _write(tmp_path / "a.wav", np.stack([x, x], axis=1), rate, 2, 2)
    pcm = read_wav(tmp_path / "a.wav")
    assert abs(len(pcm) / 2 - 4000) <= 40
    assert _dominant_hz(pcm) == pytest.approx(500, abs=5)
    assert np.abs(np.frombuffer(pcm, "<i2")).max() == pytest.approx(10000, rel=0.05)


def test_wav_8_24_32_bit_and_float(tmp_path: Path) -> None:
    s = _sine(16000)
    _write(tmp_path / "u8.wav", (s * 100 + 128).astype(np.uint8), 16000, 1, 1)
    i24 = (s * 2**22).astype("<i4")
    raw24 = np.frombuffer(i24.tobytes(), np.uint8).reshape(-1, 4)[:, :3].copy()
    _write(tmp_path / "i24.wav", raw24, 16000, 1, 3)
    _write(tmp_path / "i32.wav", (s * 2**30).astype("<i4"), 16000, 1, 4)
    data = (s * 0.5).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    (tmp_path / "f32.wav").write_bytes(
        b"RIFF" + struct.pack("<I", 4 + 8 + 16 + 8 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    for name in ("u8", "i24", "i32", "f32"):
        pcm = read_wav(tmp_path / f"{name}.wav")
        assert _dominant_hz(pcm) == pytest.approx(500, abs=5), name


def test_bad_wav_files(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="cannot read"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "x.wav").write_bytes(b"not a wav at all")
    with pytest.raises(SpeechError, match="not a WAV"):
        read_wav(tmp_path / "x.wav")


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    pcm = tone(0.3)
    write_wav(tmp_path / "out.wav", pcm)
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
    assert read_wav(tmp_path / "out.wav") == pcm


def test_trim_silence_and_wav_step(tmp_path: Path) -> None:
    pcm = bytes(1600) + tone(0.2) + bytes(3200)
    trimmed = trim_silence(pcm)
    assert len(trimmed) == len(tone(0.2))
    assert trim_silence(bytes(3200)) == b""
    write_wav(tmp_path / "hello.wav", pcm)
    step = say_wav(tmp_path / "hello.wav")
    assert step.pcm == trimmed and step.text == "[hello.wav]"


async def test_say_speaks_with_espeak() -> None:
    step = await say("billing please")
    assert step.text == "billing please"
    assert 0.3 < len(step.pcm) / 16000 < 3.0
    assert np.abs(np.frombuffer(step.pcm[:320], "<i2")).max() > 0   # starts with sound


def test_vocabulary_from_the_configured_messages() -> None:
    cfg = build_config({
        "server": {"public_url": PUBLIC_URL}, "phone_number": "+15550001234",
        "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                    "auth_token": TWILIO_TOKEN, "configure_number": False},
        "agent": {"first_message": "Welcome to {shop}.", "variables": {"shop": "Acme"}},
        "llm": {"provider": "rules", "fallback": "Say billing.",
                "rules": [{"phrases": ["billing"], "reply": "Connecting you."}]},
    }, env={})
    assert vocabulary(cfg) == ["Welcome to Acme.", "Say billing.", "Connecting you."]


async def test_transcription_hook_fills_agent_lines() -> None:
    class Fake:
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def transcribe(self, pcm: bytes) -> str:
            self.seen.append(len(pcm))
            return "hello there"

    r = CallResult("twilio", "CA1", agent_audio=tone(2.0), audio_start=0.5,
                   lines=[Line("agent", 1.0, 1.5), Line("caller", 2.0, 2.2, "hi")])
    fake = Fake()
    await transcribe_agent(r, fake)
    assert r.lines[0].text == "hello there" and r.lines[1].text == "hi"
    assert fake.seen == [8000]
    await transcribe_agent(r, None)


def test_closest_message() -> None:
    messages = ["Connecting you to sales.", "Connecting you to support.", "Goodbye!"]
    assert closest_message("connecting you to support", messages) == messages[1]
    assert closest_message("connecting you to sale", messages) == messages[0]
    assert closest_message("connecting you we or", messages) == ""          # a tie
    assert closest_message("something else entirely", messages) == ""


async def test_agent_words_are_recognised_offline() -> None:
    cfg = build_config({
        "server": {"public_url": PUBLIC_URL}, "phone_number": "+15550001234",
        "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                    "auth_token": TWILIO_TOKEN, "configure_number": False},
        "agent": {"first_message": "We are open nine to five, Monday to Friday."},
    }, env={})
    transcriber = make_transcriber(cfg)
    if transcriber is None:
        pytest.skip("the pocketsphinx STT provider is not available")
    try:
        pcm = await synthesize("We are open nine to five, Monday to Friday.")
        r = CallResult("twilio", "CA1", agent_audio=bytes(8000) + pcm, audio_start=0.0,
                       lines=[Line("agent", 0.0, 0.5 + len(pcm) / 16000)])
        await transcribe_agent(r, transcriber, vocabulary(cfg))
    finally:
        await transcriber.close()
    heard = set(r.lines[0].text.split())
    assert len(heard & {"we", "are", "open", "nine", "to", "five", "monday", "friday"}) >= 5
    assert r.lines[0].match in ("", "We are open nine to five, Monday to Friday.")
