"""A fake ElevenLabs text-to-speech service (base URL ``http://127.0.0.1:PORT``).

- ``POST /v1/text-to-speech/{voice_id}/stream?output_format=…`` with ``xi-api-key`` and JSON
  ``{text, model_id, language_code?, …}``: the audio as a chunked body.
- ``GET /v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=…`` (WebSocket):
  BOS ``{"text": " ", "generation_config": {"chunk_length_schedule": […]}}`` (the key in the
  ``xi-api-key`` handshake header, or in the BOS as ``xi-api-key`` — the current SDK's
  ``InitializeConnection`` — ``xi_api_key`` as older docs wrote it, or ``authorization:
  Bearer …``), text messages, EOS ``{"text": ""}``; answers ``{"audio": <base64>, "isFinal":
  null, "alignment": …}`` messages, then ``{"isFinal": true}`` and closes. Like the service,
  a generation starts when the buffered text reaches the next step of the chunk length
  schedule (default ``[120, 160, 250, 290]``; each step 50–500), on ``flush: true`` and at
  EOS; ``stall`` seconds pass before each generation's first audio (the service's time to
  first audio).

Validates like the service: 401 ``{"detail": {"status", "message"}}`` for a missing/wrong key,
404 for an unknown voice, 400 for an unknown model, 422 (the validation list under
``detail``) for an unknown ``output_format`` or a missing ``text``. Without ``output_format``
the service answers mp3 (stand-in bytes starting with ``ID3`` here). On the socket, problems
come as ``{"message", "error", "code": 1008}`` followed by a 1008 close.

Extra WebSocket knobs: ``ws_error_after`` (bytes of audio, then an error message and a 1008
close), and ``drop_after`` aborts the socket's connection mid-stream; ``misanswer``'s body is
sent base64 in the ``audio`` messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

from aiohttp import WSMsgType, web

from .tts_common import FakeSpeechService, SpeechRequest

DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"
VOICE_ID = re.compile(r"[A-Za-z0-9]{20}")
MODELS = {"eleven_flash_v2_5", "eleven_flash_v2", "eleven_turbo_v2_5", "eleven_turbo_v2",
          "eleven_multilingual_v2", "eleven_v3", "eleven_monolingual_v1"}
# output_format → (sample format, rate, bytes per sample); mp3 is a stand-in
FORMATS: dict[str, tuple[str, int, int]] = {
    "ulaw_8000": ("mulaw", 8000, 1), "alaw_8000": ("alaw", 8000, 1),
    **{f"pcm_{r}": ("s16le", r, 2) for r in (8000, 16000, 22050, 24000, 44100, 48000)},
    **{f"mp3_{r}_{b}": ("mp3", r, 1) for r, b in (
        (22050, 32), (44100, 32), (44100, 64), (44100, 96), (44100, 128), (44100, 192))},
}
DEFAULT_FORMAT = "mp3_44100_128"
INACTIVITY = 20.0
DEFAULT_SCHEDULE = (120, 160, 250, 290)


def detail(status: str, message: str) -> dict[str, Any]:
    """ElevenLabs' error body."""
    return {"detail": {"status": status, "message": message}}


def validation(loc: list[str], msg: str, type_: str, value: Any = None) -> dict[str, Any]:
    """The request-validation (422) body: a list under ``detail``."""
    return {"detail": [{"type": type_, "loc": loc, "msg": msg, "input": value}]}


class FakeElevenLabs(FakeSpeechService):
    """The fake; ``await start()`` returns ``http://127.0.0.1:PORT``."""

    def __init__(self, api_key: str = "xi-test-key-0123456789") -> None:
        super().__init__(api_key)
        self.voices = {DEFAULT_VOICE, "pNInz6obpgDQGcFmaJgB"}
        self.ws_error_after: int | None = None
        self.ws_error = ("quota_exceeded", "This request exceeds your quota.")
        self.app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._http)
        self.app.router.add_get("/v1/text-to-speech/{voice_id}/stream-input", self._ws)

    def audio(self, text: str, output_format: str = "ulaw_8000") -> bytes:
        """The exact audio the fake speaks for ``text`` (surrounding spaces ignored)."""
        kind, rate, _ = FORMATS[output_format]
        samples = self.samples(text.strip(), rate)
        if kind == "mp3":
            return b"ID3\x04\0\0" + self.encode(samples[::16], "mulaw")
        return self.encode(samples, kind)

    # ------------------------------------------------------------------ validation

    def _check(self, request: web.Request, key: str | None) -> web.Response | None:
        """The error response for a bad key/voice/model/format, or None."""
        if key is not None:
            if not key:
                return web.json_response(detail(
                    "needs_authorization", "Neither authorization header nor xi-api-key "
                    "received, please provide one."), status=401)
            if key != self.api_key:
                return web.json_response(detail("invalid_api_key", "Invalid API key"),
                                         status=401)
        voice = request.match_info["voice_id"]
        if not VOICE_ID.fullmatch(voice) or voice not in self.voices:
            return web.json_response(detail(
                "voice_not_found", f"A voice with the voice_id {voice} was not found."),
                status=404)
        fmt = request.query.get("output_format", DEFAULT_FORMAT)
        if fmt not in FORMATS:
            return web.json_response(validation(
                ["query", "output_format"], f"Input should be one of {', '.join(FORMATS)}",
                "enum", fmt), status=422)
        if (status := self.injected_failure()) is not None:
            code = {429: "too_many_concurrent_requests", 402: "payment_required",
                    500: "internal_error"}.get(status, "error")
            return web.json_response(detail(code, self.fail_message or
                                            f"injected failure {status}"), status=status)
        return None

    def _model_error(self, model: Any) -> web.Response | None:
        if model not in MODELS:
            return web.json_response(detail(
                "model_not_found", f"A model with model ID {model} does not exist."), status=400)
        return None

    # ------------------------------------------------------------------ HTTP streaming

    async def _http(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = await request.json() if raw else None
        except ValueError:
            body = None
        rec = self.record(request, body)
        bad = self._check(request, request.headers.get("xi-api-key", ""))
        if bad is None and (not isinstance(body, dict) or not isinstance(body.get("text"), str)
                            or not body["text"]):
            bad = web.json_response(validation(["body", "text"], "Field required", "missing"),
                                    status=422)
        if bad is None:
            bad = self._model_error(body.get("model_id", "eleven_multilingual_v2"))
        if bad is not None:
            rec.status = bad.status
            return bad
        fmt = request.query.get("output_format", DEFAULT_FORMAT)
        _, rate, width = FORMATS[fmt]
        return await self.stream(request, rec, self.audio(body["text"], fmt), rate * width,
                                 "audio/mpeg" if fmt.startswith("mp3") else
                                 "application/octet-stream")

    # ------------------------------------------------------------------ WebSocket

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        rec = self.record(request, [])
        header_key = request.headers.get("xi-api-key")
        bad = self._check(request, header_key) or self._model_error(
            request.query.get("model_id", "eleven_multilingual_v2"))
        if bad is not None:
            rec.status = bad.status
            return bad
        if self.delay_headers and not await self.wait(request, rec, self.delay_headers):
            return web.Response(status=499)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        closing = False

        async def read() -> None:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        data = {"_invalid": msg.data}
                    rec.body.append(data)
                    inbox.put_nowait(data)
            if not closing:
                rec.disconnected.set()
            inbox.put_nowait(None)

        reader = asyncio.create_task(read())

        async def error(code: str, message: str) -> None:
            nonlocal closing
            closing = True
            if not ws.closed:
                await ws.send_json({"message": message, "error": code, "code": 1008})
                await ws.close(code=1008, message=message[:100].encode())

        try:
            fmt = request.query.get("output_format", DEFAULT_FORMAT)
            buffer, first = "", True
            schedule, step = list(DEFAULT_SCHEDULE), 0
            while True:
                try:
                    data = await asyncio.wait_for(inbox.get(), INACTIVITY)
                except asyncio.TimeoutError:
                    await error("input_timeout_exceeded", "Input timeout exceeded.")
                    return ws
                if data is None:
                    return ws
                text = data.get("text")
                if not isinstance(text, str):
                    await error("invalid_message", "Each message must carry a text field.")
                    return ws
                if first:
                    first = False
                    if text != " ":
                        await error("invalid_message",
                                    "The first message must have text set to a single space.")
                        return ws
                    if header_key is None:
                        key = data.get("xi-api-key") or data.get("xi_api_key") or str(
                            data.get("authorization", "")).removeprefix("Bearer ")
                        if key != self.api_key:
                            await error("invalid_api_key", "Invalid API key")
                            return ws
                    config = data.get("generation_config") or {}
                    if "chunk_length_schedule" in config:
                        schedule = config["chunk_length_schedule"]
                        if (not isinstance(schedule, list) or not schedule or not all(
                                isinstance(n, (int, float)) and 50 <= n <= 500
                                for n in schedule)):
                            await error("invalid_message", "chunk_length_schedule: each "
                                        "item must be between 50 and 500.")
                            return ws
                    continue
                if text == "":                   # EOS: speak the rest, then end
                    if buffer.strip() and not await self._speak(ws, rec, buffer, fmt, error):
                        return ws
                    closing = True
                    await ws.send_json({"isFinal": True})
                    rec.completed = True
                    await ws.close()
                    return ws
                buffer += text
                due = len(buffer) >= schedule[min(step, len(schedule) - 1)]
                if (data.get("flush") or due) and buffer.strip():
                    if not await self._speak(ws, rec, buffer, fmt, error):
                        return ws
                    buffer = ""
                    step += 1
        finally:
            closing = True
            reader.cancel()

    async def _speak(self, ws: web.WebSocketResponse, rec: SpeechRequest, text: str, fmt: str,
                     error: Any) -> bool:
        """Send ``text``'s audio as ``audio`` messages; False if the socket is done."""
        audio = self.audio(text, fmt)
        if self.misanswer is not None and self.misanswer_times != 0:
            wrong = self.misanswer(rec, audio)      # its bytes go out as the "audio"
            if wrong is not None:
                if self.misanswer_times > 0:
                    self.misanswer_times -= 1
                audio = wrong[1]
        rec.audio += audio
        _, rate, width = FORMATS[fmt]
        bps = rate * width
        step = max(1, bps * self.chunk_ms // 1000) + (1 if self.odd_writes else 0)
        if self.stall:
            deadline = time.monotonic() + self.stall
            while time.monotonic() < deadline and not rec.disconnected.is_set():
                await asyncio.sleep(0.005)
        began = time.monotonic()
        sent_here = 0
        chars = list(text.strip())
        alignment = {"chars": chars,
                     "charStartTimesMs": [int(i * self.ms_per_char) for i in range(len(chars))],
                     "charDurationsMs": [int(self.ms_per_char)] * len(chars)}
        for pos in range(0, len(audio), step):
            if rec.disconnected.is_set() or ws.closed:
                rec.disconnected.set()
                return False
            if self.ws_error_after is not None and rec.sent >= self.ws_error_after:
                await error(*self.ws_error)
                return False
            if self.drop_after is not None and rec.sent >= self.drop_after:
                assert ws._req is not None and ws._req.transport is not None
                ws._req.transport.abort()
                return False
            piece = audio[pos:pos + step]
            if rec.first_byte_at is None:
                rec.first_byte_at = time.perf_counter()
            msg = {"audio": base64.b64encode(piece).decode(), "isFinal": None,
                   "normalizedAlignment": alignment if pos == 0 else None,
                   "alignment": alignment if pos == 0 else None}
            try:
                await ws.send_str(json.dumps(msg))
            except (ConnectionError, RuntimeError):
                rec.disconnected.set()
                return False
            rec.sent += len(piece)
            sent_here += len(piece)
            rec.writes.append(len(piece))
            if self.speed > 0:
                ahead = began + sent_here / bps / self.speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            else:
                await asyncio.sleep(0)
        return True


__all__ = ["FakeElevenLabs", "DEFAULT_VOICE", "FORMATS"]
