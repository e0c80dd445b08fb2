"""The text-to-speech interface every TTS provider implements.

Audio format: every provider yields **signed 16-bit little-endian mono PCM at 8 kHz**
(``SAMPLE_RATE``), in chunks of about 20–100 ms. The call session converts it once to the
carrier's format (μ-law for Twilio and Telnyx). Chunks always hold whole samples (even length).
"""

from __future__ import annotations

import abc
from typing import AsyncIterator

SAMPLE_RATE = 8000
"""Sample rate of the PCM every TTS provider yields."""


class SpeechStream(abc.ABC):
    """The audio of one :meth:`TTS.synthesize` call: an async iterator of PCM chunks.

    It may be stopped mid-sentence either by :meth:`cancel` (from anywhere on the event loop) or by
    :meth:`aclose`; both make the provider stop synthesising (not merely stop yielding). After a
    cancel the iteration ends (``StopAsyncIteration``) at the next ``__anext__``.
    """

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> bytes:
        """The next chunk of s16le 8 kHz PCM."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop synthesis as soon as possible; idempotent, never blocks."""

    async def aclose(self) -> None:
        """Cancel and release resources; the ``async with``/``aclosing`` counterpart."""
        self.cancel()

    async def __aenter__(self) -> "SpeechStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class TTS(abc.ABC):
    """A text-to-speech provider, shared by every call of the daemon."""

    sample_rate: int = SAMPLE_RATE

    async def start(self) -> None:
        """Load the engine (may be slow) so a bad setup fails at start-up. Idempotent."""

    @abc.abstractmethod
    def synthesize(self, text: str) -> SpeechStream:
        """Start speaking ``text``; the returned stream yields s16le 8 kHz PCM as it is produced."""

    async def close(self) -> None:
        """Release the provider's resources (threads, connections). Idempotent."""


__all__ = ["SAMPLE_RATE", "SpeechStream", "TTS"]
