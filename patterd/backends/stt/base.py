"""The speech-to-text interface every STT provider implements.

A provider is shared by the daemon; each call opens its own :class:`STTStream` with
:meth:`STT.open_stream`. The session pushes the caller's audio as **signed 16-bit little-endian
mono PCM at 8 kHz** and reads transcripts from :meth:`STTStream.events`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import AsyncIterator

SAMPLE_RATE = 8000
"""Sample rate of the PCM pushed into every STT stream."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A transcript of the caller's current utterance.

    ``is_final`` False: a partial hypothesis that later events may revise. ``is_final`` True: the
    utterance is over; ``text`` may be empty when nothing was recognised.
    """

    text: str
    is_final: bool


class STTStream(abc.ABC):
    """The recogniser of one call."""

    @abc.abstractmethod
    def push(self, pcm_s16le_8khz: bytes) -> None:
        """Queue caller audio; never blocks. Ignored after :meth:`close`."""

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


class STT(abc.ABC):
    """A speech-to-text provider, shared by every call of the daemon."""

    sample_rate: int = SAMPLE_RATE

    async def start(self) -> None:
        """Prepare models (may be slow); called once before the first stream. Idempotent."""

    @abc.abstractmethod
    def open_stream(self) -> STTStream:
        """A new recogniser for one call."""

    async def close(self) -> None:
        """Release the provider's resources. Idempotent."""


__all__ = ["SAMPLE_RATE", "STT", "STTStream", "Transcript"]
