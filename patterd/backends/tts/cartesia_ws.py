"""Cartesia's TTS WebSocket (``wss://…/tts/websocket``): long-lived sockets shared by the
calls of a process, one context per sentence, its text sent as it is written.

Wire protocol (Cartesia's API reference, its official Python SDK ``tts.websocket_connect``):

- the handshake carries ``Authorization: Bearer <key>`` and ``Cartesia-Version``;
- a generation request per piece of text: ``{context_id, model_id, transcript, voice,
  output_format, language, continue}`` — ``continue: true`` while more of the sentence follows,
  the last piece (possibly empty) with ``continue: false``. Pieces are cut at word boundaries
  and keep their spaces, so that joined they are the sentence (Cartesia's rule for
  continuations); Cartesia buffers them itself (``max_buffer_delay_ms``, when configured);
- back: ``{"type": "chunk", "data": <base64>, "context_id"}`` messages, ``flush_done`` and
  ``timestamps`` (ignored), ``{"type": "done"}`` at the end of the context, or ``{"type":
  "error", "title", "message", "error_code", "status_code"}``;
- a barge-in sends ``{"context_id", "cancel": true}``: Cartesia stops that context and the
  socket stays open for the next sentences.

A socket that fails fails the sentences in flight on it (each is then spoken over HTTP by the
failover chain) and is replaced for the next ones; a socket without a context for
:data:`IDLE_CLOSE` seconds is closed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import BackendError
from .audio_check import BodyCheck, NotAudio
from .base import PCM16, LiveSpeech
from .http_stream import READ_IDLE, DeadlineStream, retryable_status

if TYPE_CHECKING:
    from .cartesia import CartesiaTTS

log = logging.getLogger(__name__)

MAX_CONTEXTS = 32
"""Sentences in flight on one socket before another socket is opened."""
IDLE_CLOSE = 60.0
"""Seconds a socket without any context stays open."""
_ids = itertools.count(1)


class CartesiaConnection:
    """One socket and the contexts in flight on it."""

    def __init__(self, tts: CartesiaTTS) -> None:
        self._tts = tts
        self._loop = asyncio.get_running_loop()
        self.contexts: dict[str, CartesiaContext] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.error: BackendError | None = None
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._idle: asyncio.TimerHandle | None = None
        self._task = self._loop.create_task(self._run())

    @property
    def usable(self) -> bool:
        """Not failed, not closing, with room for another context."""
        return self.error is None and len(self.contexts) < MAX_CONTEXTS and not (
            self.ws is not None and self.ws.closed)

    def attach(self, ctx: CartesiaContext) -> None:
        """Route ``ctx``'s messages to it."""
        self.contexts[ctx.context_id] = ctx
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.error is not None:
            ctx.deliver_error(self.error)

    def detach(self, ctx: CartesiaContext) -> None:
        """``ctx`` is over; close the socket once it has been idle for a while."""
        self.contexts.pop(ctx.context_id, None)
        if not self.contexts and self._idle is None and self.error is None:
            self._idle = self._loop.call_later(IDLE_CLOSE, self._close_idle)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; it is sent once the socket is open, in order."""
        if self.error is None:
            self._outbox.append(json.dumps(message))
            self._wake.set()

    async def _run(self) -> None:
        tts = self._tts
        try:
            try:
                async with asyncio.timeout(tts.timeout):
                    ws = await tts.session().ws_connect(
                        f"{tts.ws_base}/tts/websocket", headers=tts._headers,
                        heartbeat=None, max_msg_size=1 << 22,
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0))
            except aiohttp.WSServerHandshakeError as exc:
                self._fail(tts.error(f"WebSocket handshake refused (HTTP {exc.status})",
                                     status=exc.status, retryable=retryable_status(exc.status)))
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._fail(tts.error(f"connection failed: {exc or type(exc).__name__}"))
                return
            self.ws = ws
            writer = self._loop.create_task(self._write(ws))
            try:
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        self._route(msg.data)
                    elif msg.type is aiohttp.WSMsgType.ERROR:
                        break
            finally:
                writer.cancel()
            reason = f": {ws.close_code}" if ws.close_code else ""
            self._fail(tts.error(f"socket closed{reason}", status=ws.close_code))
        except asyncio.CancelledError:
            self._fail(tts.error("socket closed"))
            raise

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                while self._outbox:
                    await ws.send_str(self._outbox.popleft())
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass                                # the reader reports the close

    def _route(self, raw: str) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("cartesia: a message that is not JSON: %r", raw[:80])
            return
        if not isinstance(data, dict):
            return
        ctx = self.contexts.get(str(data.get("context_id") or ""))
        if ctx is not None:
            ctx.deliver(data)
        elif data.get("type") == "error" and not data.get("context_id"):
            message = str(data.get("message") or data.get("title") or "error")
            self._fail(self._tts.error(message, status=data.get("status_code")))

    def _fail(self, error: BackendError) -> None:
        if self.error is None:
            self.error = error
        for ctx in list(self.contexts.values()):
            ctx.deliver_error(error)
        self._tts.forget(self)

    def _close_idle(self) -> None:
        self._idle = None
        if not self.contexts:
            self._tts.forget(self)
            self._loop.create_task(self.close())

    async def close(self) -> None:
        """Close the socket (contexts still open fail)."""
        if self._idle is not None:
            self._idle.cancel()
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 2.0)
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class CartesiaContext(DeadlineStream, LiveSpeech):
    """One sentence as a Cartesia context."""

    def __init__(self, tts: CartesiaTTS, conn: CartesiaConnection, encoding: str) -> None:
        LiveSpeech.__init__(self)
        self._tts, self._conn, self._encoding = tts, conn, encoding
        self.context_id = f"patterd-{next(_ids)}"
        self._queue: asyncio.Queue[dict[str, Any] | BackendError] = asyncio.Queue()
        self._pcm16 = encoding == PCM16
        self._carry = b""
        self._check: BodyCheck | None = BodyCheck(pcm16=self._pcm16)
        self._open = ""                        # the word still being written
        self._timer: asyncio.TimerHandle | None = None
        self._done = self._cancelled = self._timed_out = False
        self._first = True
        self.sent_text = ""
        conn.attach(self)

    # -- text in ---------------------------------------------------------------------------
    def _request(self, transcript: str, more: bool) -> None:
        self.sent_text += transcript
        self._conn.send({**self._tts.generation(self._encoding), "context_id": self.context_id,
                         "transcript": transcript, "continue": more})

    def on_text(self, text: str) -> None:
        pending = self._open + (text if self.sent_text or self._open else text.lstrip())
        cut = max(pending.rfind(" "), pending.rfind("\n")) + 1
        self._open = pending[cut:]
        if pending[:cut].strip():
            self._request(pending[:cut], True)
        else:
            self._open = pending

    def on_end(self) -> None:
        rest, self._open = self._open.rstrip(), ""
        self._request(rest, False)
        if self._first and not self._done:
            self._stop_timer()
            self._timer = asyncio.get_running_loop().call_later(self._tts.timeout,
                                                                self._on_deadline)

    # -- messages from the connection ------------------------------------------------------
    def deliver(self, data: dict[str, Any]) -> None:
        """A message of this context."""
        self._queue.put_nowait(data)

    def deliver_error(self, error: BackendError) -> None:
        """The socket failed."""
        self._queue.put_nowait(error)

    async def __anext__(self) -> bytes:
        while not self._done and not self._cancelled:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(READ_IDLE, self._tts.timeout))
            except asyncio.TimeoutError:
                raise self._fail("stream stalled") from None
            if self._cancelled:
                break
            if isinstance(item, BackendError):
                if self._timed_out:
                    raise self._fail(f"no audio within {self._tts.timeout:g} s")
                raise self._fail(item.message, status=item.status, retryable=item.retryable)
            kind = item.get("type")
            if kind == "chunk" and item.get("data"):
                if self._first:
                    self._first = False
                    self._stop_timer()
                chunk = self._checked(base64.b64decode(item["data"]), end=False)
                if chunk:
                    return chunk
            elif kind == "done" or (kind == "chunk" and item.get("done")):
                self._finish()
                if self._first:
                    raise self._fail("the context ended without audio")
                chunk = self._checked(b"", end=True)
                if chunk:
                    return chunk
            elif kind == "error":
                status = item.get("status_code")
                message = str(item.get("message") or item.get("title") or "error")
                code = item.get("error_code")
                raise self._fail(f"{message} ({code})" if code else message,
                                 status=status if isinstance(status, int) else None,
                                 retryable=not isinstance(status, int)
                                 or retryable_status(status))
        raise StopAsyncIteration

    def _checked(self, chunk: bytes, *, end: bool) -> bytes:
        if self._check is not None:
            try:
                chunk = self._check.end() if end else self._check.feed(chunk)
            except NotAudio as exc:
                raise self._fail(f"not audio: {exc}") from None
            if self._check.decided:
                self._check = None
        if self._pcm16 and chunk:
            if self._carry:
                chunk, self._carry = self._carry + chunk, b""
            if len(chunk) & 1:
                chunk, self._carry = chunk[:-1], chunk[-1:]
        return chunk

    # -- stopping --------------------------------------------------------------------------
    def _finish(self) -> None:
        self._done = True
        self._stop_timer()
        self._conn.detach(self)

    def _fail(self, message: str, *, status: int | None = None,
              retryable: bool = True) -> BaseException:
        was_done = self._done
        self._finish()
        if not was_done and self.sent_text:     # stop what the service may still generate
            self._conn.send({"context_id": self.context_id, "cancel": True})
        if self._cancelled:
            return StopAsyncIteration()
        return self._tts.error(message, status=status, retryable=retryable)

    def _abort(self) -> None:
        """The deadline: wake the reader, which reports the timeout."""
        self._queue.put_nowait(self._tts.error("deadline"))

    def cancel(self) -> None:
        """Barge-in: Cartesia is told to stop this context; the socket stays open."""
        if self._cancelled:
            return
        self._cancelled = True
        if not self._done:
            if self.sent_text or self.ended:
                self._conn.send({"context_id": self.context_id, "cancel": True})
            self._finish()
        self._queue.put_nowait(self._tts.error("cancelled"))

    async def aclose(self) -> None:
        """Cancel (nothing to wait for: the socket is shared)."""
        self.cancel()


__all__ = ["CartesiaConnection", "CartesiaContext", "IDLE_CLOSE", "MAX_CONTEXTS"]
