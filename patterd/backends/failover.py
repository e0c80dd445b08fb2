"""Failover: each layer is an ordered list of providers, tried in turn within the same turn.

The wrappers here present a whole ``stt:``/``llm:``/``tts:`` chain (the provider, then its
``failover:`` list) behind the layer's own interface, so the call session never knows how many
providers there are. Every failure is reported through ``on_error(layer, provider, exc)`` (the
daemon counts it in ``patterd_backend_errors_total``) before the next provider is tried.

- **STT**: a call stays on the provider that works. The wrapper keeps the audio of the current
  utterance (at most :data:`MAX_UTTERANCE_SECONDS`), so when a provider fails at ``finalize``
  the next one hears the whole utterance again and the caller need not repeat it.
- **LLM**: a failure before or during the answer (an error, a timeout, a malformed stream)
  moves the same request to the next provider. An answer longer than the provider's
  ``max_reply_chars`` is cut there (counted as that provider's failure, not failed over): what
  is complete is spoken, the rest is never read.
- **TTS**: a sentence a provider fails on is spoken by the next one; when all fail, the offline
  ``last_resort`` engine speaks it, so the caller always hears the agent. Audio is converted to
  the encoding the session asked for when a provider cannot produce it itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from ..audio.codecs import get_codec
from .errors import BackendError
from .llm.base import (LLM, LLMEvent, Message, StartOver, TextChunk, TokenUsage, ToolCall,
                       ToolSpec, Truncated)
from .stt.base import PCM16, STT, STTStream, Transcript, append_bounded
from .tts.base import TTS, SpeechStream

log = logging.getLogger(__name__)

ErrorSink = Callable[[str, str, BaseException], None]
MAX_UTTERANCE_SECONDS = 30.0
DEFAULT_FINALIZE_TIMEOUT = 5.0
DEFAULT_MAX_REPLY_CHARS = 3000   # about three and a half minutes of speech
G711 = ("PCMU", "PCMA")


def _ignore(layer: str, provider: str, exc: BaseException) -> None:
    """The default error sink."""


def _convert(audio: bytes, src: str, dst: str) -> bytes:
    """8 kHz audio from one of PCM16/PCMU/PCMA to another."""
    if src == dst:
        return audio
    pcm = audio if src == PCM16 else get_codec(src).decode(audio)
    return pcm if dst == PCM16 else get_codec(dst).encode(pcm)


# -- STT -----------------------------------------------------------------------------------------
class FailoverSTT(STT):
    """An ordered list of STT providers behind one interface."""

    def __init__(self, providers: Sequence[STT], *, on_error: ErrorSink = _ignore,
                 timeouts: Sequence[float] = ()) -> None:
        if not providers:
            raise ValueError("at least one STT provider is needed")
        self.providers = list(providers)
        self.name = self.providers[0].name
        self.input_encodings = self.providers[0].input_encodings
        self._timeouts = list(timeouts) or [DEFAULT_FINALIZE_TIMEOUT] * len(self.providers)
        self._on_error = on_error

    async def start(self) -> None:
        """Start every provider (cloud providers do not connect anywhere yet)."""
        for p in self.providers:
            await p.start()

    def open_stream(self, encoding: str = PCM16) -> "FailoverSTTStream":
        """A stream on the first provider; later ones are opened when it fails."""
        return FailoverSTTStream(self, encoding)

    async def close(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.close()


class FailoverSTTStream(STTStream):
    """One call's recogniser, moving down the provider list when one fails."""

    def __init__(self, owner: FailoverSTT, encoding: str) -> None:
        self._owner = owner
        self._encoding = encoding
        self._index = -1
        self._stream: STTStream | None = None
        self._stream_encoding = encoding
        self._utterance = bytearray()
        per_second = 8000 if encoding in G711 else 16000
        self._max_bytes = int(MAX_UTTERANCE_SECONDS * per_second)
        self._events: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self._open_next()

    @property
    def provider(self) -> str:
        """The name of the provider in use."""
        return self._owner.providers[self._index].name if self._stream else ""

    def _open_next(self) -> bool:
        providers = self._owner.providers
        while self._index + 1 < len(providers):
            self._index += 1
            p = providers[self._index]
            enc = self._encoding if self._encoding in p.input_encodings else PCM16
            try:
                self._stream = p.open_stream(enc)
            except Exception as exc:  # noqa: BLE001 - counted; the next provider is tried
                self._owner._on_error("stt", p.name, exc)
                continue
            self._stream_encoding = enc
            self._pump = asyncio.get_running_loop().create_task(self._forward(self._stream))
            return True
        self._stream = None
        return False

    async def _forward(self, stream: STTStream) -> None:
        """Partial transcripts of the current provider, passed on."""
        try:
            async for t in stream.events():
                if not t.is_final and not self._closed:
                    self._events.put_nowait(t)
        except Exception:  # noqa: BLE001 - the failure surfaces at finalize
            pass

    def push(self, audio: bytes) -> None:
        """Queue caller audio and keep it until the utterance is recognised."""
        if self._closed:
            return
        append_bounded(self._utterance, audio, self._max_bytes)
        if self._stream is not None:
            self._stream.push(audio if self._stream_encoding == self._encoding
                              else _convert(audio, self._encoding, self._stream_encoding))

    async def events(self) -> AsyncIterator[Transcript]:
        """Partial transcripts of whichever provider is in use, and every final one."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            yield item

    async def finalize(self) -> Transcript:
        """The utterance's final transcript, from the first provider that manages it."""
        utterance, self._utterance = bytes(self._utterance), bytearray()
        while self._stream is not None:
            stream, name = self._stream, self.provider
            timeout = self._owner._timeouts[self._index]
            try:
                result = await asyncio.wait_for(stream.finalize(), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure moves to the next provider
                if isinstance(exc, asyncio.TimeoutError):
                    exc = BackendError("stt", name, f"no final transcript within {timeout} s")
                self._owner._on_error("stt", name, exc)
                log.warning("stt provider %s failed (%s); trying the next one", name, exc)
                await self._drop(stream)
                if not self._open_next():
                    raise
                if utterance:  # the next provider hears the whole utterance again
                    self._stream.push(utterance if self._stream_encoding == self._encoding
                                      else _convert(utterance, self._encoding,
                                                    self._stream_encoding))
                continue
            final = Transcript(result.text, True)
            if not self._closed:
                self._events.put_nowait(final)
            return final
        raise BackendError("stt", self._owner.name, "every STT provider has failed on this call")

    async def _drop(self, stream: STTStream) -> None:
        pump, self._pump = self._pump, None
        try:
            await asyncio.wait_for(stream.close(), 2.0)
        except Exception:  # noqa: BLE001 - it failed already
            pass
        if pump is not None:
            pump.cancel()

    async def close(self) -> None:
        """Close the provider's stream and end :meth:`events`."""
        if self._closed:
            return
        self._closed = True
        self._utterance.clear()
        if self._stream is not None:
            await self._drop(self._stream)
            self._stream = None
        self._events.put_nowait(None)


# -- LLM -----------------------------------------------------------------------------------------
class FailoverLLM(LLM):
    """An ordered list of LLM providers behind one interface."""

    def __init__(self, providers: Sequence[LLM], *, on_error: ErrorSink = _ignore,
                 max_reply_chars: Sequence[int] = ()) -> None:
        """``max_reply_chars``: each provider's length cap, when not its own
        :attr:`LLM.max_reply_chars` (from its config); 0 or none: the default."""
        if not providers:
            raise ValueError("at least one LLM provider is needed")
        self.providers = list(providers)
        self.name = self.providers[0].name
        self._on_error = on_error
        caps = list(max_reply_chars) + [0] * (len(self.providers) - len(max_reply_chars))
        self._caps = [cap or p.max_reply_chars or DEFAULT_MAX_REPLY_CHARS
                      for cap, p in zip(caps, self.providers)]

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """The first provider's answer; on its failure, the next one's to the same request.

        A provider that failed midway may have been partly spoken already; the next one
        answers the whole request (the caller hears the start again rather than nothing).
        An answer that reaches its provider's length cap ends there with :class:`Truncated`."""
        last: BaseException | None = None
        answered = False
        for index, (provider, cap) in enumerate(zip(self.providers, self._caps)):
            if answered:   # the failed provider got partway: what it said is void
                yield StartOver()
                answered = False
            stream = provider.respond(history, user_text, dtmf, tools=tools, context=context)
            chars = 0
            try:
                async for event in stream:
                    answered = answered or isinstance(event, (TextChunk, ToolCall))
                    if isinstance(event, TextChunk):
                        chars += len(event.text)
                        if chars > cap:     # a server that ignores max_tokens talks on
                            keep = event.text[:len(event.text) - (chars - cap)]
                            if keep:
                                yield TextChunk(keep)
                            self._cut(provider.name, cap)
                            yield Truncated(cap)
                            return
                    elif isinstance(event, TokenUsage) and not event.provider:
                        event = replace(event, provider=provider.name)
                    yield event
                return
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - counted; the next provider is tried
                last = exc
                self._on_error("llm", provider.name, exc)
                log.warning("llm provider %s failed (%s); %s", provider.name, exc,
                            "trying the next one" if index + 1 < len(self.providers)
                            else "no provider left")
            finally:
                await stream.aclose()
        assert last is not None
        raise last

    def _cut(self, provider: str, cap: int) -> None:
        exc = BackendError("llm", provider, f"answer longer than {cap} characters: cut there",
                           retryable=False)
        self._on_error("llm", provider, exc)
        log.warning("llm provider %s: answer cut at %d characters (max_reply_chars)",
                    provider, cap)

    async def close(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.close()


# -- TTS -----------------------------------------------------------------------------------------
class FailoverTTS(TTS):
    """An ordered list of TTS providers, with an offline engine as the last resort."""

    output_encodings = frozenset({PCM16, *G711})

    def __init__(self, providers: Sequence[TTS], *, last_resort: TTS | None = None,
                 on_error: ErrorSink = _ignore) -> None:
        if not providers:
            raise ValueError("at least one TTS provider is needed")
        self.providers = list(providers)
        self.last_resort = last_resort if last_resort not in self.providers else None
        self.name = self.providers[0].name
        self._on_error = on_error

    async def start(self) -> None:
        """Start every provider (and the last resort, so it is ready when needed)."""
        for p in self.providers:
            await p.start()
        if self.last_resort is not None:
            await self.last_resort.start()

    def synthesize(self, text: str, encoding: str = PCM16) -> "FailoverSpeech":
        """Speech from the first provider that manages ``text``."""
        chain = self.providers + ([self.last_resort] if self.last_resort is not None else [])
        return FailoverSpeech(self, chain, text, encoding)

    async def close(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.close()
        if self.last_resort is not None:
            await self.last_resort.close()


class FailoverSpeech(SpeechStream):
    """One sentence, spoken by the first provider of the chain that does not fail."""

    def __init__(self, owner: FailoverTTS, chain: list[TTS], text: str, encoding: str) -> None:
        self._owner, self._chain, self._text, self._encoding = owner, chain, text, encoding
        self._index = -1
        self._stream: SpeechStream | None = None
        self._stream_encoding = encoding
        self._cancelled = False
        self.provider = ""
        """The provider that spoke (or is speaking) the sentence."""

    def _next(self) -> bool:
        while self._index + 1 < len(self._chain):
            self._index += 1
            p = self._chain[self._index]
            enc = self._encoding if self._encoding in p.output_encodings else PCM16
            try:
                self._stream = p.synthesize(self._text, enc)
            except Exception as exc:  # noqa: BLE001
                self._owner._on_error("tts", p.name, exc)
                continue
            self._stream_encoding, self.provider = enc, p.name
            return True
        self._stream = None
        return False

    async def __anext__(self) -> bytes:
        if self._cancelled:
            raise StopAsyncIteration
        if self._stream is None and self._index < 0 and not self._next():
            raise StopAsyncIteration
        while self._stream is not None:
            stream = self._stream
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next provider speaks the sentence
                name = self._chain[self._index].name
                self._owner._on_error("tts", name, exc)
                log.warning("tts provider %s failed (%s); trying the next one", name, exc)
                await stream.aclose()
                if self._cancelled or not self._next():
                    raise
                continue
            if self._stream_encoding != self._encoding:
                chunk = _convert(chunk, self._stream_encoding, self._encoding)
            return chunk
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Stop the provider speaking now; no other provider is tried."""
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        """Cancel and release the provider's stream."""
        self.cancel()
        if self._stream is not None:
            await self._stream.aclose()


__all__ = ["FailoverLLM", "FailoverSTT", "FailoverSTTStream", "FailoverSpeech", "FailoverTTS"]
