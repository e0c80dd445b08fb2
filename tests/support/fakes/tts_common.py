"""What the fake cloud TTS services (ElevenLabs, OpenAI, Deepgram, Cartesia) share.

Each fake is an aiohttp server on 127.0.0.1 that validates requests like its service and then
"synthesises" a deterministic tone whose length is proportional to the text (``ms_per_char``,
60 ms per character by default), encoded as requested, and streams it in chunked writes.

Knobs (attributes, change them between requests):

- ``speed``: 0 = write as fast as possible; 1.0 = real time; 10 = ten times real time.
- ``chunk_ms``: audio per write; ``odd_writes``: add one byte to every write (odd boundaries).
- ``fail_status`` / ``fail_message``: answer the next requests with this HTTP error (in the
  provider's error shape); ``fail_times`` how many (``-1`` = all).
- ``delay_headers``: seconds before the response headers; ``stall``: seconds between the
  headers and the first audio byte.
- ``drop_after``: abort the connection after this many audio bytes (a mid-stream drop).
- ``misanswer``: ``(request, audio) -> (content type, body) | None`` — answer 200 with that
  body instead of the audio (a JSON error, an HTML page, a WAV file when raw audio was asked
  for …); None answers normally. ``misanswer_times`` how many (``-1`` = all).

Every request is recorded as a :class:`SpeechRequest` (``fake.requests``): what was asked,
the exact audio generated, how much was sent, when the first byte went out, and whether the
client went away before the end (``disconnected``, an :class:`asyncio.Event`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from patterd.audio.codecs import alaw_encode, ulaw_encode

POLL = 0.005   # how often a waiting handler looks whether the client has gone


@dataclass
class SpeechRequest:
    """One synthesis request as the fake saw it, and what it did with it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None                       # parsed JSON (HTTP) or the messages (WebSocket)
    status: int = 200
    audio: bytes = b""                     # everything the fake generated (incl. any header)
    sent: int = 0                          # bytes of it written to the client
    writes: list[int] = field(default_factory=list)      # size of each write
    first_byte_at: float | None = None     # time.perf_counter() just before the first write
    completed: bool = False                # all audio written and the response ended
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def params(self) -> Any:
        """The request's parameters: the JSON body (HTTP) or the first message (WebSocket)."""
        if isinstance(self.body, list):
            return self.body[0] if self.body else {}
        return self.body

    @property
    def text(self) -> str:
        """The text asked for, whatever the transport: the JSON body's ``text``/``transcript``/
        ``input`` (HTTP), or the text of every message joined and stripped (WebSocket)."""
        if isinstance(self.body, dict):
            for key in ("text", "transcript", "input"):
                if isinstance(self.body.get(key), str):
                    return self.body[key]
            return ""
        if isinstance(self.body, list):
            return "".join(str(m.get("text") or m.get("transcript") or "")
                           for m in self.body if isinstance(m, dict)).strip()
        return ""


class FakeSpeechService:
    """Base of the fakes: server lifecycle, knobs, tone generation and paced streaming."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[SpeechRequest] = []
        # -- knobs --
        self.ms_per_char = 60.0
        self.tone_hz = 440.0
        self.amplitude = 0.5
        self.speed = 0.0
        self.chunk_ms = 20
        self.odd_writes = False
        self.fail_status: int | None = None
        self.fail_message = ""
        self.fail_times = -1
        self.delay_headers = 0.0
        self.stall = 0.0
        self.drop_after: int | None = None
        self.misanswer: Callable[[SpeechRequest, bytes], tuple[str, bytes] | None] | None = None
        self.misanswer_times = -1
        self._runner: web.AppRunner | None = None
        self.app = web.Application()

    @property
    def last(self) -> SpeechRequest:
        """The most recent request."""
        return self.requests[-1]

    async def start(self) -> str:
        """Listen on a random port of 127.0.0.1; returns the base URL clients configure."""
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        return self.base_url(f"http://127.0.0.1:{port}")

    def base_url(self, root: str) -> str:
        """The provider's base URL on this server (with its version prefix, if any)."""
        return root

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ audio

    def samples(self, text: str, rate: int) -> np.ndarray:
        """The tone for ``text`` at ``rate``: float samples in [-1, 1]."""
        n = int(round(len(text) * self.ms_per_char / 1000 * rate))
        t = np.arange(n, dtype=np.float64) / rate
        return self.amplitude * np.sin(2 * np.pi * self.tone_hz * t)

    def encode(self, samples: np.ndarray, encoding: str) -> bytes:
        """``samples`` as ``s16le``, ``f32le``, ``mulaw`` or ``alaw`` bytes."""
        if encoding == "f32le":
            return samples.astype("<f4").tobytes()
        pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes()
        if encoding == "s16le":
            return pcm
        if encoding == "mulaw":
            return ulaw_encode(pcm)
        if encoding == "alaw":
            return alaw_encode(pcm)
        raise ValueError(encoding)

    # ------------------------------------------------------------------ failures

    def record(self, request: web.Request, body: Any) -> SpeechRequest:
        """Start the record of ``request``."""
        rec = SpeechRequest(request.path, dict(request.query), dict(request.headers), body)
        self.requests.append(rec)
        return rec

    def injected_failure(self) -> int | None:
        """The status to fail this request with (and count it), or None."""
        if self.fail_status is None or self.fail_times == 0:
            return None
        if self.fail_times > 0:
            self.fail_times -= 1
        return self.fail_status

    # ------------------------------------------------------------------ streaming

    @staticmethod
    def gone(request: web.Request) -> bool:
        """Whether the client has closed the connection."""
        transport = request.transport
        return transport is None or transport.is_closing()

    async def wait(self, request: web.Request, rec: SpeechRequest, seconds: float) -> bool:
        """Wait ``seconds`` unless the client leaves first; False if it left."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.gone(request):
                rec.disconnected.set()
                return False
            await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        return True

    async def stream(self, request: web.Request, rec: SpeechRequest, audio: bytes,
                     bytes_per_second: int, content_type: str,
                     headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Write ``audio`` as a chunked 200 response, paced by the knobs."""
        if self.misanswer is not None and self.misanswer_times != 0:
            wrong = self.misanswer(rec, audio)
            if wrong is not None:
                if self.misanswer_times > 0:
                    self.misanswer_times -= 1
                content_type, audio = wrong
        rec.audio = audio
        if self.delay_headers and not await self.wait(request, rec, self.delay_headers):
            return web.Response(status=499)
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                       **(headers or {})})
        await resp.prepare(request)
        if self.stall and not await self.wait(request, rec, self.stall):
            return resp
        step = max(1, bytes_per_second * self.chunk_ms // 1000) + (1 if self.odd_writes else 0)
        began = time.monotonic()
        pos = 0
        while pos < len(audio):
            if self.drop_after is not None and pos >= self.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return resp
            piece = audio[pos:pos + step]
            if self.drop_after is not None:
                piece = piece[: max(1, self.drop_after - pos)]
            if self.gone(request):
                rec.disconnected.set()
                return resp
            if rec.first_byte_at is None:
                rec.first_byte_at = time.perf_counter()
            try:
                await resp.write(piece)
            except (ConnectionError, RuntimeError):
                rec.disconnected.set()
                return resp
            pos += len(piece)
            rec.sent = pos
            rec.writes.append(len(piece))
            if self.speed > 0:
                ahead = began + pos / bytes_per_second / self.speed - time.monotonic()
                if ahead > 0 and not await self.wait(request, rec, ahead):
                    return resp
            else:
                await asyncio.sleep(0)
        try:
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            rec.disconnected.set()
            return resp
        rec.completed = True
        return resp


def wav_header(encoding: str, rate: int) -> bytes:
    """A streaming WAV header (sizes unknown: 0xFFFFFFFF) for 8-bit G.711 or 16-bit PCM."""
    fmt_tag, bits = {"linear16": (1, 16), "mulaw": (7, 8), "alaw": (6, 8)}[encoding]
    block = bits // 8
    return (b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + b"WAVE"
            + b"fmt " + (16).to_bytes(4, "little") + fmt_tag.to_bytes(2, "little")
            + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
            + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
            + bits.to_bytes(2, "little")
            + b"data" + (0xFFFFFFFF).to_bytes(4, "little"))


__all__ = ["FakeSpeechService", "SpeechRequest", "wav_header"]
