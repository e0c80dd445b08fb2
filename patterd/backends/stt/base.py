"""The speech-to-text interface every STT provider implements.

A provider is shared by the daemon; each call opens its own :class:`STTStream` with
:meth:`STT.open_stream`. The session pushes the caller's audio and reads transcripts from
:meth:`STTStream.events` (or the result of :meth:`STTStream.finalize`).

Audio format: by default **signed 16-bit little-endian mono PCM at 8 kHz** (``"PCM16"``). A
provider that takes the carrier's G.711 as is lists ``"PCMU"``/``"PCMA"`` in
:attr:`STT.input_encodings`; the session then opens the stream with that encoding and pushes
the carrier's bytes untouched (no decode, no resampling).
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

SAMPLE_RATE = 8000
"""Sample rate of the audio pushed into every STT stream."""
PCM16 = "PCM16"
"""s16le mono PCM at 8 kHz, the encoding every provider accepts."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A transcript of the caller's current utterance.

    ``is_final`` False: a partial hypothesis that later events may revise. ``is_final`` True: the
    utterance is over; ``text`` may be empty when nothing was recognised.
    """

    text: str
    is_final: bool
    endpoint: bool = False
    """The provider's own endpointing says the caller's turn is over (a partial transcript
    with this set lets the session end the turn before its VAD's silence timer does)."""


class STTStream(abc.ABC):
    """The recogniser of one call."""

    @abc.abstractmethod
    def push(self, audio: bytes) -> None:
        """Queue caller audio (in the stream's encoding); never blocks. Ignored after
        :meth:`close`."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Transcript]:
        """Partial and final transcripts, in order; ends after :meth:`close`."""

    @abc.abstractmethod
    async def finalize(self) -> Transcript:
        """End the current utterance (e.g. the VAD heard the caller stop).

        Every call yields exactly one final :class:`Transcript` on :meth:`events` (possibly with
        empty text) and also returns it.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop recognising, drop queued audio and end :meth:`events`. Idempotent."""


def append_bounded(buffer: bytearray, audio: bytes, max_bytes: int) -> None:
    """Append ``audio``, dropping the oldest bytes beyond ``max_bytes`` (whole samples)."""
    buffer += audio
    excess = len(buffer) - max_bytes
    if excess > 0:
        del buffer[: excess + (excess & 1)]


class UtteranceStream(STTStream):
    """A stream for recognisers that take a whole utterance at a time: :meth:`push` collects
    it (its last ``max_seconds``), :meth:`finalize` hands it to :meth:`recognise`."""

    def __init__(self, *, max_seconds: float = 30.0, bytes_per_second: int = 2 * SAMPLE_RATE
                 ) -> None:
        self._audio = bytearray()
        self._max_bytes = int(max_seconds * bytes_per_second)
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._closed = False

    @abc.abstractmethod
    async def recognise(self, audio: bytes) -> str:
        """The words of one whole utterance (may raise :class:`BackendError`)."""

    def push(self, audio: bytes) -> None:
        """Append caller audio to the current utterance."""
        if not self._closed:
            append_bounded(self._audio, audio, self._max_bytes)

    async def events(self) -> AsyncIterator[Transcript]:
        """One final transcript per :meth:`finalize`; ends after :meth:`close`."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def finalize(self) -> Transcript:
        """Recognise the utterance collected since the last call and start a new one (the
        audio is gone from this stream even when recognition fails)."""
        async with self._lock:
            audio, self._audio = bytes(self._audio), bytearray()
            result = Transcript(await self.recognise(audio), True)
            if not self._closed:
                self._queue.put_nowait(result)
            return result

    async def close(self) -> None:
        """Drop buffered audio and end :meth:`events`."""
        if not self._closed:
            self._closed = True
            self._audio.clear()
            self._queue.put_nowait(None)


class STT(abc.ABC):
    """A speech-to-text provider, shared by every call of the daemon."""

    sample_rate: int = SAMPLE_RATE
    name: str = ""
    """The provider's name (``stt.provider``), for metrics and pricing."""
    input_encodings: frozenset[str] = frozenset({PCM16})
    """Encodings :meth:`open_stream` accepts: ``"PCM16"`` always, ``"PCMU"``/``"PCMA"`` for
    providers that take G.711 directly."""

    async def start(self) -> None:
        """Prepare models (may be slow); called once before the first stream. Idempotent."""

    @abc.abstractmethod
    def open_stream(self, encoding: str = PCM16) -> STTStream:
        """A new recogniser for one call, fed audio in ``encoding`` (one of
        :attr:`input_encodings`). Connecting happens in the background: pushes are queued."""

    async def close(self) -> None:
        """Release the provider's resources. Idempotent."""


__all__ = ["PCM16", "SAMPLE_RATE", "STT", "STTStream", "Transcript", "UtteranceStream",
           "append_bounded"]
