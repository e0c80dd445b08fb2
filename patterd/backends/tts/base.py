"""The text-to-speech interface every TTS provider implements.

Audio format: by default a provider yields **signed 16-bit little-endian mono PCM at 8 kHz**
(``"PCM16"``, ``SAMPLE_RATE``), in chunks of about 20–100 ms, always whole samples (even length);
the call session converts it once to the carrier's format. A provider that can produce the
carrier's G.711 itself lists ``"PCMU"``/``"PCMA"`` in :attr:`TTS.output_encodings`; the
session then asks for that encoding and sends the bytes on untouched.
"""

from __future__ import annotations

import abc
from typing import AsyncIterator

SAMPLE_RATE = 8000
"""Sample rate of the audio every TTS provider yields."""
PCM16 = "PCM16"


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
        """The next chunk of audio in the requested encoding.

        Raises :class:`patterd.backends.errors.BackendError` when the provider fails."""

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
    name: str = ""
    """The provider's name (``tts.provider``), for metrics and pricing."""
    output_encodings: frozenset[str] = frozenset({PCM16})
    """Encodings :meth:`synthesize` can produce: ``"PCM16"`` always, ``"PCMU"``/``"PCMA"`` for
    providers that synthesise telephone audio directly."""

    async def start(self) -> None:
        """Load the engine (may be slow) so a bad setup fails at start-up. Idempotent."""

    @abc.abstractmethod
    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Start speaking ``text``; the returned stream yields audio in ``encoding`` (one of
        :attr:`output_encodings`) as it is produced. Connecting happens lazily, on the first
        ``__anext__``."""

    async def close(self) -> None:
        """Release the provider's resources (threads, connections). Idempotent."""


__all__ = ["PCM16", "SAMPLE_RATE", "SpeechStream", "TTS"]
