"""Instant stand-ins for STT and TTS, for tests and benchmarks of the gateway path itself.

The stub STT "recognises" a fixed text for every utterance; the stub TTS returns a tone of a
length proportional to the text at once. The rules LLM is the real one.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator

from patterd.backends.stt.base import STT, STTStream, Transcript
from patterd.backends.tts.base import TTS, SpeechStream
from patterd.call.backends import Backends, default_segmenter
from patterd.config import Config


class StubSttStream(STTStream):
    """Hears ``text`` whenever there was speech."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._heard = 0
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()

    def push(self, pcm_s16le_8khz: bytes) -> None:
        self._heard += len(pcm_s16le_8khz)

    async def events(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        while (item := await self._queue.get()) is not None:
            yield item

    async def finalize(self) -> Transcript:
        result = Transcript(self._text if self._heard else "", True)
        self._heard = 0
        self._queue.put_nowait(result)
        return result

    async def close(self) -> None:
        self._queue.put_nowait(None)


class StubStt(STT):
    """Every utterance is ``text``."""

    def __init__(self, text: str = "goodbye") -> None:
        self.text = text

    def open_stream(self, encoding: str = "PCM16") -> STTStream:
        return StubSttStream(self.text)


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """A 8 kHz s16le sine."""
    n = int(seconds * 8000)
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * freq * i / 8000))
                                   for i in range(n)))


class StubSpeech(SpeechStream):
    def __init__(self, pcm: bytes) -> None:
        self._chunks = [pcm[i:i + 1600] for i in range(0, len(pcm), 1600)]
        self.cancelled = False

    async def __anext__(self) -> bytes:
        if self.cancelled or not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class StubTts(TTS):
    """A tone, 60 ms per character (about real speaking rate), produced instantly."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def synthesize(self, text: str, encoding: str = "PCM16") -> SpeechStream:
        self.texts.append(text)
        return StubSpeech(tone(0.06 * len(text)))


def stub_backends(config: Config, stt_text: str = "goodbye") -> Backends:
    """Stub STT/TTS, the config's rules LLM, the config's VAD."""
    from patterd.backends.llm.rules import RulesLLM
    segmenter, batcher = default_segmenter(config)
    return Backends(stt=StubStt(stt_text), llm=RulesLLM(config.llm, config.agent),
                    tts=StubTts(), new_segmenter=segmenter, vad_batcher=batcher)
