"""STT failover and recovery within a call: one call's recogniser over a chain of providers.

The session sees one :class:`FailoverSTTStream` for the whole call; behind it, provider streams
come and go:

- **A stream that fails** (a socket Deepgram closes with ``1011``, a refused handshake, a
  timeout at ``finalize``) is counted once through ``on_error``, closed, and replaced: by the
  next provider of the chain that is not cooling down, at once; otherwise by the same
  provider after its back-off (:data:`BACKOFF_START` seconds, doubling with each consecutive
  failure up to :data:`BACKOFF_MAX`, reset by a success; a failure that is not retryable —
  a wrong key, a bad parameter — rests :data:`BACKOFF_MAX` at once). Audio of the utterance in progress
  is kept (at most :data:`MAX_UTTERANCE_SECONDS`) and replayed into the new stream, so the
  caller need not repeat it.
- **At the end of an utterance** (``finalize``) each provider of the chain is tried at most
  once, in order, cooling or not (the caller is waiting); "every provider failed" is the
  state of that one utterance: the next one starts afresh.
- **Back to the first provider**: after an utterance recognised by a fallback, the stream
  returns to an earlier provider of the chain whose back-off has passed (between utterances,
  never in the middle of one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..audio.codecs import get_codec
from .errors import BackendError
from .stt.base import PCM16, STT, STTStream, Transcript, append_bounded

log = logging.getLogger("patterd.backends.failover")

ErrorSink = Callable[[str, str, BaseException], None]
MAX_UTTERANCE_SECONDS = 30.0
DEFAULT_FINALIZE_TIMEOUT = 5.0
BACKOFF_START = 1.0
"""Seconds a provider rests after its first failure before a stream is reopened on it."""
BACKOFF_MAX = 30.0
"""The longest rest, reached after consecutive failures."""
G711 = ("PCMU", "PCMA")


def _ignore(layer: str, provider: str, exc: BaseException) -> None:
    """The default error sink."""


def convert(audio: bytes, src: str, dst: str) -> bytes:
    """8 kHz audio from one of PCM16/PCMU/PCMA to another."""
    if src == dst:
        return audio
    pcm = audio if src == PCM16 else get_codec(src).decode(audio)
    return pcm if dst == PCM16 else get_codec(dst).encode(pcm)


class Backoff:
    """How long one provider rests after failing (per call)."""

    __slots__ = ("failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0

    def failed(self, now: float, start: float, cap: float, *, permanent: bool = False) -> float:
        """Note a failure at ``now``; returns the seconds of rest (the longest at once for a
        failure another attempt would meet again: a wrong key, a bad parameter)."""
        self.failures += 1
        rest = cap if permanent else min(cap, start * 2 ** (self.failures - 1))
        self.until = now + rest
        return rest

    def succeeded(self) -> None:
        """A success ends the rest and the run of failures."""
        self.failures, self.until = 0, 0.0

    def ready(self, now: float) -> bool:
        """Whether the provider may be used again without waiting."""
        return now >= self.until


class FailoverSTT(STT):
    """An ordered list of STT providers behind one interface."""

    def __init__(self, providers: Sequence[STT], *, on_error: ErrorSink = _ignore,
                 timeouts: Sequence[float] = (),
                 backoff: tuple[float, float] = (BACKOFF_START, BACKOFF_MAX)) -> None:
        """``timeouts``: per provider, the seconds ``finalize`` may take; ``backoff``: the
        first and the longest rest of a provider that failed."""
        if not providers:
            raise ValueError("at least one STT provider is needed")
        self.providers = list(providers)
        self.name = self.providers[0].name
        self.input_encodings = self.providers[0].input_encodings
        self._timeouts = list(timeouts) or [DEFAULT_FINALIZE_TIMEOUT] * len(self.providers)
        self._on_error = on_error
        self.backoff = backoff

    async def start(self) -> None:
        """Start every provider (cloud providers do not connect anywhere yet)."""
        for p in self.providers:
            await p.start()

    def open_stream(self, encoding: str = PCM16) -> "FailoverSTTStream":
        """A stream on the first provider; others take over when it fails."""
        return FailoverSTTStream(self, encoding)

    async def close(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.close()


class FailoverSTTStream(STTStream):
    """One call's recogniser: the provider streams behind it are replaced as they fail."""

    def __init__(self, owner: FailoverSTT, encoding: str) -> None:
        self._owner = owner
        self._encoding = encoding
        self._loop = asyncio.get_running_loop()
        self._health = [Backoff() for _ in owner.providers]
        self._index = -1
        self._stream: STTStream | None = None
        self._stream_encoding = encoding
        self._utterance = bytearray()
        per_second = 8000 if encoding in G711 else 16000
        self._max_bytes = int(MAX_UTTERANCE_SECONDS * per_second)
        self._events: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._pumps: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._reopen_at: asyncio.TimerHandle | None = None
        self._finalizing = False
        self._closed = False
        self.reopened = 0
        """Streams opened after the first one (recoveries and returns to the first)."""
        self._open(ready_only=False)

    @property
    def provider(self) -> str:
        """The name of the provider in use."""
        return self._owner.providers[self._index].name if self._stream else ""

    # -- opening and losing provider streams ---------------------------------------------------
    def _open(self, *, ready_only: bool, skip: set[int] = frozenset(),  # type: ignore[assignment]
              replay: bytes = b"") -> bool:
        """Open a stream on the first provider of the chain that may be used; False if none.
        ``replay``: audio to push into it first (the utterance so far)."""
        providers = self._owner.providers
        now = self._loop.time()
        for index, p in enumerate(providers):
            if index in skip or (ready_only and not self._health[index].ready(now)):
                continue
            enc = self._encoding if self._encoding in p.input_encodings else PCM16
            try:
                stream = p.open_stream(enc)
            except Exception as exc:  # noqa: BLE001 - counted; the next provider is tried
                self._failed(index, exc)
                continue
            if self._index >= 0:
                self.reopened += 1
            self._stream, self._index, self._stream_encoding = stream, index, enc
            pump = self._loop.create_task(self._forward(stream, index))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)
            if replay:
                stream.push(self._convert(replay))
            return True
        return False

    def _convert(self, audio: bytes) -> bytes:
        if self._stream_encoding == self._encoding:
            return audio
        return convert(audio, self._encoding, self._stream_encoding)

    def _failed(self, index: int, exc: BaseException) -> None:
        """Count a failure of provider ``index`` and start its rest."""
        name = self._owner.providers[index].name
        self._owner._on_error("stt", name, exc)
        start, cap = self._owner.backoff
        permanent = isinstance(exc, BackendError) and not exc.retryable
        rest = self._health[index].failed(self._loop.time(), start, cap, permanent=permanent)
        log.warning("stt provider %s failed (%s); resting %g s", name, exc, rest)

    def _lost(self, stream: STTStream, index: int, exc: BaseException) -> None:
        """``stream`` failed: count it (once), close it, and unless an utterance is being
        finalised (finalize replaces it itself) reopen on a provider that may be used now, or
        after the back-off."""
        if stream is not self._stream or self._closed:
            return                              # already replaced (or the call is over)
        self._stream = None
        self._failed(index, exc)
        self._retire(stream)
        if not self._finalizing:
            self._recover()

    def _recover(self) -> None:
        """Reopen now on a provider out of its rest, else when the first rest ends."""
        if self._closed or self._stream is not None or self._finalizing:
            return
        if self._open(ready_only=True, replay=bytes(self._utterance)):
            return
        if self._reopen_at is None:
            delay = max(0.0, min(h.until for h in self._health) - self._loop.time())
            self._reopen_at = self._loop.call_later(delay, self._reopen_due)

    def _reopen_due(self) -> None:
        self._reopen_at = None
        self._recover()

    def _retire(self, stream: STTStream) -> None:
        """Close ``stream`` in the background (its pump ends with it)."""
        task = self._loop.create_task(self._close_quietly(stream))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(stream: STTStream) -> None:
        try:
            await asyncio.wait_for(stream.close(), 2.0)
        except Exception:  # noqa: BLE001 - it failed already, or is being replaced
            pass

    async def _forward(self, stream: STTStream, index: int) -> None:
        """Partial transcripts of a provider stream, passed on while it is the one in use; its
        failure (a dropped socket, a refused handshake) is noticed here at once."""
        try:
            async for t in stream.events():
                if not t.is_final and stream is self._stream and not self._closed:
                    self._events.put_nowait(t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream is replaced
            self._lost(stream, index, exc)

    # -- the session's API --------------------------------------------------------------------
    def push(self, audio: bytes) -> None:
        """Queue caller audio and keep it until the utterance is recognised."""
        if self._closed:
            return
        append_bounded(self._utterance, audio, self._max_bytes)
        if self._stream is not None:
            self._stream.push(self._convert(audio))

    async def events(self):  # type: ignore[no-untyped-def, override]
        """Partial transcripts of whichever provider is in use, and every final one."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            yield item

    async def finalize(self) -> Transcript:
        """The utterance's final transcript, from the first provider that manages it (each
        provider tried at most once for this utterance)."""
        utterance, self._utterance = bytes(self._utterance), bytearray()
        tried: set[int] = set()
        self._finalizing = True
        try:
            while not self._closed:
                if self._stream is None and not self._open(ready_only=False, skip=tried,
                                                           replay=utterance):
                    break
                assert self._stream is not None
                stream, index = self._stream, self._index
                tried.add(index)
                timeout = self._owner._timeouts[index]
                try:
                    result = await asyncio.wait_for(stream.finalize(), timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure moves to the next one
                    if isinstance(exc, asyncio.TimeoutError):
                        exc = BackendError("stt", self._owner.providers[index].name,
                                           f"no final transcript within {timeout} s")
                    self._lost(stream, index, exc)
                    continue
                self._health[index].succeeded()
                final = Transcript(result.text, True)
                if not self._closed:
                    self._events.put_nowait(final)
                    self._return_to_first()
                return final
        finally:
            self._finalizing = False
        if self._closed:
            return Transcript("", True)
        self._recover()     # the next utterance gets a stream once a rest is over
        raise BackendError("stt", self._owner.name,
                           "every STT provider failed on this utterance")

    def _return_to_first(self) -> None:
        """Between utterances: leave a fallback for an earlier provider that has rested."""
        now = self._loop.time()
        stream = self._stream
        if stream is None or not any(self._health[i].ready(now) for i in range(self._index)):
            return
        name = self.provider
        self._stream = None
        self._retire(stream)
        if self._open(ready_only=True):
            log.info("stt: back to provider %s from %s", self.provider, name)

    async def close(self) -> None:
        """Close the provider's stream and end :meth:`events`."""
        if self._closed:
            return
        self._closed = True
        self._utterance.clear()
        if self._reopen_at is not None:
            self._reopen_at.cancel()
            self._reopen_at = None
        stream, self._stream = self._stream, None
        if stream is not None:
            await self._close_quietly(stream)
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, *self._closing, return_exceptions=True)
        self._events.put_nowait(None)


__all__ = ["BACKOFF_MAX", "BACKOFF_START", "Backoff", "FailoverSTT", "FailoverSTTStream",
           "convert"]
