"""The check that a TTS body is the raw audio asked for: real telephone audio of every kind
passes (including the quiet lead-ins whose bytes happen to be printable), containers and text
do not, and the check holds back only the first few bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patterd.audio.codecs import alaw_encode, ulaw_encode
from patterd.backends.tts.audio_check import (PROBE_BYTES, BodyCheck, NotAudio, judge,
                                              refused_content_type)
from tests.support.fakes.tts_common import wav_header

RATE = 8000


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def tone(seconds: float = 0.5, amplitude: float = 8000, hz: float = 440) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * hz * t)


def encodings(samples: np.ndarray) -> dict[str, bytes]:
    pcm = pcm16(samples)
    return {"PCM16": pcm, "PCMU": ulaw_encode(pcm), "PCMA": alaw_encode(pcm)}


def speech_like(seed: int) -> np.ndarray:
    """A quiet lead-in with a small DC offset, then noisy voiced sound, then a fade."""
    rng = np.random.default_rng(seed)
    lead = rng.normal(-3, 1.5, 400)                        # 50 ms of near silence, below 0
    voiced = tone(0.4, 6000, 180) * rng.uniform(0.5, 1.0) + rng.normal(0, 300, 3200)
    return np.concatenate([lead, voiced, np.linspace(1, 0, 800) * rng.normal(0, 50, 800)])


def mpeg_frames(n: int) -> bytes:
    """``n`` MPEG-1 Layer III frames, 128 kbit/s at 44.1 kHz (417 bytes each)."""
    header = bytes((0xFF, 0xFB, 0x90, 0x64))
    return (header + bytes(413)) * n


def adts_frames(n: int, length: int = 200) -> bytes:
    """``n`` ADTS (AAC-LC, 44.1 kHz, mono) frames of ``length`` bytes."""
    header = bytes((0xFF, 0xF1, 0x50, 0x40 | (length >> 11), (length >> 3) & 0xFF,
                    ((length & 7) << 5) | 0x1F, 0xFC))
    return (header + bytes(length - 7)) * n


def verdict(body: bytes, pcm16_asked: bool = False) -> object:
    return judge(body, final=True, pcm16=pcm16_asked)


# ---------------------------------------------------------------------------------- passes

@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("encoding", ["PCM16", "PCMU", "PCMA"])
def test_speech_like_audio_passes(seed: int, encoding: str) -> None:
    body = encodings(speech_like(seed))[encoding]
    assert verdict(body, encoding == "PCM16") is None


@pytest.mark.parametrize("offset", [-6, -3, -1, 0, 1, 3])
@pytest.mark.parametrize("encoding", ["PCM16", "PCMU", "PCMA"])
def test_near_silence_passes_even_when_its_bytes_are_printable(offset: int,
                                                               encoding: str) -> None:
    rng = np.random.default_rng(offset + 100)
    body = encodings(offset + rng.normal(0, 1, 2000))[encoding]
    assert verdict(body, encoding == "PCM16") is None
    assert verdict(encodings(np.full(2000, float(offset)))[encoding],
                   encoding == "PCM16") is None


def test_quiet_alaw_that_reads_as_text_passes() -> None:
    body = encodings(np.full(400, -2.0))["PCMA"]
    assert body[:4] == b"UUUU"                         # printable, but not JSON or markup
    assert verdict(b"[UTW" + body) is None
    assert verdict(b"{|}~" * 40) is None               # quiet μ-law below zero


@pytest.mark.parametrize("seed", range(50))
def test_noise_passes(seed: int) -> None:
    noise = np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert verdict(noise) is None


def test_one_frame_header_in_ulaw_is_not_an_mp3() -> None:
    """Raw μ-law may open with bytes that parse as an MPEG header; no chain follows."""
    body = bytes((0xFF, 0xFB, 0x90, 0x64)) + encodings(tone())["PCMU"]
    assert verdict(body) is None


# ---------------------------------------------------------------------------------- refused

@pytest.mark.parametrize("body,what", [
    (json.dumps({"detail": {"status": "quota_exceeded", "message": "quota"}}).encode(), "JSON"),
    (b'  [{"error": "x"}]', "JSON"),
    (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML"),
    (b"<html>\n<head><title>503</title></head></html>", "HTML"),
    (b'<?xml version="1.0"?><Error><Code>Denied</Code></Error>', "HTML/XML"),
    (b'data: {"error": "overloaded"}\n\n', "event stream"),
    (wav_header("mulaw", 8000) + bytes(4000), "WAV"),
    (b"ID3\x04\x00\x00" + bytes(4000), "MP3"),
    (mpeg_frames(5), "MP3"),
    (adts_frames(5), "AAC"),
    (b"OggS\x00\x02" + bytes(200), "Ogg"),
    (b"fLaC\x00\x00\x00\x22" + bytes(200), "FLAC"),
    (b"\x00\x00\x00\x20ftypM4A " + bytes(200), "MP4"),
])
def test_containers_and_text_are_refused(body: bytes, what: str) -> None:
    reason = verdict(body)
    assert isinstance(reason, str) and what in reason


def test_odd_short_pcm16_body_is_refused_but_not_odd_ulaw() -> None:
    assert "odd number" in str(verdict(bytes(41), pcm16_asked=True))
    assert verdict(bytes(41), pcm16_asked=False) is None
    assert verdict(bytes(42), pcm16_asked=True) is None


@pytest.mark.parametrize("ctype,refused", [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("text/html", True), ("text/plain", True), ("application/problem+json", True),
    ("application/xml", True), ("audio/mpeg", False), ("audio/basic", False),
    ("application/octet-stream", False), ("", False), ("audio/pcm", False),
    ("text/event-stream", False),          # ElevenLabs' API spec names it for its audio
])
def test_content_types(ctype: str, refused: bool) -> None:
    assert (refused_content_type(ctype) is not None) is refused


# ---------------------------------------------------------------------------------- holding

def test_body_check_holds_only_the_probe_then_passes_bytes_through() -> None:
    audio = encodings(tone())["PCMU"]
    check = BodyCheck(pcm16=False)
    out = b""
    for i in range(0, len(audio), 10):
        piece = check.feed(audio[i:i + 10])
        if not check.decided:
            assert piece == b""
        out += piece
        if check.decided:
            assert len(out) >= PROBE_BYTES and i < PROBE_BYTES + 10
            break
    rest = audio[len(out):]
    assert check.feed(rest) is rest                     # no copy once decided
    assert out + rest == audio and check.end() == b""


def test_body_check_releases_a_short_body_at_the_end() -> None:
    check = BodyCheck(pcm16=True)
    assert check.feed(bytes(20)) == b"" and check.end() == bytes(20)


def test_body_check_refuses_a_json_body_fed_in_pieces() -> None:
    check = BodyCheck(pcm16=False)
    body = b'{"error": {"message": "Something went wrong, please retry later", "code": 1}}'
    with pytest.raises(NotAudio, match="JSON"):
        for i in range(0, len(body), 7):
            assert check.feed(body[i:i + 7]) == b""
        check.end()


def test_a_frame_chain_is_waited_for_then_refused() -> None:
    check = BodyCheck(pcm16=False)
    frames = mpeg_frames(4)
    assert check.feed(frames[:500]) == b""              # one frame and a header: not yet
    with pytest.raises(NotAudio, match="MP3"):
        check.feed(frames[500:])


def test_an_unconfirmed_frame_header_at_the_end_of_the_body_plays() -> None:
    check = BodyCheck(pcm16=False)
    start = mpeg_frames(1)[:300]
    assert check.feed(start) == b"" and check.end() == start
