"""ElevenLabs' input-streaming WebSocket (``…/v1/text-to-speech/{voice}/stream-input``): one
socket per sentence, its text sent as it is written.

Wire protocol (ElevenLabs' API reference and its official Python SDK):

- the key in the handshake header ``xi-api-key``; query ``model_id``, ``output_format``
  (``ulaw_8000``/``alaw_8000``/``pcm_8000``) and ``language_code``;
- first message (BOS) ``{"text": " ", "generation_config": {"chunk_length_schedule": […]}}``:
  the service starts a generation once that many characters are buffered (ElevenLabs'
  default is ``[120, 160, 250, 290]``; here the first step is 50, the lowest allowed, so a
  long sentence starts speaking after its first words);
- text in pieces that end at a word boundary with a space, cut as the SDK's ``text_chunker``
  cuts an LLM's stream (at ``. , ? ! ; : — - ( ) [ ] }`` or a space);
- the end of the sentence: its last piece with ``"flush": true`` (speak what is buffered now),
  then EOS ``{"text": ""}``;
- back: ``{"audio": <base64>, "alignment": …}`` messages, then ``{"isFinal": true}`` and the
  service closes; an error is ``{"message", "error", "code"}`` and a close.

A barge-in closes the socket, which ends the generation at ElevenLabs (nothing more is sent,
nothing more billed). Audio that is not the raw format asked for is a failure before any of it
is played (:mod:`.audio_check`), and so is a socket that ends without audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from typing import TYPE_CHECKING

import aiohttp

from .audio_check import BodyCheck, NotAudio
from .base import PCM16, LiveSpeech
from .http_stream import READ_IDLE, DeadlineStream, retryable_status

if TYPE_CHECKING:
    from .elevenlabs import ElevenLabsTTS

CLOSE_WAIT = 2.0
"""Seconds :meth:`ElevenLabsSocket.aclose` waits for the closing handshake."""
SPLITTERS = (".", ",", "?", "!", ";", ":", "—", "-", "(", ")", "[", "]", "}", " ")
DEFAULT_SCHEDULE = (50, 160, 250, 290)
BOS = " "
EOS = '{"text": ""}'


class TextChunker:
    """Cuts streamed text into pieces that end at a word boundary with a space (the rule of
    ElevenLabs' SDK ``text_chunker``)."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, text: str) -> str:
        """The piece ready to send after ``text`` arrived (``""`` while a word is open)."""
        buffer = self.buffer
        if buffer.endswith(SPLITTERS):
            if buffer.endswith(" "):
                self.buffer = text
                return buffer
            self.buffer = text.lstrip(" ")      # the space is added here: not twice
            return buffer + " "
        if text.startswith(SPLITTERS):
            out = buffer + text[0]
            self.buffer = text[1:]
            return out if out.endswith(" ") else out + " "
        self.buffer = buffer + text
        return ""

    def rest(self) -> str:
        """What is left at the end of the text, with its closing space."""
        rest, self.buffer = self.buffer, ""
        return rest + " " if rest.strip() else ""


class ElevenLabsSocket(DeadlineStream, LiveSpeech):
    """One sentence over ``stream-input``; its text fed whole (:meth:`ElevenLabsTTS.synthesize`)
    or in pieces (:meth:`ElevenLabsTTS.synthesize_live`, which connects at once)."""

    def __init__(self, tts: ElevenLabsTTS, encoding: str) -> None:
        LiveSpeech.__init__(self)
        self._tts, self._encoding = tts, encoding
        self._pcm16 = encoding == PCM16
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connect: asyncio.Task[aiohttp.ClientWebSocketResponse] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._chunker = TextChunker()
        self._carry = b""
        self._check: BodyCheck | None = BodyCheck(pcm16=self._pcm16)
        self._done = self._cancelled = self._timed_out = False
        self._first = True
        self.sent_text = ""
        """The text sent to ElevenLabs so far (what it bills)."""

    # -- text in ---------------------------------------------------------------------------
    def on_text(self, text: str) -> None:
        piece = self._chunker.feed(text if self.sent_text or self._chunker.buffer
                                   else text.lstrip())
        if piece.strip():
            self._send({"text": piece})

    def on_end(self) -> None:
        rest = self._chunker.rest()
        self._send({"text": rest or " ", "flush": True})
        self._outbox.append(EOS)
        self._wake.set()
        if self._first and not self._done:      # the provider's timeout runs from here
            self._stop_timer()
            self._timer = asyncio.get_running_loop().call_later(self._tts.timeout,
                                                                self._on_deadline)
        self.start()

    def _send(self, message: dict[str, object]) -> None:
        self.sent_text += str(message["text"]) if message["text"] != " " else ""
        self._outbox.append(json.dumps(message))
        self._wake.set()

    def start(self) -> None:
        """Connect now (in the background) rather than at the first read."""
        if self._connect is None and self._ws is None and not self._done:
            self._connect = asyncio.get_running_loop().create_task(self._handshake())

    async def _handshake(self) -> aiohttp.ClientWebSocketResponse:
        tts = self._tts
        ws = await tts.session().ws_connect(
            f"{tts.ws_base}/v1/text-to-speech/{tts.voice}/stream-input",
            params=tts.ws_params(self._encoding), headers=tts._headers,
            timeout=aiohttp.ClientWSTimeout(ws_receive=max(READ_IDLE, tts.timeout),
                                            ws_close=CLOSE_WAIT))
        self._ws = ws
        await ws.send_str(json.dumps({"text": BOS, "generation_config": {
            "chunk_length_schedule": list(tts.chunk_schedule)}}))
        self._writer = asyncio.get_running_loop().create_task(self._write(ws))
        return ws

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send queued messages in order, as they come (the reader reports a broken socket)."""
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    await ws.send_str(item)
                    if item == EOS:
                        return
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass

    # -- audio out -------------------------------------------------------------------------
    async def __anext__(self) -> bytes:
        if not self.ended and self.text and self._connect is None and self._ws is None:
            self.end()                      # a whole text given to synthesize()
        while not self._done:
            if self._cancelled:
                self._done = True
                break
            ws = self._ws if self._connect is None and self._ws is not None else \
                await self._open()
            try:
                msg = await ws.receive()
            except asyncio.TimeoutError:          # ws_receive: nothing for READ_IDLE seconds
                raise self._fail("stream stalled") from None
            if self._cancelled:
                break
            if msg.type is aiohttp.WSMsgType.TEXT:
                chunk = self._on_message(msg.data)
                if chunk:
                    return chunk
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise self._fail(f"stream broke off: {msg.data or ws.exception()}")
            elif msg.type is not aiohttp.WSMsgType.BINARY:      # CLOSE / CLOSING / CLOSED
                if self._timed_out:
                    raise self._fail(f"no audio within {self._tts.timeout:g} s")
                reason = f": {msg.extra}" if msg.extra else ""
                raise self._fail(f"socket closed before the end of the audio "
                                 f"(code {ws.close_code}{reason})", status=ws.close_code)
        raise StopAsyncIteration

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        self.start()
        assert self._connect is not None
        try:
            ws = await asyncio.shield(self._connect)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():   # our caller is being cancelled
                self._fail("cancelled")
                raise
            if self._cancelled:
                self._done = True
                raise StopAsyncIteration from None
            raise self._fail(f"no audio within {self._tts.timeout:g} s") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise self._fail(f"WebSocket handshake refused (HTTP {exc.status})",
                             status=exc.status, retryable=retryable_status(exc.status)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self._fail(f"connection failed: {exc}") from None
        self._connect = None
        return ws

    def _on_message(self, raw: str) -> bytes:
        """Audio from one server message (``b""`` for none); ends or fails the stream."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise self._fail(f"unexpected message {raw[:80]!r}") from None
        if not isinstance(data, dict):
            raise self._fail(f"unexpected message {raw[:80]!r}")
        audio = data.get("audio")
        if audio:
            if self._first:
                self._first = False
                self._stop_timer()
            return self._checked(base64.b64decode(audio), end=False)
        if data.get("isFinal"):
            self._done = True
            self._stop_timer()
            self._close()
            if self._first:
                raise self._fail("the stream ended without audio")
            return self._checked(b"", end=True)
        if data.get("error") or data.get("message"):
            code = data.get("code")
            message = str(data.get("message") or data.get("error"))
            if data.get("error") and data.get("error") not in message:
                message = f"{message} ({data['error']})"
            # 1008 (policy violation) is a bad key, quota or request: not worth retrying
            raise self._fail(message, status=code if isinstance(code, int) else None,
                             retryable=code != 1008)
        return b""                               # alignment-only or unknown: ignore

    def _checked(self, chunk: bytes, *, end: bool) -> bytes:
        """``chunk`` once the start of the audio is known to be raw audio (see
        :mod:`.audio_check`), cut at whole samples for PCM16."""
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
    def _fail(self, message: str, *, status: int | None = None,
              retryable: bool = True) -> BaseException:
        self._done = True
        self._stop_timer()
        self._abort()
        if self._cancelled:
            return StopAsyncIteration()
        return self._tts.error(message, status=status, retryable=retryable)

    def _abort(self) -> None:
        if self._connect is not None:
            self._connect.cancel()
        if self._writer is not None:
            self._writer.cancel()
        self._close()

    def _close(self) -> None:
        """Close the socket in the background (wakes a pending ``receive``)."""
        if self._ws is not None and self._closing is None and not self._ws.closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:                 # no loop (interpreter exit): nothing to do
                return
            self._closing = loop.create_task(self._ws.close())

    def cancel(self) -> None:
        """Stop at once: the socket is closed, which ends the generation at ElevenLabs."""
        if self._cancelled:
            return
        self._cancelled = True
        self._stop_timer()
        self._abort()

    async def aclose(self) -> None:
        """Cancel and wait (briefly) for the closing handshake."""
        self.cancel()
        self._done = True
        connect = self._connect
        if connect is not None and not connect.done():
            await asyncio.wait({connect}, timeout=CLOSE_WAIT)
            self._close()
        if self._closing is not None:
            await asyncio.wait({self._closing}, timeout=CLOSE_WAIT + 0.5)


__all__ = ["DEFAULT_SCHEDULE", "ElevenLabsSocket", "TextChunker"]
