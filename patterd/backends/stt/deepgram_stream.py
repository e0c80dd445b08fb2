"""One call's live Deepgram socket: :class:`DeepgramStream`.

Hot path: :meth:`DeepgramStream.push` appends to a ``bytearray`` and, at most once per batch,
arms a timer; one writer task per stream sends the batch as one binary frame every
:attr:`DeepgramStream.batch_seconds`. Control messages (``Finalize``, ``KeepAlive``,
``CloseStream``) go through the same writer, after the audio pushed before them.

:meth:`DeepgramStream.finalize` answers at once when Deepgram's final results already cover the
audio pushed (or a ``speech_final``/``UtteranceEnd`` covered all but a short trailing silence);
otherwise it sends ``Finalize`` and waits (bounded) for the ``from_finalize`` Result. What the
results say is folded by :class:`~.deepgram_protocol.TurnAssembler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

import aiohttp

from ..errors import BackendError
from .base import SAMPLE_RATE, STTStream, Transcript
from .deepgram_protocol import (CLOSE_STREAM, ENCODINGS, FINALIZE, KEEPALIVE, TurnAssembler,
                                close_error, deepgram_error, handshake_error,
                                result_request_id)

if TYPE_CHECKING:
    from .deepgram import DeepgramSTT

# The provider's logger name from before the split, so log filters and levels still apply.
log = logging.getLogger(f"{__package__}.deepgram")

MAX_QUEUED_SECONDS = 10.0         # audio kept while the socket opens; older audio is dropped
MAX_EVENTS = 256                  # unread partial transcripts kept per stream


class DeepgramStream(STTStream):
    """One call's Deepgram socket."""

    keepalive_interval = 4.0    # s; Deepgram closes after 10 s without audio (NET-0001)
    finalize_timeout = 2.0      # s to wait for the answer to Finalize
    close_timeout = 1.5         # s for CloseStream's last results before the socket is cut
    batch_seconds = 0.05        # audio is sent in frames of about this length
    trailing_slack = 0.6        # s of audio after a speech_final still counted as its silence
    epsilon = 0.03              # s of audio that need not be covered by a final result

    def __init__(self, owner: DeepgramSTT, encoding: str) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.encoding = encoding
        self._bytes_per_second = SAMPLE_RATE * ENCODINGS[encoding][1]
        self._max_queued = int(MAX_QUEUED_SECONDS * self._bytes_per_second)
        self.keepalive_interval = owner.keepalive_interval
        self.finalize_timeout = owner.finalize_timeout
        self._buf = bytearray()                     # pushed, not yet handed to the writer
        self._out: deque[bytes | str] = deque()     # ordered frames for the writer
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()            # any result, open, error or close
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._writer: asyncio.Task[None] | None = None
        self._error: BackendError | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[Transcript | BackendError | None] = asyncio.Queue()
        self._pushed = 0            # bytes that are (or will be) on the socket
        self._last_sent = self._loop.time()
        self._turn = TurnAssembler()     # what the results said of the turn so far
        self.received = 0           # messages received from Deepgram
        self.keepalives_sent = self.finalizes_sent = 0
        self.request_id = ""
        self.metadata: dict[str, Any] = {}
        """Deepgram's closing ``Metadata`` (``duration`` = audio seconds it billed)."""
        self._task = self._loop.create_task(self._run())

    # -- hot path ----------------------------------------------------------------------------
    def push(self, audio: bytes) -> None:
        """Queue caller audio (in the stream's encoding). Never blocks, never raises."""
        if self._closed or self._error is not None:
            return
        buf = self._buf
        if not buf and self._timer is None and self._ws is not None:
            self._timer = self._loop.call_later(self.batch_seconds, self._kick)
        buf += audio
        self._pushed += len(audio)
        if len(buf) > self._max_queued:     # only while the socket is still opening
            excess = len(buf) - self._max_queued
            excess += excess % ENCODINGS[self.encoding][1]
            del buf[:excess]
            self._pushed -= excess

    def _kick(self) -> None:
        self._timer = None
        self._wake.set()

    def _queue(self, message: str) -> None:
        """A control message, sent after all audio pushed so far."""
        if self._buf:
            self._out.append(bytes(self._buf))
            self._buf.clear()
        self._out.append(message)
        self._wake.set()

    def _tick(self) -> None:
        """KeepAlive while no audio flows (a timer, not a task, per stream)."""
        if self._ws is None or self._closed or self._error is not None:
            return
        if self._loop.time() - self._last_sent >= self.keepalive_interval / 2 and not (
                self._buf or self._out):
            self.keepalives_sent += 1
            self._queue(KEEPALIVE)
        self._keepalive = self._loop.call_later(self.keepalive_interval, self._tick)

    # -- socket ------------------------------------------------------------------------------
    async def _run(self) -> None:
        owner = self._owner
        try:
            async with asyncio.timeout(owner.timeout):
                ws = await owner.session().ws_connect(
                    owner.url(self.encoding), headers=owner._headers, autoping=True,
                    max_msg_size=1 << 22)
        except aiohttp.WSServerHandshakeError as exc:
            self._fail(handshake_error(exc))
            return
        except TimeoutError:
            self._fail(deepgram_error(f"could not connect within {owner.timeout:g} s"))
            return
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(deepgram_error(f"connection failed: {exc.__class__.__name__}: {exc}"))
            return
        self._ws = ws
        self._writer = self._loop.create_task(self._write(ws))
        self._last_sent = self._loop.time()
        self._keepalive = self._loop.call_later(self.keepalive_interval, self._tick)
        self._wake.set()                    # audio queued while connecting
        self._progress.set()
        try:
            await self._read(ws)
        except Exception as exc:  # noqa: BLE001 - becomes the stream's error
            self._fail(deepgram_error(f"connection lost: {exc.__class__.__name__}: {exc}"))

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        out, wake = self._out, self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                while out or self._buf:
                    if out:
                        item = out.popleft()
                    else:
                        item, self._buf = self._buf, bytearray()
                    if isinstance(item, str):
                        await ws.send_str(item)
                    else:
                        await ws.send_bytes(item)
                    self._last_sent = self._loop.time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the reader usually reports the close first
            self._fail(deepgram_error(f"sending failed: {exc.__class__.__name__}: {exc}"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._on_message(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        code = ws.close_code
        if msg.type is aiohttp.WSMsgType.CLOSE:
            code, reason = msg.data, (msg.extra or "")
        elif msg.type is aiohttp.WSMsgType.ERROR:
            reason = f"{msg.data.__class__.__name__}: {msg.data}"
        else:
            reason = ""
        if self._closed and code in (1000, None):
            return
        self._fail(close_error(reason, code))

    def _on_message(self, data: str) -> None:
        self.received += 1
        try:
            m = json.loads(data)
        except ValueError:
            log.warning("deepgram: a message that is not JSON")
            return
        kind = m.get("type")
        if kind == "Results":
            self._tell(self._turn.on_results(m))
            if not self.request_id:
                self.request_id = result_request_id(m)
        elif kind == "UtteranceEnd":
            self._tell(self._turn.turn_over())
        elif kind == "Metadata":
            self.metadata = m
            self.request_id = m.get("request_id") or self.request_id
        elif kind not in ("SpeechStarted",):
            log.info("deepgram: %s message: %s", kind, data[:200])
        self._progress.set()

    def _tell(self, transcripts: list[Transcript]) -> None:
        """Hand the session what the results said, unless the stream is closing."""
        if not self._closed:
            for transcript in transcripts:
                self._emit(transcript)

    def _emit(self, item: Transcript | BackendError | None) -> None:
        q = self._events
        if isinstance(item, Transcript) and q.qsize() >= MAX_EVENTS:
            q.get_nowait()                  # nobody reads partials: keep the newest
        q.put_nowait(item)

    def _fail(self, error: BackendError) -> None:
        if self._error is None and not self._closed:
            self._error = error
            log.warning("deepgram: %s", error)
            self._emit(error)
        self._buf.clear()
        self._out.clear()
        self._progress.set()

    # -- the session's API ------------------------------------------------------------------
    async def events(self) -> AsyncIterator[Transcript]:
        """Partial transcripts (the utterance so far) and one final per :meth:`finalize`;
        ends after :meth:`close`; raises :class:`BackendError` if the socket failed."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BackendError):
                raise item
            yield item

    async def finalize(self) -> Transcript:
        """The final transcript of the utterance (every final segment since the last call)."""
        async with self._lock:
            if self._closed:
                return Transcript("", True)
            text = await self._finalize()
            result = Transcript(text, True)
            if not self._closed:
                self._emit(result)
            return result

    async def _finalize(self) -> str:
        while self._ws is None and self._error is None:    # _run bounds the connect time
            if self._closed:
                return ""
            self._progress.clear()
            await self._progress.wait()
        if self._error is not None:
            raise self._error
        turn = self._turn
        pushed = self._pushed / self._bytes_per_second
        uncovered = pushed - turn.final_end
        if uncovered <= self.epsilon or (
                turn.end_of_turn and not turn.interim and uncovered <= self.trailing_slack):
            return turn.take()              # no round trip: Deepgram already said it all
        acks = turn.acks
        self.finalizes_sent += 1
        self._queue(FINALIZE)
        try:
            async with asyncio.timeout(self.finalize_timeout):
                while turn.acks == acks and turn.final_end < pushed - self.epsilon:
                    if self._error is not None:
                        raise self._error
                    if self._closed:
                        return turn.take(with_interim=True)
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            if self._error is not None:
                raise self._error from None
            if self.received == 0:
                raise deepgram_error(
                    f"no result within {self.finalize_timeout:g} s of Finalize") from None
            log.warning("deepgram: no answer to Finalize within %g s", self.finalize_timeout)
            return turn.take(with_interim=True)
        if self._error is not None:
            raise self._error
        return turn.take()

    async def close(self) -> None:
        """Flush the last audio with ``CloseStream`` (bounded wait), close the socket and end
        :meth:`events`. Words recognised while closing come out as one last final."""
        if self._closed:
            return
        self._closed = True
        self._owner._streams.discard(self)
        for handle in (self._timer, self._keepalive):
            if handle is not None:
                handle.cancel()
        ws = self._ws
        try:
            if ws is not None and self._error is None and not ws.closed:
                self._queue(CLOSE_STREAM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.close_timeout):
                        await asyncio.shield(self._task)    # server closes after Metadata
        finally:
            for task in (self._task, self._writer):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(t for t in (self._task, self._writer) if t is not None),
                                 return_exceptions=True)
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.close_timeout):
                        await ws.close()
            self._buf.clear()
            self._out.clear()
            if self._turn.segments:
                self._emit(Transcript(self._turn.take(), True))
            self._emit(None)
            self._progress.set()


__all__ = ["MAX_EVENTS", "MAX_QUEUED_SECONDS", "DeepgramStream"]
