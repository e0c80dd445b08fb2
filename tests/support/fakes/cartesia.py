"""A fake Cartesia TTS service (base URL ``http://127.0.0.1:PORT``): ``POST /tts/bytes`` and
the WebSocket ``GET /tts/websocket`` (see :mod:`.cartesia_ws` in this package).

Validates like the service: ``Authorization: Bearer <key>`` (or the older ``X-API-Key``), a
required ``Cartesia-Version: YYYY-MM-DD``, and the JSON body (``model_id``, ``transcript``,
``voice``, ``output_format {container, encoding, sample_rate}``). The voice is ``{mode: "id",
id}`` before version 2026-08-14; from that version (what the current SDK sends) its id as a
string, or ``{id}`` (``mode: "id"`` still allowed). Errors are JSON ``{error_code, title,
message, request_id}`` for version 2026-03-01 and later and plain ``Title: Message`` text
before, as Cartesia documents. ``container: raw`` audio is streamed as generated; ``wav`` gets
a RIFF header.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from .tts_common import FakeSpeechService, wav_header

MODELS = {"sonic", "sonic-2", "sonic-turbo", "sonic-3", "sonic-3.5", "sonic-latest"}
ENCODINGS = {"pcm_s16le": ("s16le", 2), "pcm_f32le": ("f32le", 4), "pcm_mulaw": ("mulaw", 1),
             "pcm_alaw": ("alaw", 1)}
RATES = {8000, 16000, 22050, 24000, 44100, 48000}
VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JSON_ERRORS_FROM = "2026-03-01"
VOICE_STRING_FROM = "2026-08-14"


def voice_problem(voice: object, version: str) -> str:
    """Why ``voice`` is not valid for ``version`` (``""`` when it is)."""
    if version >= VOICE_STRING_FROM:
        if isinstance(voice, str) and UUID.fullmatch(voice):
            return ""
        if (isinstance(voice, dict) and voice.get("mode", "id") == "id"
                and UUID.fullmatch(str(voice.get("id", "")))):
            return ""
        return "voice must be a voice id or {id: <voice id>}."
    if (isinstance(voice, dict) and voice.get("mode") == "id"
            and UUID.fullmatch(str(voice.get("id", "")))):
        return ""
    return "voice must be {mode: 'id', id: <voice uuid>}."


def format_problem(fmt: object) -> str:
    """Why ``output_format`` is not valid (``""`` when it is)."""
    if not isinstance(fmt, dict):
        return "output_format is required."
    container, encoding, rate = fmt.get("container"), fmt.get("encoding"), fmt.get(
        "sample_rate")
    if container not in ("raw", "wav", "mp3"):
        return f"Unknown container {container!r}."
    if container == "mp3":
        return "mp3 is not supported by this fake."
    if encoding not in ENCODINGS or rate not in RATES:
        return f"Unsupported encoding/sample_rate {encoding!r}/{rate!r}."
    return ""


class FakeCartesia(FakeSpeechService):
    """The fake; ``await start()`` returns ``http://127.0.0.1:PORT``."""

    def __init__(self, api_key: str = "sk_car_test_0123456789") -> None:
        super().__init__(api_key)
        self.app.router.add_post("/tts/bytes", self._bytes)
        from .cartesia_ws import CartesiaSocketService
        self.sockets = CartesiaSocketService(self)
        self.app.router.add_get("/tts/websocket", self.sockets.handle)

    def audio(self, text: str, encoding: str = "pcm_mulaw", rate: int = 8000) -> bytes:
        """The exact raw audio the fake speaks for ``text``."""
        return self.encode(self.samples(text, rate), ENCODINGS[encoding][0])

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = await request.json() if raw else None
        except ValueError:
            body = None
        rec = self.record(request, body)
        version = request.headers.get("Cartesia-Version", "")

        def fail(status: int, code: str | None, title: str, message: str) -> web.Response:
            rec.status = status
            if version >= JSON_ERRORS_FROM:
                return web.json_response({"error_code": code, "title": title,
                                          "message": message,
                                          "request_id": str(uuid.uuid4())}, status=status)
            return web.Response(status=status, text=f"{title}: {message}")

        if not VERSION.fullmatch(version):
            return fail(400, "invalid_version", "Invalid version",
                        "A Cartesia-Version header (YYYY-MM-DD) is required.")
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else request.headers.get("X-API-Key", "")
        if not key:
            return fail(401, "missing_api_key", "Unauthorized", "No API key was provided.")
        if key != self.api_key:
            return fail(401, "invalid_api_key", "Unauthorized", "Invalid API key.")
        if (status := self.injected_failure()) is not None:
            code = {429: "concurrency_limited", 500: "internal_error"}.get(status, "error")
            return fail(status, code, "Injected failure",
                        self.fail_message or f"injected failure {status}")
        if not isinstance(body, dict):
            return fail(400, "invalid_request", "Invalid request", "Body must be JSON.")
        model, text = body.get("model_id"), body.get("transcript")
        if model not in MODELS:
            return fail(400, "invalid_model_id", "Invalid model", f"Unknown model_id {model!r}.")
        if not isinstance(text, str) or not text.strip():
            return fail(400, "invalid_request", "Invalid request", "transcript is required.")
        problem = voice_problem(body.get("voice"), version)
        if problem:
            return fail(400, "invalid_voice", "Invalid voice", problem)
        fmt = body.get("output_format")
        problem = format_problem(fmt)
        if problem:
            return fail(400, "invalid_output_format", "Invalid output format", problem)
        container, encoding, rate = fmt["container"], fmt["encoding"], fmt["sample_rate"]
        audio = self.audio(text, encoding, rate)
        if container == "wav":
            wav_enc = {"pcm_s16le": "linear16", "pcm_mulaw": "mulaw", "pcm_alaw": "alaw"}
            if encoding not in wav_enc:
                return fail(400, "invalid_output_format", "Invalid output format",
                            "wav with pcm_f32le is not supported by this fake.")
            audio = wav_header(wav_enc[encoding], rate) + audio
        return await self.stream(request, rec, audio, rate * ENCODINGS[encoding][1],
                                 "application/octet-stream")


__all__ = ["FakeCartesia"]
