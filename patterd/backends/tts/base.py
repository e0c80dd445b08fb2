"""The text-to-speech interface every TTS provider implements.

Audio format: by default a provider yields **signed 16-bit little-endian mono PCM at 8 kHz**
(``"PCM16"``, ``SAMPLE_RATE``), in chunks of about 20–100 ms, always whole samples (even length);
the call session converts it once to the carrier's format. A provider that can produce the
carrier's G.711 itself lists ``"PCMU"``/``"PCMA"`` in :attr:`TTS.output_encodings`; the
session then asks for that encoding and sends the bytes on untouched.

Text input streaming: a provider with :attr:`TTS.streams_text` takes a sentence while it is
still being written (:meth:`TTS.synthesize_live`: :meth:`LiveSpeech.feed` the LLM's tokens as
they come, :meth:`LiveSpeech.end` at the end of the sentence) and may start speaking before
the end. Every other provider gets the same interface from :class:`BufferedLiveSpeech`, which
waits for the whole sentence and calls :meth:`TTS.synthesize`.
"""

from __future__ import annotations

import abc
import asyncio
from typing import AsyncIterator, Callable

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


class LiveSpeech(SpeechStream):
    """One sentence whose text arrives in pieces (an LLM's tokens) while its audio streams
    out. :meth:`feed` and :meth:`end` never block; iterate for the audio, as for any
    :class:`SpeechStream`."""

    def __init__(self) -> None:
        self.text = ""
        """Everything fed so far."""
        self.ended = False

    def feed(self, text: str) -> None:
        """More of the sentence (any piece: a token, a word, several words)."""
        if text and not self.ended:
            self.text += text
            self.on_text(text)

    def end(self) -> None:
        """The sentence is complete: speak the rest."""
        if not self.ended:
            self.ended = True
            self.on_end()

    def on_text(self, text: str) -> None:
        """A piece was fed (subclasses pass it on)."""

    def on_end(self) -> None:
        """:meth:`end` was called (subclasses flush)."""


class BufferedLiveSpeech(LiveSpeech):
    """The sentence path behind the live interface: the text is gathered until :meth:`end`,
    then spoken by ``tts.synthesize``."""

    def __init__(self, tts: "TTS", encoding: str,
                 synthesize: "Callable[[str, str], SpeechStream] | None" = None) -> None:
        super().__init__()
        self._tts, self._encoding = tts, encoding
        self._synthesize = synthesize or tts.synthesize
        self._ready = asyncio.Event()
        self._stream: SpeechStream | None = None
        self._cancelled = False

    def on_end(self) -> None:
        self._ready.set()

    async def __anext__(self) -> bytes:
        if self._stream is None:
            await self._ready.wait()
            if self._cancelled:
                raise StopAsyncIteration
            self._stream = self._synthesize(self.text.strip(), self._encoding)
        return await self._stream.__anext__()

    def cancel(self) -> None:
        """Stop (before or during the synthesis)."""
        self._cancelled = True
        self._ready.set()
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        """Cancel and release the provider's stream."""
        self.cancel()
        if self._stream is not None:
            await self._stream.aclose()


class TTS(abc.ABC):
    """A text-to-speech provider, shared by every call of the daemon."""

    sample_rate: int = SAMPLE_RATE
    name: str = ""
    """The provider's name (``tts.provider``), for metrics and pricing."""
    output_encodings: frozenset[str] = frozenset({PCM16})
    """Encodings :meth:`synthesize` can produce: ``"PCM16"`` always, ``"PCMU"``/``"PCMA"`` for
    providers that synthesise telephone audio directly."""

    streams_text: bool = False
    """Whether :meth:`synthesize_live` streams the text in as it is written (a WebSocket
    transport), rather than waiting for the whole sentence."""

    async def start(self) -> None:
        """Load the engine (may be slow) so a bad setup fails at start-up. Idempotent."""

    @abc.abstractmethod
    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Start speaking ``text``; the returned stream yields audio in ``encoding`` (one of
        :attr:`output_encodings`) as it is produced. Connecting happens lazily, on the first
        ``__anext__``."""

    def synthesize_live(self, encoding: str = PCM16) -> LiveSpeech:
        """A sentence to be fed in pieces; by default spoken once it is complete."""
        return BufferedLiveSpeech(self, encoding)

    async def close(self) -> None:
        """Release the provider's resources (threads, connections). Idempotent."""


__all__ = ["BufferedLiveSpeech", "LiveSpeech", "PCM16", "SAMPLE_RATE", "SpeechStream", "TTS"]
