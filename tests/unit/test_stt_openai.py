"""OpenAI transcription STT against a local fake of ``POST /v1/audio/transcriptions``."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from patterd.backends import create_stt
from patterd.backends.errors import BackendError
from patterd.backends.stt.base import Transcript
from patterd.backends.stt.openai import OpenAISTT, OpenAIStream, iso639_1, wav_pcm16
from patterd.config.model import AgentConfig, BackendConfig
from tests.support.fakes.openai_transcribe import (RATE_LIMITED, SERVER_ERROR,
                                                   FakeOpenAITranscribe, parse_wav)

KEY = "sk-proj-secret0123456789abcdefXYZ"


def tone(ms: int, amp: int = 8000) -> bytes:
    t = np.arange(8000 * ms // 1000) / 8000
    return (amp * np.sin(2 * math.pi * 440 * t)).astype("<i2").tobytes()


def feed(stream: OpenAIStream, pcm: bytes) -> None:
    for i in range(0, len(pcm), 320):
        stream.push(pcm[i:i + 320])


def config(base: str, key: str = KEY, **kw: Any) -> BackendConfig:
    options = kw.pop("options", {})
    return BackendConfig("openai", api_key=key, base_url=base,
                         options=MappingProxyType(options), **kw)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAITranscribe]:
    fake = FakeOpenAITranscribe(KEY, ["Hello, I'd like to book a table.", "For two."])
    fake.base = await fake.start()  # type: ignore[attr-defined]
    yield fake
    await fake.stop()


@pytest.fixture
async def provider(fake: FakeOpenAITranscribe) -> AsyncIterator[OpenAISTT]:
    stt = OpenAISTT(config(fake.base), AgentConfig())  # type: ignore[attr-defined]
    await stt.start()
    yield stt
    await stt.close()


async def test_factory_start_sends_nothing(fake: FakeOpenAITranscribe) -> None:
    stt = create_stt(config(fake.base), AgentConfig())  # type: ignore[attr-defined]
    assert isinstance(stt, OpenAISTT) and stt.name == "openai"
    assert stt.input_encodings == {"PCM16"}
    await stt.start()
    with pytest.raises(ValueError):
        stt.open_stream("PCMU")
    await stt.close()
    assert fake.requests == [] and fake.rejected == []


async def test_utterance_sent_as_wav(fake: FakeOpenAITranscribe, provider: OpenAISTT) -> None:
    stream = provider.open_stream()
    pcm = tone(700)
    feed(stream, pcm)
    result = await stream.finalize()
    assert result == Transcript("Hello, I'd like to book a table.", True)
    req = fake.requests[0]
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.fields == {"model": "gpt-4o-mini-transcribe", "language": "en",
                          "response_format": "json"}
    assert req.filename.endswith(".wav") and req.content_type == "audio/wav"
    assert req.format == {"audio_format": 1, "rate": 8000, "channels": 1, "bits": 16}
    assert req.pcm == pcm
    # The next utterance is sent alone, and both finals came out on events().
    feed(stream, tone(300))
    assert (await stream.finalize()).text == "For two."
    assert fake.requests[1].pcm == tone(300)
    await stream.close()
    assert [t async for t in stream.events()] == [result, Transcript("For two.", True)]


def test_wav_header_is_valid() -> None:
    fmt, pcm = parse_wav(wav_pcm16(b"\x01\x02" * 10))
    assert fmt == {"audio_format": 1, "channels": 1, "rate": 8000, "bits": 16}
    assert pcm == b"\x01\x02" * 10


@pytest.mark.parametrize("tag,code", [("en-US", "en"), ("pt_BR", "pt"), ("FR", "fr"),
                                      ("de", "de"), ("yue-HK", ""), ("", "")])
def test_iso639_1(tag: str, code: str) -> None:
    assert iso639_1(tag) == code


async def test_language_from_agent_or_option(fake: FakeOpenAITranscribe) -> None:
    base = fake.base  # type: ignore[attr-defined]
    a = OpenAISTT(config(base, model="whisper-1"), AgentConfig(language="es-MX"))
    b = OpenAISTT(config(base, options={"language": "de-DE"}), AgentConfig(language="es-MX"))
    c = OpenAISTT(config(base), AgentConfig(language="yue-HK"))   # no 2-letter code: detect
    try:
        for stt in (a, b, c):
            s = stt.open_stream()
            feed(s, tone(200))
            await s.finalize()
    finally:
        for stt in (a, b, c):
            await stt.close()
    assert [r.fields.get("language") for r in fake.requests] == ["es", "de", None]
    assert fake.requests[0].fields["model"] == "whisper-1"


async def test_empty_or_too_short_utterance_sends_nothing(fake: FakeOpenAITranscribe,
                                                          provider: OpenAISTT) -> None:
    stream = provider.open_stream()
    assert await stream.finalize() == Transcript("", True)
    feed(stream, tone(60))                      # the API refuses < 0.1 s (audio_too_short)
    assert await stream.finalize() == Transcript("", True)
    assert fake.requests == [] and fake.rejected == []


async def test_long_utterance_keeps_the_last_30_s(fake: FakeOpenAITranscribe,
                                                  provider: OpenAISTT) -> None:
    stream = provider.open_stream()
    first = bytes(8000 * 2)                     # 1 s that falls out
    rest = tone(30_000)
    stream.push(first)
    stream.push(rest)
    await stream.finalize()
    assert fake.requests[0].pcm == rest


async def test_wrong_key_401_never_shows_the_key(fake: FakeOpenAITranscribe) -> None:
    wrong = "sk-proj-wrongwrongwrong9876"
    stt = OpenAISTT(config(fake.base, key=wrong), AgentConfig())  # type: ignore[attr-defined]
    try:
        stream = stt.open_stream()
        feed(stream, tone(200))
        with pytest.raises(BackendError) as err:
            await stream.finalize()
    finally:
        await stt.close()
    assert err.value.status == 401 and not err.value.retryable
    assert err.value.message.startswith("Incorrect API key provided")
    assert wrong not in str(err.value) and KEY not in str(err.value)
    assert fake.rejected[0][1]["code"] == "invalid_api_key"


@pytest.mark.parametrize("failure,retryable", [(RATE_LIMITED, True), (SERVER_ERROR, True)])
async def test_error_shapes(fake: FakeOpenAITranscribe, provider: OpenAISTT,
                            failure: tuple[int, dict[str, Any]], retryable: bool) -> None:
    fake.fail, fake.fail_times = failure, 1
    stream = provider.open_stream()
    feed(stream, tone(200))
    with pytest.raises(BackendError) as err:
        await stream.finalize()
    assert (err.value.status, err.value.message, err.value.retryable) == (
        failure[0], failure[1]["message"], retryable)
    feed(stream, tone(200))                     # the stream goes on with the next utterance
    assert (await stream.finalize()).text == "Hello, I'd like to book a table."


async def test_unknown_model_is_400(fake: FakeOpenAITranscribe) -> None:
    stt = OpenAISTT(config(fake.base, model="gpt-9-transcribe"), AgentConfig())  # type: ignore
    try:
        stream = stt.open_stream()
        feed(stream, tone(200))
        with pytest.raises(BackendError) as err:
            await stream.finalize()
    finally:
        await stt.close()
    assert err.value.status == 400 and not err.value.retryable
    assert err.value.message == "Invalid model gpt-9-transcribe."


async def test_timeout_and_dropped_connection(fake: FakeOpenAITranscribe) -> None:
    stt = OpenAISTT(config(fake.base, timeout=0.2), AgentConfig())  # type: ignore[attr-defined]
    try:
        fake.delay = 1.0
        stream = stt.open_stream()
        feed(stream, tone(200))
        with pytest.raises(BackendError) as err:
            await stream.finalize()
        assert err.value.retryable and "within 0.2 s" in err.value.message
        fake.delay, fake.drop = 0.0, True
        feed(stream, tone(200))
        with pytest.raises(BackendError) as err:
            await stream.finalize()
        assert err.value.retryable and err.value.status is None
    finally:
        await stt.close()
