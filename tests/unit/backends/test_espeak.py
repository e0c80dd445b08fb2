"""The espeak TTS provider: real libespeak-ng, 8 kHz s16le output, streaming and cancelling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from patterd.backends import TTS, UnknownProviderError, create_tts
from patterd.backends.tts import espeak
from patterd.backends.tts.espeak import MAX_BUFFERED, EspeakTTS
from patterd.config.model import BackendConfig
from patterd.ops.supervise import Supervisor

SENTENCE = "Thanks for calling. How can I help you today? Say billing, sales, or goodbye."
LONG = " ".join(["This is a rather long sentence that keeps the engine busy."] * 60)  # ~4 min


@pytest.fixture
async def tts() -> TTS:
    t = create_tts(BackendConfig("espeak", voice="en-us", options={"rate": 175}))
    await t.start()
    yield t
    await t.close()


def rms(pcm: bytes) -> float:
    a = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(a * a))) if len(a) else 0.0


async def test_sentence_is_audible_8khz_of_plausible_length(tts: TTS) -> None:
    assert tts.sample_rate == 8000
    chunks = [c async for c in tts.synthesize(SENTENCE)]
    assert chunks and all(len(c) % 2 == 0 and c for c in chunks)
    pcm = b"".join(chunks)
    seconds = len(pcm) / 2 / 8000
    assert 3.0 < seconds < 8.0             # 14 words at 175 wpm ≈ 5 s
    assert rms(pcm) > 500
    # chunks are ~20–100 ms of audio
    assert max(len(c) for c in chunks) <= 2 * 8000 * 0.1
    # no energy above the 4 kHz Nyquist leaked back as aliasing: spectrum sane, speech band
    spectrum = np.abs(np.fft.rfft(np.frombuffer(pcm, "<i2").astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm) // 2, 1 / 8000)
    assert spectrum[(freqs > 100) & (freqs < 3000)].sum() > spectrum[freqs >= 3000].sum()


async def test_rate_option_changes_duration() -> None:
    async def seconds(rate: int) -> float:
        t = EspeakTTS(BackendConfig("espeak", options={"rate": rate}))
        return len(b"".join([c async for c in t.synthesize(SENTENCE)])) / 16000
    slow, fast = await seconds(120), await seconds(260)
    assert slow > 1.6 * fast


async def test_first_chunk_arrives_before_synthesis_ends(tts: TTS) -> None:
    stream = tts.synthesize(LONG)
    t0 = time.perf_counter()
    first = await stream.__anext__()
    ttfc = time.perf_counter() - t0
    assert first and ttfc < 0.5
    assert not stream.finished             # the engine is still working on the text
    await stream.aclose()


async def test_cancel_mid_sentence_stops_the_engine(tts: TTS) -> None:
    stream = tts.synthesize(LONG)
    got = [await stream.__anext__() for _ in range(3)]
    stream.cancel()
    rest = [c async for c in stream]       # iteration ends promptly after a cancel
    assert rest == []
    t0 = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - t0 < 1.0
    assert stream.finished
    produced_s = stream.produced_bytes / 16000
    assert sum(map(len, got)) > 0
    assert produced_s <= MAX_BUFFERED / 16000 + 1   # far less than the ~4 minutes of the text
    # the process-wide engine is free and works again
    pcm = b"".join([c async for c in tts.synthesize("billing")])
    assert 0.3 < len(pcm) / 16000 < 2.0 and rms(pcm) > 500


async def test_abandoned_iteration_frees_the_engine(tts: TTS) -> None:
    async for _ in tts.synthesize(LONG):
        break                              # the stream is dropped without aclose()
    pcm = await asyncio.wait_for(_collect(tts, "goodbye"), 5)
    assert len(pcm) > 8000


async def _collect(tts: TTS, text: str) -> bytes:
    return b"".join([c async for c in tts.synthesize(text)])


async def test_concurrent_texts_are_serialised_and_complete(tts: TTS) -> None:
    texts = ["one two three", "billing please", "goodbye and thanks for calling"]
    alone = [await _collect(tts, t) for t in texts]
    together = await asyncio.gather(*(_collect(tts, t) for t in texts))
    for a, b in zip(alone, together):      # each text whole, none interleaved with another
        # espeak's output varies by a few ms from run to run; interleaving would change the
        # length by whole words (hundreds of ms).
        assert abs(len(a) - len(b)) < 800 and rms(b) > 500


async def test_empty_text_yields_nothing_much(tts: TTS) -> None:
    assert rms(await _collect(tts, "")) < 50


async def test_unknown_voice_fails_at_start() -> None:
    t = EspeakTTS(BackendConfig("espeak", voice="xx-nonexistent"))
    with pytest.raises(ValueError, match="unknown voice"):
        await t.start()
    with pytest.raises(ValueError, match="unknown voice"):
        await _collect(t, "hello")


def test_unknown_provider() -> None:
    with pytest.raises(UnknownProviderError, match="festival"):
        create_tts(BackendConfig("festival"))


async def test_a_slow_reader_of_a_long_text_never_holds_up_another_call(
        tts: TTS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is shared by every call: once a reader's buffer is full it only waits for
    that reader while nobody else waits for the engine."""
    monkeypatch.setattr(espeak, "MAX_BUFFERED", 16000)      # 1 s of audio
    slow = tts.synthesize(LONG)                            # read in real time, say
    first = await slow.__anext__()
    await asyncio.sleep(0.3)                               # its 1 s buffer is full now
    assert not slow.finished
    t0 = time.perf_counter()
    pcm = await asyncio.wait_for(_collect(tts, "goodbye"), 10)
    assert time.perf_counter() - t0 < 2.0 and rms(pcm) > 500
    rest = b"".join([c async for c in slow])               # the long text is still whole
    assert len(first + rest) / 16000 > 120


async def test_a_failing_text_is_reported_and_the_engine_goes_on(
        tts: TTS, monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = Supervisor()
    tts.supervise(supervisor)                              # type: ignore[attr-defined]

    def broken(rate_from: int, rate_to: int) -> Any:
        raise MemoryError("no room for a resampler")

    monkeypatch.setattr(espeak, "Resampler", broken)
    with pytest.raises(MemoryError):
        await _collect(tts, "billing")
    monkeypatch.undo()
    await asyncio.sleep(0)                                 # the report hops to the loop
    assert supervisor.errors == {"espeak": 1}
    assert rms(await _collect(tts, "billing")) > 500
