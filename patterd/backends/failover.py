"""Failover: each layer is an ordered list of providers, tried in turn within the same turn.

The wrappers here present a whole ``stt:``/``llm:``/``tts:`` chain (the provider, then its
``failover:`` list) behind the layer's own interface, so the call session never knows how many
providers there are. Every failure is reported through ``on_error(layer, provider, exc)`` (the
daemon counts it in ``patterd_backend_errors_total``) before the next provider is tried.

- **STT** (:mod:`.failover_stt`): the wrapper keeps the audio of the current utterance, so
  when a provider fails the next one hears the whole utterance again and the caller need not
  repeat it; a failed stream is reopened after a short back-off, and a call on a fallback
  returns to the first provider once it has rested.
- **LLM**: every turn starts at the first provider again; a failure before or during the answer (an error, a timeout, a malformed stream)
  moves the same request to the next provider. An answer longer than the provider's
  ``max_reply_chars`` is cut there (counted as that provider's failure, not failed over): what
  is complete is spoken, the rest is never read.
- **TTS**: every sentence starts at the first provider again; a sentence a provider fails on is spoken by the next one; when all fail, the offline
  ``last_resort`` engine speaks it, so the caller always hears the agent. Audio is converted to
  the encoding the session asked for when a provider cannot produce it itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from .errors import BackendError
from .llm.base import (LLM, LLMEvent, Message, StartOver, TextChunk, TokenUsage, ToolCall,
                       ToolSpec, Truncated)
from .failover_stt import (BACKOFF_MAX, BACKOFF_START, DEFAULT_FINALIZE_TIMEOUT,  # noqa: F401
                           MAX_UTTERANCE_SECONDS, FailoverSTT, FailoverSTTStream, convert)
from .stt.base import PCM16
from .tts.base import TTS, BufferedLiveSpeech, LiveSpeech, SpeechStream

log = logging.getLogger(__name__)

ErrorSink = Callable[[str, str, BaseException], None]
DEFAULT_MAX_REPLY_CHARS = 3000   # about three and a half minutes of speech
G711 = ("PCMU", "PCMA")


def _ignore(layer: str, provider: str, exc: BaseException) -> None:
    """The default error sink."""


_convert = convert


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

    @property
    def streams_text(self) -> bool:  # type: ignore[override]
        """The first provider takes text as it is written (see :meth:`synthesize_live`)."""
        return self.providers[0].streams_text

    def synthesize(self, text: str, encoding: str = PCM16) -> "FailoverSpeech":
        """Speech from the first provider that manages ``text``."""
        chain: list[tuple[TTS, str]] = []
        for p in self.providers:
            chain.append((p, "whole"))
            if getattr(p, "sentence_over_socket", False):
                chain.append((p, "http"))       # HTTP, the fallback transport
        if self.last_resort is not None:
            chain.append((self.last_resort, "whole"))
        return FailoverSpeech(self, chain, text, encoding)

    def synthesize_live(self, encoding: str = PCM16) -> "FailoverLiveSpeech":
        """A sentence fed in pieces: the first provider takes them as they come (over its
        WebSocket); when it fails, the same provider over HTTP, then the next providers and
        the last resort, speak the whole sentence once it is complete."""
        chain: list[tuple[TTS, str]] = []
        for p in self.providers:
            chain += [(p, "live"), (p, "http")] if p.streams_text else [(p, "whole")]
        if self.last_resort is not None:
            chain.append((self.last_resort, "whole"))
        return FailoverLiveSpeech(self, chain, encoding)

    async def close(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.close()
        if self.last_resort is not None:
            await self.last_resort.close()


def _whole(p: TTS, mode: str) -> Callable[[str, str], SpeechStream]:
    """How ``p`` speaks a whole sentence in ``mode`` (``http``: its HTTP transport)."""
    if mode == "http":
        return getattr(p, "synthesize_http", p.synthesize)
    return p.synthesize


class FailoverSpeech(SpeechStream):
    """One sentence, spoken by the first provider of the chain that does not fail."""

    def __init__(self, owner: FailoverTTS, chain: list[tuple[TTS, str]], text: str,
                 encoding: str) -> None:
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
            p, mode = self._chain[self._index]
            enc = self._encoding if self._encoding in p.output_encodings else PCM16
            try:
                self._stream = _whole(p, mode)(self._text, enc)
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
                name = self._chain[self._index][0].name
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


class FailoverLiveSpeech(LiveSpeech):
    """One sentence fed in pieces, spoken by the first entry of the chain that does not fail
    (an entry: a provider and whether it takes the text live). A provider that fails after
    some of its audio was played is replaced by the next one from the start of the sentence,
    as for :class:`FailoverSpeech`."""

    def __init__(self, owner: FailoverTTS, chain: list[tuple[TTS, str]], encoding: str
                 ) -> None:
        super().__init__()
        self._owner, self._chain, self._encoding = owner, chain, encoding
        self._index = -1
        self._stream: LiveSpeech | None = None
        self._stream_encoding = encoding
        self._cancelled = False
        self.provider = ""
        """The provider that spoke (or is speaking) the sentence."""
        self._next()

    def _next(self) -> bool:
        while self._index + 1 < len(self._chain):
            self._index += 1
            p, mode = self._chain[self._index]
            enc = self._encoding if self._encoding in p.output_encodings else PCM16
            try:
                stream = (p.synthesize_live(enc) if mode == "live"
                          else BufferedLiveSpeech(p, enc, _whole(p, mode)))
            except Exception as exc:  # noqa: BLE001
                self._owner._on_error("tts", p.name, exc)
                continue
            stream.feed(self.text)
            if self.ended:
                stream.end()
            self._stream, self._stream_encoding, self.provider = stream, enc, p.name
            return True
        self._stream = None
        return False

    def on_text(self, text: str) -> None:
        if self._stream is not None:
            self._stream.feed(text)

    def on_end(self) -> None:
        if self._stream is not None:
            self._stream.end()

    async def __anext__(self) -> bytes:
        while self._stream is not None and not self._cancelled:
            stream = self._stream
            try:
                chunk = await stream.__anext__()
            except (StopAsyncIteration, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - the next entry speaks the sentence
                name = self._chain[self._index][0].name
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
        """Stop the provider speaking now (a barge-in); no other entry is tried."""
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        """Cancel and release the provider's stream."""
        self.cancel()
        if self._stream is not None:
            await self._stream.aclose()


__all__ = ["FailoverLLM", "FailoverLiveSpeech", "FailoverSTT", "FailoverSTTStream",
           "FailoverSpeech", "FailoverTTS"]
