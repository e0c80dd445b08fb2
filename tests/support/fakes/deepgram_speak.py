"""A fake Deepgram Aura REST endpoint: ``POST /v1/speak`` (base URL ``…/v1``).

Validates like the service: ``Authorization: Token <key>`` (401 ``{"err_code",
"err_msg", "request_id"}``), an ``aura-`` model, ``encoding``/``sample_rate``/``container``
combinations, and a JSON ``{"text"}`` of at most 2000 characters. Its defaults are the
service's: ``linear16``, 24000 Hz and **a WAV container** — a client that forgets
``container=none`` gets a RIFF header at the start of its audio.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from .tts_common import FakeSpeechService, wav_header

RATES = {"linear16": {8000, 16000, 24000, 32000, 48000}, "mulaw": {8000, 16000},
         "alaw": {8000, 16000}}
BYTES_PER_SAMPLE = {"linear16": 2, "mulaw": 1, "alaw": 1}
SAMPLE_FORMAT = {"linear16": "s16le", "mulaw": "mulaw", "alaw": "alaw"}
MAX_TEXT = 2000


class FakeDeepgramSpeak(FakeSpeechService):
    """The fake; ``await start()`` returns ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, api_key: str = "dg-test-key-0123456789") -> None:
        super().__init__(api_key)
        self.app.router.add_post("/v1/speak", self._speak)

    def base_url(self, root: str) -> str:
        return f"{root}/v1"

    def audio(self, text: str, encoding: str = "mulaw", rate: int = 8000) -> bytes:
        """The exact raw audio (no container) the fake speaks for ``text``."""
        return self.encode(self.samples(text, rate), SAMPLE_FORMAT[encoding])

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = await request.json() if raw else None
        except ValueError:
            body = None
        rec = self.record(request, body)
        request_id = str(uuid.uuid4())

        def fail(status: int, code: str, message: str) -> web.Response:
            rec.status = status
            payload: dict[str, Any] = {"err_code": code, "err_msg": message,
                                       "request_id": request_id}
            return web.json_response(payload, status=status,
                                     headers={"dg-request-id": request_id})

        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return fail(401, "INVALID_AUTH", "Invalid credentials.")
        if (status := self.injected_failure()) is not None:
            code = {429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR"}.get(status, "ERROR")
            return fail(status, code, self.fail_message or f"injected failure {status}")
        q = request.query
        model = q.get("model", "aura-asteria-en")
        if not model.startswith("aura-"):
            return fail(400, "INVALID_QUERY_PARAMETER",
                        f"No such model/version combination found: {model}")
        encoding = q.get("encoding", "linear16")
        if encoding not in RATES:
            return fail(400, "UNSUPPORTED_AUDIO_FORMAT", f"Unsupported encoding: {encoding}")
        try:
            rate = int(q.get("sample_rate", "24000"))
        except ValueError:
            return fail(400, "INVALID_QUERY_PARAMETER", "sample_rate must be an integer")
        if rate not in RATES[encoding]:
            return fail(400, "UNSUPPORTED_AUDIO_FORMAT",
                        f"Unsupported sample rate {rate} for encoding {encoding}")
        container = q.get("container", "wav")
        if container not in ("wav", "none"):
            return fail(400, "UNSUPPORTED_AUDIO_FORMAT",
                        f"Unsupported container {container} for encoding {encoding}")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return fail(400, "INVALID_INPUT", "The request body must be JSON with a 'text' field.")
        text = body["text"]
        if not text.strip():
            return fail(400, "INVALID_INPUT", "Text must not be empty.")
        if len(text) > MAX_TEXT:
            return fail(413, "PAYLOAD_TOO_LARGE",
                        f"Input text exceeds the maximum of {MAX_TEXT} characters.")
        audio = self.audio(text, encoding, rate)
        if container == "wav":
            audio = wav_header(encoding, rate) + audio
        return await self.stream(
            request, rec, audio, rate * BYTES_PER_SAMPLE[encoding],
            "audio/wav" if container == "wav" else "application/octet-stream",
            headers={"dg-request-id": request_id, "dg-char-count": str(len(text)),
                     "dg-model-name": model})


__all__ = ["FakeDeepgramSpeak"]
