"""A fake OpenAI speech endpoint: ``POST /v1/audio/speech`` (base URL ``…/v1``).

Validates like the service: ``Authorization: Bearer <key>`` (401 with OpenAI's error object,
the key masked), a JSON body with a known ``model``, ``voice``, ``input`` (≤ 4096 characters),
``response_format`` (default ``mp3``), ``speed`` 0.25–4 and ``instructions`` only for the
gpt-4o models. ``pcm`` is raw 24 kHz s16le mono, streamed; the other formats are stand-in
bytes with the right magic (``ID3`` for mp3, ``RIFF`` for wav, …) since nothing decodes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from .tts_common import FakeSpeechService

MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20"}
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
          "verse", "marin", "cedar"}
FORMATS = {"mp3": b"ID3\x04\0\0", "opus": b"OggS", "aac": b"\xff\xf1", "flac": b"fLaC",
           "wav": b"RIFF", "pcm": b""}
PCM_RATE = 24000
MAX_INPUT = 4096


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mask(key: str) -> str:
    """How OpenAI echoes a wrong key: the first and last characters only."""
    return f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "***"


class FakeOpenAISpeech(FakeSpeechService):
    """The fake; ``await start()`` returns ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, api_key: str = "sk-test-openai-0123456789") -> None:
        super().__init__(api_key)
        self.app.router.add_post("/v1/audio/speech", self._speech)

    def base_url(self, root: str) -> str:
        return f"{root}/v1"

    def pcm(self, text: str) -> bytes:
        """The exact 24 kHz s16le audio the fake speaks for ``text``."""
        return self.encode(self.samples(text, PCM_RATE), "s16le")

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = await request.json() if raw else None
        except ValueError:
            body = None
        rec = self.record(request, body)

        def fail(status: int, payload: dict[str, Any]) -> web.Response:
            rec.status = status
            return web.json_response(payload, status=status)

        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return fail(401, error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."))
        if auth[7:] != self.api_key:
            return fail(401, error_body(
                f"Incorrect API key provided: {mask(auth[7:])}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))
        if (status := self.injected_failure()) is not None:
            kind = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
            return fail(status, error_body(self.fail_message or f"injected failure {status}",
                                           type_=kind.get(status, "invalid_request_error")))
        if not isinstance(body, dict):
            return fail(400, error_body("We could not parse the JSON body of your request.",
                                        code="invalid_json"))
        for name in ("model", "input", "voice"):
            if name not in body:
                return fail(400, error_body(f"Missing required parameter: '{name}'.",
                                            param=name, code="missing_required_parameter"))
        model, text, voice = body["model"], body["input"], body["voice"]
        if model not in MODELS:
            return fail(404, error_body(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found"))
        if not isinstance(text, str) or not text:
            return fail(400, error_body("Invalid 'input': empty string.", param="input",
                                        code="empty_string"))
        if len(text) > MAX_INPUT:
            return fail(400, error_body(
                f"Invalid 'input': string too long. Expected a string with maximum length "
                f"{MAX_INPUT}, but got a string with length {len(text)} instead.",
                param="input", code="string_above_max_length"))
        if voice not in VOICES:
            return fail(400, error_body(f"Invalid value for 'voice': {voice!r}.",
                                        param="voice", code="invalid_value"))
        fmt = body.get("response_format", "mp3")
        if fmt not in FORMATS:
            return fail(400, error_body(f"Invalid value for 'response_format': {fmt!r}.",
                                        param="response_format", code="invalid_value"))
        speed = body.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            return fail(400, error_body("Invalid 'speed': must be between 0.25 and 4.0.",
                                        param="speed", code="invalid_value"))
        if "instructions" in body and not model.startswith("gpt-4o"):
            return fail(400, error_body("Instructions are not supported for this model.",
                                        param="instructions", code="unsupported_parameter"))
        pcm = self.pcm(text)
        if fmt != "pcm":    # stand-in bytes: only their presence matters to a test
            pcm = FORMATS[fmt] + np.frombuffer(pcm, "<i2")[::8].tobytes()
        return await self.stream(request, rec, pcm, PCM_RATE * 2,
                                 "audio/pcm" if fmt == "pcm" else f"audio/{fmt}")


__all__ = ["FakeOpenAISpeech"]
