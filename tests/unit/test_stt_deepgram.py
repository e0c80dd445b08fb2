"""Deepgram live STT against a local fake speaking Deepgram's /v1/listen WebSocket protocol."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from patterd.audio.codecs import alaw_encode, ulaw_encode
from patterd.backends import create_stt
from patterd.backends.errors import BackendError
from patterd.backends.stt.base import Transcript
from patterd.backends.stt.deepgram import DeepgramSTT, DeepgramStream
from patterd.config.model import AgentConfig, BackendConfig
from tests.support.fakes.deepgram_listen import FakeDeepgramListen

KEY = "dg-secret-0123456789abcdef"
RATE = 8000


def tone(ms: int, amp: int = 8000) -> bytes:
    """A 440 Hz tone as s16le at 8 kHz (speech, for the fake's energy detector)."""
    t = np.arange(RATE * ms // 1000) / RATE
    return (amp * np.sin(2 * math.pi * 440 * t)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


def encode(pcm: bytes, encoding: str) -> bytes:
    return {"PCM16": lambda b: b, "PCMU": ulaw_encode, "PCMA": alaw_encode}[encoding](pcm)


def feed(stream: DeepgramStream, audio: bytes, encoding: str = "PCMU") -> None:
    """Push ``audio`` in 20 ms frames, like the call session does."""
    step = 320 if encoding == "PCM16" else 160
    for i in range(0, len(audio), step):
        stream.push(audio[i:i + step])


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait for a condition (bounded)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def config(base: str, key: str = KEY, **options: Any) -> BackendConfig:
    timeout = options.pop("timeout", 0.0)
    model = options.pop("model", "")
    return BackendConfig("deepgram", api_key=key, base_url=base, model=model, timeout=timeout,
                         options=MappingProxyType(options))


@pytest.fixture
async def fake() -> AsyncIterator[FakeDeepgramListen]:
    fake = FakeDeepgramListen(KEY, ["hello there how are you", "second thing"])
    fake.base = await fake.start()  # type: ignore[attr-defined]
    yield fake
    await fake.stop()


@pytest.fixture
async def provider(fake: FakeDeepgramListen) -> AsyncIterator[DeepgramSTT]:
    stt = DeepgramSTT(config(fake.base), AgentConfig())  # type: ignore[attr-defined]
    await stt.start()
    yield stt
    await stt.close()


class Collector:
    """Reads a stream's events in the background."""

    def __init__(self, stream: DeepgramStream) -> None:
        self.items: list[Transcript] = []
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(stream))

    async def _run(self, stream: DeepgramStream) -> None:
        try:
            async for t in stream.events():
                self.items.append(t)
        except BackendError as exc:
            self.error = exc


async def test_factory_and_start_do_not_connect(fake: FakeDeepgramListen) -> None:
    stt = create_stt(config(fake.base), AgentConfig())  # type: ignore[attr-defined]
    assert isinstance(stt, DeepgramSTT) and stt.name == "deepgram"
    assert stt.input_encodings == {"PCM16", "PCMU", "PCMA"}
    await stt.start()
    await asyncio.sleep(0.05)
    assert fake.sessions == [] and fake.refused == []
    await stt.close()


async def test_mulaw_goes_through_untouched(fake: FakeDeepgramListen,
                                            provider: DeepgramSTT) -> None:
    stream = provider.open_stream("PCMU")
    audio = ulaw_encode(tone(600) + silence(100)) + bytes(range(256))  # any byte values
    feed(stream, audio)                         # pushed before the socket is even open
    result = await stream.finalize()
    await stream.close()
    s = fake.sessions[0]
    assert bytes(s.audio) == audio              # byte for byte: no decoding, no resampling
    assert s.binary_frames < len(audio) // 160  # batched, not one frame per push
    assert s.headers["Authorization"] == f"Token {KEY}"
    assert {k: s.query[k] for k in ("encoding", "sample_rate", "channels", "model",
                                    "interim_results", "endpointing", "utterance_end_ms",
                                    "vad_events", "smart_format", "language")} == {
        "encoding": "mulaw", "sample_rate": "8000", "channels": "1", "model": "nova-3",
        "interim_results": "true", "endpointing": "300", "utterance_end_ms": "1000",
        "vad_events": "true", "smart_format": "true", "language": "en-US"}
    assert result == Transcript("hello there how are you", True)


async def test_interim_then_final_with_speech_final_answers_without_round_trip(
        fake: FakeDeepgramListen, provider: DeepgramSTT) -> None:
    stream = provider.open_stream("PCMU")
    events = Collector(stream)
    feed(stream, ulaw_encode(tone(1000) + silence(400)))
    s_done = lambda: any(r["speech_final"] for r in fake.sessions[0].results())  # noqa: E731
    await until(lambda: bool(fake.sessions) and s_done())
    await until(lambda: stream.received >= len(fake.sessions[0].sent))
    result = await stream.finalize()
    assert result == Transcript("hello there how are you", True)
    assert "Finalize" not in fake.sessions[0].control_types()     # no round trip
    assert stream.finalizes_sent == 0
    await until(lambda: events.items and events.items[-1].is_final)
    partials = [t.text for t in events.items if not t.is_final]
    assert partials[0] == "hello" and "hello there" in partials
    # The speech_final was announced at once, so the session could end the turn early.
    endpoints = [t for t in events.items if t.endpoint]
    assert endpoints == [Transcript("hello there how are you", False, endpoint=True)]
    assert all("hello there how are you".startswith(p) for p in partials)
    assert events.items[-1] == result
    assert [t for t in events.items if t.is_final] == [result]
    await stream.close()
    await events.task
    assert events.error is None


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA", "PCM16"])
async def test_finalize_without_endpoint_sends_finalize(
        fake: FakeDeepgramListen, provider: DeepgramSTT, encoding: str) -> None:
    stream = provider.open_stream(encoding)
    feed(stream, encode(tone(500), encoding), encoding)   # the caller stops: no silence yet
    result = await stream.finalize()
    s = fake.sessions[0]
    assert s.query["encoding"] == {"PCMU": "mulaw", "PCMA": "alaw", "PCM16": "linear16"}[
        encoding]
    assert result == Transcript("hello there how are you", True)
    assert s.control_types() == ["Finalize"]
    assert any(r["from_finalize"] for r in s.results())
    # The next utterance starts clean.
    feed(stream, encode(tone(300), encoding), encoding)
    assert await stream.finalize() == Transcript("second thing", True)
    await stream.close()


async def test_silence_gives_an_empty_final(fake: FakeDeepgramListen,
                                            provider: DeepgramSTT) -> None:
    stream = provider.open_stream("PCMU")
    feed(stream, ulaw_encode(silence(300)))
    assert await stream.finalize() == Transcript("", True)
    assert fake.sessions[0].control_types() == ["Finalize"]
    assert await stream.finalize() == Transcript("", True)    # nothing new: no round trip
    assert fake.sessions[0].control_types() == ["Finalize"]
    await stream.close()


async def test_segments_joined_and_is_final_speech_final_counted_once(
        fake: FakeDeepgramListen, provider: DeepgramSTT) -> None:
    fake.script = ["one two three four five six seven eight"]
    fake.final_every_ms = 400                   # long speech is finalised in pieces
    stream = provider.open_stream("PCMU")
    feed(stream, ulaw_encode(tone(1000) + silence(400)))
    await until(lambda: bool(fake.sessions) and any(
        r["speech_final"] for r in fake.sessions[0].results()))
    await until(lambda: stream.received >= len(fake.sessions[0].sent))
    finals = [r for r in fake.sessions[0].results() if r["is_final"]]
    assert len(finals) >= 3 and finals[-1]["speech_final"] and finals[-1]["channel"][
        "alternatives"][0]["transcript"]      # both flags on one message, with words
    result = await stream.finalize()
    assert result.text == "one two three four five six seven eight"
    await stream.close()


async def test_keepalive_keeps_the_socket_open_through_silence() -> None:
    fake = FakeDeepgramListen(KEY, ["first", "second"], inactivity_timeout=1.0)
    base = await fake.start()
    stt = DeepgramSTT(config(base), AgentConfig(), keepalive_interval=0.3)
    try:
        stream = stt.open_stream("PCMU")
        feed(stream, ulaw_encode(tone(300)))
        assert (await stream.finalize()).text == "first"
        s = fake.sessions[0]
        await until(lambda: s.control_types().count("KeepAlive") >= 5, timeout=5)
        assert not s.done.is_set()              # > 1.5 s of silence, still open
        feed(stream, ulaw_encode(tone(300)))
        assert (await stream.finalize()).text == "second"
        assert s.audio_seconds == pytest.approx(0.6)   # KeepAlive never went as audio
        await stream.close()
        assert s.close_code == 1000
    finally:
        await stt.close()
        await fake.stop()


async def test_without_keepalive_deepgram_closes_net_0001() -> None:
    fake = FakeDeepgramListen(KEY, ["first"], inactivity_timeout=0.5)
    base = await fake.start()
    stt = DeepgramSTT(config(base), AgentConfig(), keepalive_interval=30)
    try:
        stream = stt.open_stream("PCMU")
        events = Collector(stream)
        feed(stream, ulaw_encode(tone(300)))
        assert (await stream.finalize()).text == "first"
        await until(lambda: fake.sessions[0].done.is_set())
        await events.task                       # events() ends with the error
        assert isinstance(events.error, BackendError)
        stream.push(b"\xff" * 160)              # never raises
        with pytest.raises(BackendError) as err:
            await stream.finalize()
        assert err.value.status == 1011 and "NET-0001" in err.value.message
        assert err.value.retryable
        await stream.close()
    finally:
        await stt.close()
        await fake.stop()


@pytest.mark.parametrize("status,code,msg,retryable", [
    (402, "ASR_PAYMENT_REQUIRED", "Project does not have enough credits.", False),
    (429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later.", True),
    (503, "SERVICE_UNAVAILABLE", "Service unavailable.", True)])
async def test_handshake_refusals(fake: FakeDeepgramListen, provider: DeepgramSTT,
                                  status: int, code: str, msg: str, retryable: bool) -> None:
    fake.refuse = (status, code, msg)
    stream = provider.open_stream("PCMU")
    feed(stream, ulaw_encode(tone(200)))
    with pytest.raises(BackendError) as err:
        await stream.finalize()
    assert (err.value.status, err.value.message, err.value.retryable) == (status, msg, retryable)
    await stream.close()


async def test_wrong_key_is_401_without_the_key(fake: FakeDeepgramListen) -> None:
    wrong = "dg-wrong-key-abcdef"
    stt = DeepgramSTT(config(fake.base, key=wrong), AgentConfig())  # type: ignore[attr-defined]
    try:
        stream = stt.open_stream("PCMU")
        events = Collector(stream)
        stream.push(b"\xff" * 160)
        with pytest.raises(BackendError) as err:
            await stream.finalize()
        assert err.value.status == 401 and not err.value.retryable
        assert err.value.message == "Invalid credentials."
        assert wrong not in str(err.value) and KEY not in str(err.value)
        assert fake.refused[0]["headers"]["Authorization"] == f"Token {wrong}"
        stream.push(b"\xff" * 160)              # after the failure: ignored, no exception
        await events.task
        assert isinstance(events.error, BackendError) and events.error.status == 401
        await stream.close()
    finally:
        await stt.close()


async def test_bad_model_is_400(fake: FakeDeepgramListen) -> None:
    stt = DeepgramSTT(config(fake.base, model="nova-99"), AgentConfig())  # type: ignore
    try:
        stream = stt.open_stream("PCMU")
        with pytest.raises(BackendError) as err:
            await stream.finalize()
        assert err.value.status == 400 and not err.value.retryable
        assert "No such model" in err.value.message
        assert fake.refused[0]["query"]["model"] == "nova-99"
    finally:
        await stt.close()


async def test_mid_stream_close_fails_finalize(fake: FakeDeepgramListen,
                                               provider: DeepgramSTT) -> None:
    fake.close_after_seconds = 0.3
    stream = provider.open_stream("PCMU")
    feed(stream, ulaw_encode(tone(600)))
    await until(lambda: bool(fake.sessions) and fake.sessions[0].done.is_set())
    with pytest.raises(BackendError) as err:
        await stream.finalize()
    assert err.value.status == 1011 and err.value.message.startswith("NET-0000")
    assert err.value.retryable
    await stream.close()


async def test_stalled_service_fails_finalize_in_bounded_time(fake: FakeDeepgramListen) -> None:
    fake.stall = True
    stt = DeepgramSTT(config(fake.base), AgentConfig(), finalize_timeout=0.3)  # type: ignore
    try:
        stream = stt.open_stream("PCMU")
        feed(stream, ulaw_encode(tone(300)))
        async with asyncio.timeout(2):
            with pytest.raises(BackendError) as err:
                await stream.finalize()
        assert err.value.retryable and "Finalize" in err.value.message
        assert fake.sessions[0].control_types() == ["Finalize"]
        await stream.close()
    finally:
        await stt.close()


async def test_connect_timeout_and_refused_connection(fake: FakeDeepgramListen) -> None:
    fake.handshake_delay = 2.0
    stt = DeepgramSTT(config(fake.base, timeout=0.2), AgentConfig())  # type: ignore
    closed = DeepgramSTT(config("ws://127.0.0.1:9/v1"), AgentConfig())
    try:
        with pytest.raises(BackendError) as err:
            await stt.open_stream("PCMU").finalize()
        assert err.value.retryable and "within 0.2 s" in err.value.message
        with pytest.raises(BackendError) as err:
            await closed.open_stream("PCMU").finalize()
        assert err.value.retryable and "connection failed" in err.value.message
    finally:
        await stt.close()
        await closed.close()


async def test_close_flushes_the_last_words(fake: FakeDeepgramListen,
                                            provider: DeepgramSTT) -> None:
    stream = provider.open_stream("PCMU")
    events = Collector(stream)
    audio = ulaw_encode(tone(600))
    feed(stream, audio)
    await until(lambda: bool(fake.sessions))    # connected; audio still in the batch timer
    await stream.close()
    s = fake.sessions[0]
    assert bytes(s.audio) == audio
    assert s.control_types() == ["CloseStream"]
    assert (s.closed_by, s.close_code) == ("server", 1000)      # a clean end, not a cut
    assert stream.metadata["duration"] == pytest.approx(0.6)
    await events.task
    assert events.items[-1] == Transcript("hello there how are you", True)
    stream.push(b"\xff" * 160)                  # ignored after close
    assert await stream.finalize() == Transcript("", True)


async def test_close_before_connected(fake: FakeDeepgramListen, provider: DeepgramSTT) -> None:
    fake.handshake_delay = 1.0
    stream = provider.open_stream("PCMU")
    stream.push(b"\x00" * 160)
    async with asyncio.timeout(1):           # does not wait for the slow handshake
        await stream.close()
    async with asyncio.timeout(1):           # and events() ends
        assert [t async for t in stream.events()] == []
    stream.push(b"\x00" * 160)               # ignored after close, never raises


async def test_many_concurrent_streams(fake: FakeDeepgramListen, provider: DeepgramSTT) -> None:
    # Each connection's words name its request id, so crossed wires would show.
    fake.recogniser = lambda s, i: f"caller {s.request_id} utterance {i}"
    n = 120                                     # more than aiohttp's default 100 per session
    streams = [provider.open_stream("PCMU") for _ in range(n)]
    speech = ulaw_encode(tone(400) + silence(100))
    for st in streams:
        feed(st, speech)
    results = await asyncio.gather(*(st.finalize() for st in streams))
    assert len(fake.sessions) == n
    for st, res in zip(streams, results):
        assert st.request_id and res.text == f"caller {st.request_id} utterance 0"
    await asyncio.gather(*(st.close() for st in streams))
    assert all(s.close_code == 1000 for s in fake.sessions)
    assert fake.audio_seconds == pytest.approx(n * 0.5)
