"""The failover chains: the next provider takes over within the same turn, failures counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from patterd.audio.codecs import get_codec
from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverLLM, FailoverSTT, FailoverTTS
from patterd.backends.llm.base import (LLM, LLMEvent, Message, StartOver, TextChunk, TokenUsage,
                                       ToolSpec)
from patterd.backends.stt.base import STT, STTStream, Transcript
from patterd.backends.tts.base import TTS, SpeechStream


class Errors(list[tuple[str, str]]):
    def __call__(self, layer: str, provider: str, exc: BaseException) -> None:
        self.append((layer, provider))


# -- STT -------------------------------------------------------------------------------------
class HeardStream(STTStream):
    """Transcribes by counting what it heard, or fails at finalize."""

    def __init__(self, owner: "CountingStt", encoding: str) -> None:
        self.owner, self.encoding, self.audio = owner, encoding, bytearray()
        self.closed = False

    def push(self, audio: bytes) -> None:
        self.audio += audio

    async def events(self) -> AsyncIterator[Transcript]:
        if False:
            yield Transcript("", False)

    async def finalize(self) -> Transcript:
        if self.owner.fail:
            raise BackendError("stt", self.owner.name, "connection closed (1011)")
        if self.owner.hang:
            await asyncio.sleep(60)
        heard, self.audio = bytes(self.audio), bytearray()
        self.owner.heard.append((self.encoding, heard))
        return Transcript(f"{self.owner.name} heard {len(heard)} bytes", True)

    async def close(self) -> None:
        self.closed = True


class CountingStt(STT):
    def __init__(self, name: str, encodings: frozenset[str], *, fail: bool = False,
                 hang: bool = False) -> None:
        self.name, self.input_encodings = name, encodings
        self.fail, self.hang = fail, hang
        self.heard: list[tuple[str, bytes]] = []
        self.streams: list[HeardStream] = []

    def open_stream(self, encoding: str = "PCM16") -> STTStream:
        assert encoding in self.input_encodings
        stream = HeardStream(self, encoding)
        self.streams.append(stream)
        return stream


async def test_stt_failover_replays_the_utterance_to_the_next_provider() -> None:
    errors = Errors()
    first = CountingStt("deepgram", frozenset({"PCM16", "PCMU"}), fail=True)
    second = CountingStt("openai", frozenset({"PCM16"}))
    stt = FailoverSTT([first, second], on_error=errors)
    assert stt.input_encodings == {"PCM16", "PCMU"}
    stream = stt.open_stream("PCMU")
    mulaw = get_codec("PCMU").encode(b"\x10\x02" * 800)       # 100 ms
    for _ in range(5):
        stream.push(mulaw)
    result = await stream.finalize()
    assert result.is_final and result.text == "openai heard 8000 bytes"   # 0.5 s as PCM16
    assert second.heard == [("PCM16", get_codec("PCMU").decode(mulaw * 5))]
    assert errors == [("stt", "deepgram")]
    assert first.streams[0].closed
    # The call stays on the provider that works: the next utterance goes straight to it.
    stream.push(mulaw)
    assert (await stream.finalize()).text == "openai heard 1600 bytes"
    assert errors == [("stt", "deepgram")]
    await stream.close()


async def test_stt_timeout_counts_as_a_failure() -> None:
    errors = Errors()
    slow = CountingStt("deepgram", frozenset({"PCM16"}), hang=True)
    ok = CountingStt("openai", frozenset({"PCM16"}))
    stream = FailoverSTT([slow, ok], on_error=errors, timeouts=[0.2, 1.0]).open_stream()
    stream.push(b"\x00\x01" * 80)
    assert (await stream.finalize()).text == "openai heard 160 bytes"
    assert errors == [("stt", "deepgram")]
    await stream.close()


async def test_stt_every_provider_failing_raises() -> None:
    errors = Errors()
    stt = FailoverSTT([CountingStt("a", frozenset({"PCM16"}), fail=True),
                       CountingStt("b", frozenset({"PCM16"}), fail=True)], on_error=errors)
    stream = stt.open_stream()
    stream.push(b"\x00\x00" * 10)
    with pytest.raises(BackendError):
        await stream.finalize()
    assert errors == [("stt", "a"), ("stt", "b")]
    await stream.close()


# -- LLM -------------------------------------------------------------------------------------
class ScriptedLlm(LLM):
    def __init__(self, name: str, words: list[str], fail_after: int | None = None) -> None:
        self.name, self.words, self.fail_after = name, words, fail_after
        self.requests: list[tuple[list[Message], str | None]] = []

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        self.requests.append((list(history), user_text))
        for i, word in enumerate(self.words):
            if self.fail_after is not None and i == self.fail_after:
                raise BackendError("llm", self.name, "overloaded_error", status=529)
            yield TextChunk(word)
        yield TokenUsage(10, len(self.words), 4)


async def collect(llm: LLM, **kw: object) -> list[LLMEvent]:
    return [e async for e in llm.respond([Message("system", "be brief")], "hi", **kw)]


async def test_llm_failover_before_the_first_token() -> None:
    errors = Errors()
    first = ScriptedLlm("openai", ["never"], fail_after=0)
    second = ScriptedLlm("anthropic", ["Hello", " there."])
    events = await collect(FailoverLLM([first, second], on_error=errors))
    assert [e.text for e in events if isinstance(e, TextChunk)] == ["Hello", " there."]
    assert [e for e in events if isinstance(e, TokenUsage)] == [TokenUsage(10, 2, 4, "anthropic")]
    assert errors == [("llm", "openai")]
    assert second.requests == first.requests      # the same request moved on


async def test_llm_failover_mid_stream_and_all_failing() -> None:
    errors = Errors()
    first = ScriptedLlm("openai", ["Sure", ", one", " moment"], fail_after=2)
    second = ScriptedLlm("anthropic", ["Sure."])
    events = await collect(FailoverLLM([first, second], on_error=errors))
    assert [e.text for e in events if isinstance(e, TextChunk)] == ["Sure", ", one", "Sure."]
    assert isinstance(events[2], StartOver)         # what was said so far is void
    both_fail = FailoverLLM([ScriptedLlm("a", ["x"], 0), ScriptedLlm("b", ["y"], 0)],
                            on_error=errors)
    with pytest.raises(BackendError):
        await collect(both_fail)
    assert errors == [("llm", "openai"), ("llm", "a"), ("llm", "b")]


async def test_llm_cancellation_closes_the_provider_stream() -> None:
    closed = asyncio.Event()

    class Slow(LLM):
        name = "slow"

        async def respond(self, history: Sequence[Message], user_text: str | None = None,
                          dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                          context: Mapping[str, str] | None = None
                          ) -> AsyncIterator[LLMEvent]:
            try:
                yield TextChunk("Let me")
                await asyncio.sleep(60)
                yield TextChunk(" see")
            finally:
                closed.set()

    errors = Errors()

    async def consume() -> None:
        async for _ in FailoverLLM([Slow(), ScriptedLlm("b", ["no"])],
                                   on_error=errors).respond([], "hi"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set() and errors == []       # a barge-in is not a provider failure


# -- TTS -------------------------------------------------------------------------------------
class ToneSpeech(SpeechStream):
    def __init__(self, owner: "ToneTts", encoding: str) -> None:
        self.owner, self.encoding, self.sent = owner, encoding, 0
        self.cancelled = False

    async def __anext__(self) -> bytes:
        if self.cancelled or self.sent == 3:
            raise StopAsyncIteration
        if self.owner.fail_at == self.sent:
            raise BackendError("tts", self.owner.name, "quota exceeded", status=402,
                               retryable=False)
        self.sent += 1
        pcm = b"\x00\x10" * 160
        return pcm if self.encoding == "PCM16" else get_codec(self.encoding).encode(pcm)

    def cancel(self) -> None:
        self.cancelled = True


class ToneTts(TTS):
    def __init__(self, name: str, encodings: set[str], fail_at: int | None = None) -> None:
        self.name, self.output_encodings, self.fail_at = name, frozenset(encodings), fail_at
        self.asked: list[tuple[str, str]] = []
        self.streams: list[ToneSpeech] = []

    def synthesize(self, text: str, encoding: str = "PCM16") -> SpeechStream:
        self.asked.append((text, encoding))
        self.streams.append(ToneSpeech(self, encoding))
        return self.streams[-1]


async def test_tts_failover_converts_to_the_asked_encoding() -> None:
    errors = Errors()
    cloud = ToneTts("elevenlabs", {"PCM16", "PCMU"}, fail_at=1)
    backup = ToneTts("openai", {"PCM16"})
    tts = FailoverTTS([cloud, backup], on_error=errors)
    chunks = [c async for c in tts.synthesize("Hello.", "PCMU")]
    mulaw = get_codec("PCMU").encode(b"\x00\x10" * 160)
    assert chunks == [mulaw] * 4               # one from the first provider, three re-spoken
    assert cloud.asked == [("Hello.", "PCMU")] and backup.asked == [("Hello.", "PCM16")]
    assert errors == [("tts", "elevenlabs")]


async def test_tts_last_resort_speaks_when_every_provider_fails() -> None:
    errors = Errors()
    offline = ToneTts("espeak", {"PCM16"})
    tts = FailoverTTS([ToneTts("cartesia", {"PCM16"}, fail_at=0),
                       ToneTts("deepgram", {"PCM16"}, fail_at=0)],
                      last_resort=offline, on_error=errors)
    chunks = [c async for c in tts.synthesize("Still here.")]
    assert len(chunks) == 3 and offline.asked == [("Still here.", "PCM16")]
    assert errors == [("tts", "cartesia"), ("tts", "deepgram")]


async def test_tts_cancel_stops_the_provider_and_tries_no_other() -> None:
    first = ToneTts("elevenlabs", {"PCM16"})
    second = ToneTts("openai", {"PCM16"})
    stream = FailoverTTS([first, second]).synthesize("A long sentence.")
    assert await stream.__anext__()
    stream.cancel()
    assert first.streams[0].cancelled
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert second.asked == []
