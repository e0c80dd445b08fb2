"""OpenAI's ``POST /v1/audio/transcriptions`` on 127.0.0.1.

Like the service (providers.md §4): ``Authorization: Bearer <key>`` (401 ``invalid_api_key``
otherwise, with the key masked in the message as OpenAI does), a ``multipart/form-data`` body
with ``file`` and ``model`` required, ``language`` ISO-639-1, ``response_format`` ``json`` or
``text`` (gpt-4o models) — 400 ``invalid_request_error`` for anything else. The file must be a
well-formed WAV; this fake also insists on what patterd sends (PCM, 8000 Hz, mono, 16-bit) and
refuses audio shorter than 0.1 s (``audio_too_short``). Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

The answer's text comes from ``script`` (in order) or ``recogniser(Received) -> str``.
Knobs: ``fail`` = (status, error dict) for the next requests (``fail_times``), ``delay``
seconds before answering, ``drop`` = close the connection without an answer.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

MODELS = {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"}
FORMATS = {"json", "text", "srt", "verbose_json", "vtt"}

RATE_LIMITED = (429, {"message": "Rate limit reached for gpt-4o-mini-transcribe on requests "
                                 "per min (RPM): Limit 50, Used 50, Requested 1.",
                      "type": "requests", "param": None, "code": "rate_limit_exceeded"})
SERVER_ERROR = (500, {"message": "The server had an error while processing your request. "
                                 "Sorry about that!", "type": "server_error", "param": None,
                      "code": None})


@dataclass
class Received:
    """One accepted request."""

    headers: dict[str, str]
    fields: dict[str, str]
    filename: str
    content_type: str
    wav: bytes
    format: dict[str, int] = field(default_factory=dict)   # audio_format, channels, rate, bits
    pcm: bytes = b""

    @property
    def seconds(self) -> float:
        """Length of the audio."""
        return len(self.pcm) / (self.format["rate"] * self.format["channels"] *
                                self.format["bits"] // 8)


def parse_wav(data: bytes) -> tuple[dict[str, int], bytes]:
    """The ``fmt `` fields and the samples of a RIFF/WAVE file; ValueError if malformed."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    if struct.unpack_from("<I", data, 4)[0] != len(data) - 8:
        raise ValueError("RIFF size does not match the file")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) != size:
            raise ValueError(f"chunk {cid!r} is truncated")
        if cid == b"fmt ":
            af, ch, rate, brate, align, bits = struct.unpack_from("<HHIIHH", body)
            if brate != rate * align or align != ch * bits // 8:
                raise ValueError("inconsistent fmt chunk")
            fmt = {"audio_format": af, "channels": ch, "rate": rate, "bits": bits}
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise ValueError("missing fmt or data chunk")
    return fmt, pcm


class FakeOpenAITranscribe:
    """The fake service. ``await start()`` returns its ``http://127.0.0.1:PORT/v1`` base URL."""

    def __init__(self, api_key: str = "sk-test-key", script: list[str] | tuple[str, ...] = (),
                 *, recogniser: Callable[[Received], str] | None = None) -> None:
        self.api_key = api_key
        self.script = list(script)
        self.recogniser = recogniser
        self.expect = {"audio_format": 1, "rate": 8000, "channels": 1, "bits": 16}
        # -- knobs --
        self.fail: tuple[int, dict[str, Any]] | None = None
        self.fail_times = 1 << 30
        self.delay = 0.0
        self.drop = False
        # -- records --
        self.requests: list[Received] = []
        self.rejected: list[tuple[int, dict[str, Any]]] = []
        self._server: TestServer | None = None

    async def start(self) -> str:
        """Listen on 127.0.0.1 (random port)."""
        app = web.Application(client_max_size=26 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return f"http://127.0.0.1:{self._server.port}/v1"

    async def stop(self) -> None:
        """Stop the server."""
        if self._server is not None:
            await self._server.close()
            self._server = None

    def _error(self, status: int, message: str, type_: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> web.Response:
        err = {"message": message, "type": type_, "param": param, "code": code}
        self.rejected.append((status, err))
        return web.json_response({"error": err}, status=status)

    def _masked(self, key: str) -> str:
        return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "***"

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._error(401, "You didn't provide an API key. You need to provide your "
                                    "API key in an Authorization header using Bearer auth.")
        if auth[7:] != self.api_key:
            return self._error(401, f"Incorrect API key provided: {self._masked(auth[7:])}. "
                                    "You can find your API key at "
                                    "https://platform.openai.com/account/api-keys.",
                               code="invalid_api_key")
        if self.fail is not None and self.fail_times > 0:
            self.fail_times -= 1
            status, err = self.fail
            self.rejected.append((status, err))
            return web.json_response({"error": err}, status=status)
        if not request.content_type.startswith("multipart/form-data"):
            return self._error(400, "Invalid Content-Type header (application/json), expected "
                                    "multipart/form-data.")
        fields: dict[str, str] = {}
        wav, filename, ctype = None, "", ""
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                filename, ctype = part.filename or "", part.headers.get("Content-Type", "")
                wav = bytes(await part.read())
            elif part.name:
                fields[part.name] = await part.text()
        if wav is None:
            return self._error(400, "you must provide a file", param="file")
        model = fields.get("model")
        if not model:
            return self._error(400, "you must provide a model parameter", param="model")
        if model not in MODELS:
            return self._error(400, f"Invalid model {model}.", param="model",
                               code="model_not_found")
        lang = fields.get("language")
        if lang is not None and not (len(lang) == 2 and lang.isalpha() and lang.islower()):
            return self._error(400, f"Invalid language '{lang}'. Language parameter must be "
                                    "specified in ISO-639-1 format.", param="language")
        fmt_name = fields.get("response_format", "json")
        allowed = {"json", "text"} if model.startswith("gpt-4o") else FORMATS
        if fmt_name not in allowed:
            return self._error(400, f"response_format '{fmt_name}' is not compatible with "
                                    f"model '{model}'.", param="response_format")
        try:
            fmt, pcm = parse_wav(wav)
        except ValueError:
            return self._error(400, "Invalid file format. Supported formats: ['flac', 'm4a', "
                                    "'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', "
                                    "'webm']", param="file")
        if fmt != self.expect:
            return self._error(400, f"this fake expects {self.expect}, got {fmt}", param="file")
        rec = Received(dict(request.headers), fields, filename, ctype, wav, fmt, pcm)
        if rec.seconds < 0.1:
            return self._error(400, "Audio file is too short. Minimum audio length is 0.1 "
                                    "seconds.", param="file", code="audio_too_short")
        self.requests.append(rec)
        if self.recogniser is not None:
            text = self.recogniser(rec)
        else:
            text = self.script.pop(0) if self.script else ""
        if fmt_name == "text":
            return web.Response(text=text + "\n")
        if model == "whisper-1":
            usage = {"type": "duration", "seconds": math.ceil(rec.seconds)}
        else:
            tokens = max(1, round(rec.seconds * 10))
            usage = {"type": "tokens", "input_tokens": tokens, "output_tokens": len(text) // 4,
                     "total_tokens": tokens + len(text) // 4}
        return web.json_response({"text": text, "usage": usage})


__all__ = ["FakeOpenAITranscribe", "RATE_LIMITED", "Received", "SERVER_ERROR", "parse_wav"]
