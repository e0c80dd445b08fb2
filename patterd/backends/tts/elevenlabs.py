"""ElevenLabs text-to-speech: streaming HTTP (default) or the input-streaming WebSocket.

ElevenLabs writes telephone audio itself (``output_format=ulaw_8000``/``alaw_8000``, or
``pcm_8000`` s16le), so G.711 goes to the carrier untouched.

- ``transport: http`` — ``POST {base_url}/v1/text-to-speech/{voice}/stream?output_format=…``
  with ``xi-api-key``; the body is the audio, streamed (see :mod:`.http_stream`).
- ``transport: websocket`` — ``wss://…/v1/text-to-speech/{voice}/stream-input?model_id=…&
  output_format=…`` (key in the handshake header): BOS ``{"text": " "}``, the sentence with
  ``flush: true``, EOS ``{"text": ""}``; audio comes back base64 in ``{"audio": …}`` messages
  and ends with ``{"isFinal": true}``. Cancelling closes the socket, which ends the generation.

Either way, audio that is not the raw format asked for (a WAV or MP3 file, text) is a failure
before any of it is played (:mod:`.audio_check`), and so is a socket that ends without audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any

import aiohttp

from .audio_check import BodyCheck, NotAudio
from .base import PCM16, SpeechStream
from .http_stream import (READ_IDLE, CloudTTS, DeadlineStream, EmptySpeechStream,
                          HttpSpeechStream, retryable_status)

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"
DEFAULT_MODEL = "eleven_flash_v2_5"
OUTPUT_FORMATS = {PCM16: "pcm_8000", "PCMU": "ulaw_8000", "PCMA": "alaw_8000"}
CLOSE_WAIT = 2.0
"""Seconds :meth:`_WebSocketStream.aclose` waits for the closing handshake."""


class ElevenLabsTTS(CloudTTS):
    """ElevenLabs: ``voice`` (a voice id, default Rachel), ``model`` (default
    ``eleven_flash_v2_5``), options ``transport`` (``http``/``websocket``) and ``language``
    (an ISO 639-1 ``language_code``, for the models that take one)."""

    name = "elevenlabs"
    output_encodings = frozenset(OUTPUT_FORMATS)

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.voice = cfg.voice or DEFAULT_VOICE
        self.model = cfg.model or DEFAULT_MODEL
        self.language = str(cfg.options.get("language") or "")
        self.transport = str(cfg.options.get("transport") or "http").lower()
        if self.transport not in ("http", "websocket"):
            raise ValueError(f"tts provider 'elevenlabs': transport must be http or websocket, "
                             f"got {self.transport!r}")
        self._headers = {"xi-api-key": cfg.api_key} if cfg.api_key else {}
        base = self.base_url
        self.ws_base = ("wss://" + base[8:] if base.startswith("https://") else
                        "ws://" + base[7:] if base.startswith("http://") else base)

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as 8 kHz audio in ``encoding``, over the configured transport."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        if self.transport == "websocket":
            return _WebSocketStream(self, text, encoding)
        body: dict[str, Any] = {"text": text, "model_id": self.model}
        if self.language:
            body["language_code"] = self.language
        return HttpSpeechStream(
            self, f"{self.base_url}/v1/text-to-speech/{self.voice}/stream", json=body,
            encoding=encoding, headers=self._headers,
            params={"output_format": OUTPUT_FORMATS[encoding]})

    def ws_params(self, encoding: str) -> dict[str, str]:
        """Query parameters of the input-streaming socket."""
        params = {"model_id": self.model, "output_format": OUTPUT_FORMATS[encoding]}
        if self.language:
            params["language_code"] = self.language
        return params

    def parse_error(self, status: int, body: bytes) -> str:
        """``{"detail": {"status", "message"}}``, or a validation list under ``detail``."""
        try:
            detail = json.loads(body)["detail"]
        except (ValueError, KeyError, TypeError):
            return super().parse_error(status, body)
        if isinstance(detail, dict):
            message = str(detail.get("message") or "")
            code = detail.get("status") or detail.get("code")
            if message:
                return f"{message} ({code})" if code else message
        elif isinstance(detail, list):
            parts = [f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
                     for d in detail if isinstance(d, dict)]
            if parts:
                return "; ".join(parts)
        elif detail:
            return str(detail)
        return super().parse_error(status, body)


class _WebSocketStream(DeadlineStream):
    """One sentence over ``stream-input``: one socket per stream, closed to cancel."""

    def __init__(self, tts: ElevenLabsTTS, text: str, encoding: str) -> None:
        self._tts, self._text, self._encoding = tts, text, encoding
        self._pcm16 = encoding == PCM16
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connect: asyncio.Task[aiohttp.ClientWebSocketResponse] | None = None
        self._closing: asyncio.Task[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._carry = b""
        self._check: BodyCheck | None = BodyCheck(pcm16=self._pcm16)
        self._done = self._cancelled = self._timed_out = self._ready = False
        self._first = True

    async def __anext__(self) -> bytes:
        while not self._done:
            if self._cancelled:
                self._done = True
                break
            ws = self._ws if self._ready and self._ws is not None else await self._open()
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

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._tts.timeout, self._on_deadline)
        self._connect = loop.create_task(self._handshake())
        try:
            ws = await self._connect
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
        finally:
            self._connect = None
        self._ready = True
        return ws

    async def _handshake(self) -> aiohttp.ClientWebSocketResponse:
        tts = self._tts
        self._ws = ws = await tts.session().ws_connect(
            f"{tts.ws_base}/v1/text-to-speech/{tts.voice}/stream-input",
            params=tts.ws_params(self._encoding), headers=tts._headers,
            timeout=aiohttp.ClientWSTimeout(ws_receive=max(READ_IDLE, tts.timeout),
                                            ws_close=CLOSE_WAIT))
        # BOS (a single space), the sentence (ending in a space) flushed at once, then EOS.
        await ws.send_str('{"text": " "}')
        await ws.send_str(json.dumps({"text": self._text.strip() + " ", "flush": True}))
        await ws.send_str('{"text": ""}')
        return ws

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
        if self._closing is not None:
            await asyncio.wait({self._closing}, timeout=CLOSE_WAIT + 0.5)


__all__ = ["ElevenLabsTTS"]
