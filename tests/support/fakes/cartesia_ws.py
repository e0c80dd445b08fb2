"""The fake Cartesia's WebSocket, ``GET /tts/websocket`` (mounted by :class:`FakeCartesia`).

As the service documents it: the handshake needs the version (``Cartesia-Version`` header or
``?cartesia_version=``) and the key (``Authorization: Bearer``, the older ``X-API-Key``, or
``?api_key=``), else HTTP 400/401. Then any number of contexts on one socket: generation
requests ``{context_id, model_id, transcript, voice, output_format, language, continue,
max_buffer_delay_ms?}`` (validated like ``/tts/bytes``; a bad one answers ``{"type":
"error", …}`` for its context) and ``{"context_id", "cancel": true}``.

Managed buffering, as Cartesia describes it: a context's text is buffered until it ends a
clause (``. , ; : ! ?``) after at least ``clause_chars`` characters, until
``max_buffer_delay_ms`` (default 3000; 0 = each piece at once) passed since the first
buffered piece, or until ``continue: false``; then that text is generated — ``stall`` seconds
(the time to first audio), then ``chunk`` messages ``{type, data, done: false, status_code:
206, step_time, context_id}`` paced by ``speed``; after the last piece ``{"type": "done"}``.
A cancelled context sends nothing more. Every context is recorded as a
:class:`~.tts_common.SpeechRequest` (``path`` ``/tts/websocket``, ``body`` its messages;
``disconnected`` set when it was cancelled or its socket closed before its end).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .tts_common import SpeechRequest

if TYPE_CHECKING:
    from .cartesia import FakeCartesia

CLAUSE_END = (".", ",", ";", ":", "!", "?")
DEFAULT_BUFFER_DELAY_MS = 3000


@dataclass
class SocketRecord:
    """One accepted socket."""

    headers: dict[str, str]
    query: dict[str, str]
    contexts: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class _Context:
    def __init__(self, rec: SpeechRequest, first: dict[str, Any]) -> None:
        self.rec = rec
        self.first = first
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None


class CartesiaSocketService:
    """The WebSocket side of one :class:`FakeCartesia`."""

    def __init__(self, fake: FakeCartesia) -> None:
        self.fake = fake
        self.clause_chars = 30
        self.sockets: list[SocketRecord] = []
        self.refuse: int | None = None        # answer handshakes with this status
        self.drop_after_chunks: int | None = None   # abort the socket after this many chunks
        self.chunks_sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from .cartesia import JSON_ERRORS_FROM, VERSION
        version = request.headers.get("Cartesia-Version") or request.query.get(
            "cartesia_version", "")
        auth = request.headers.get("Authorization", "")
        key = (auth[7:] if auth.startswith("Bearer ") else
               request.headers.get("X-API-Key") or request.query.get("api_key", ""))

        def refuse(status: int, code: str, message: str) -> web.Response:
            if version >= JSON_ERRORS_FROM:
                return web.json_response({"error_code": code, "title": code,
                                          "message": message}, status=status)
            return web.Response(status=status, text=f"{code}: {message}")

        if not VERSION.fullmatch(version):
            return refuse(400, "invalid_version", "A Cartesia-Version is required.")
        if key != self.fake.api_key:
            return refuse(401, "invalid_api_key", "Invalid API key.")
        if self.refuse is not None:
            return refuse(self.refuse, "injected", f"injected failure {self.refuse}")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 22)
        await ws.prepare(request)
        sock = SocketRecord(dict(request.headers), dict(request.query))
        self.sockets.append(sock)
        contexts: dict[str, _Context] = {}
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await ws.send_json({"type": "error", "done": True, "status_code": 400,
                                        "title": "Invalid message", "message": "not JSON"})
                    continue
                cid = str(data.get("context_id") or "")
                ctx = contexts.get(cid)
                if data.get("cancel"):
                    if ctx is not None:
                        ctx.rec.body.append(data)
                        ctx.cancelled = True
                        ctx.rec.disconnected.set()
                        ctx.inbox.put_nowait({})
                    continue
                if ctx is None:
                    problem = self._problem(data, version)
                    if problem:
                        await ws.send_json({"type": "error", "done": True, "status_code": 400,
                                            "title": "Invalid request", "message": problem,
                                            "error_code": "invalid_request",
                                            "context_id": cid or None})
                        continue
                    rec = SpeechRequest("/tts/websocket", dict(request.query),
                                        dict(request.headers), [])
                    self.fake.requests.append(rec)
                    ctx = contexts[cid] = _Context(rec, data)
                    sock.contexts.append(cid)
                    ctx.task = asyncio.create_task(self._speak(ws, cid, ctx))
                ctx.rec.body.append(data)
                ctx.inbox.put_nowait(data)
        finally:
            sock.closed.set()
            for ctx in contexts.values():
                if not ctx.rec.completed:
                    ctx.rec.disconnected.set()
                if ctx.task is not None:
                    ctx.task.cancel()
        return ws

    def _problem(self, data: dict[str, Any], version: str) -> str:
        from .cartesia import MODELS, format_problem, voice_problem
        if not cid_ok(data.get("context_id")):
            return "context_id is required."
        if data.get("model_id") not in MODELS:
            return f"Unknown model_id {data.get('model_id')!r}."
        if not isinstance(data.get("transcript"), str):
            return "transcript is required."
        return voice_problem(data.get("voice"), version) or format_problem(
            data.get("output_format"))

    async def _speak(self, ws: web.WebSocketResponse, cid: str, ctx: _Context) -> None:
        """Buffer the context's text and generate it as Cartesia's managed buffering does."""
        fmt = ctx.first["output_format"]
        delay_ms = ctx.first.get("max_buffer_delay_ms", DEFAULT_BUFFER_DELAY_MS)
        buffer, since = "", 0.0
        while not ctx.cancelled:
            timeout = None
            if buffer and delay_ms:
                timeout = max(0.0, since + delay_ms / 1000 - time.monotonic())
            try:
                data = await asyncio.wait_for(ctx.inbox.get(), timeout)
            except asyncio.TimeoutError:
                data = {"_due": True}
            if ctx.cancelled:
                return
            text = str(data.get("transcript") or "")
            if text and not buffer:
                since = time.monotonic()
            buffer += text
            last = "continue" in data and not data["continue"]
            clause = buffer.rstrip().endswith(CLAUSE_END) and len(buffer) >= self.clause_chars
            if buffer.strip() and (last or data.get("_due") or clause or data.get("flush")
                                   or delay_ms == 0):
                if not await self._generate(ws, cid, ctx, buffer, fmt):
                    return
                buffer = ""
            if last:
                ctx.rec.completed = True
                await ws.send_json({"type": "done", "done": True, "status_code": 200,
                                    "context_id": cid})
                return

    async def _generate(self, ws: web.WebSocketResponse, cid: str, ctx: _Context,
                        text: str, fmt: dict[str, Any]) -> bool:
        from .cartesia import ENCODINGS
        fake, rec = self.fake, ctx.rec
        audio = fake.audio(text.strip(), fmt["encoding"], fmt["sample_rate"])
        rec.audio += audio
        if fake.stall:
            await asyncio.sleep(fake.stall)
        bps = fmt["sample_rate"] * ENCODINGS[fmt["encoding"]][1]
        step = max(1, bps * fake.chunk_ms // 1000)
        began, sent = time.monotonic(), 0
        for pos in range(0, len(audio), step):
            if ctx.cancelled or ws.closed:
                return False
            if self.drop_after_chunks is not None and self.chunks_sent >= self.drop_after_chunks:
                assert ws._req is not None and ws._req.transport is not None
                ws._req.transport.abort()
                return False
            piece = audio[pos:pos + step]
            if rec.first_byte_at is None:
                rec.first_byte_at = time.perf_counter()
            await ws.send_json({"type": "chunk", "data": base64.b64encode(piece).decode(),
                                "done": False, "status_code": 206, "step_time": 1.0,
                                "context_id": cid})
            self.chunks_sent += 1
            rec.sent += len(piece)
            sent += len(piece)
            rec.writes.append(len(piece))
            if fake.speed > 0:
                ahead = began + sent / bps / fake.speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            else:
                await asyncio.sleep(0)
        return True


def cid_ok(cid: object) -> bool:
    return isinstance(cid, str) and 0 < len(cid) <= 256


__all__ = ["CartesiaSocketService", "SocketRecord"]
