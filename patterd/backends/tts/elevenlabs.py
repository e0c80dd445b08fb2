"""ElevenLabs text-to-speech: the input-streaming WebSocket (default) or streaming HTTP.

ElevenLabs writes telephone audio itself (``output_format=ulaw_8000``/``alaw_8000``, or
``pcm_8000`` s16le), so G.711 goes to the carrier untouched.

- ``transport: websocket`` (default) — ``wss://…/v1/text-to-speech/{voice}/stream-input``, one
  socket per sentence, its text sent as the LLM writes it (:mod:`.elevenlabs_ws`); when the
  socket fails, the failover chain speaks the sentence over HTTP before trying the next
  provider.
- ``transport: http`` — ``POST {base_url}/v1/text-to-speech/{voice}/stream?output_format=…``
  with ``xi-api-key``; the body is the audio, streamed (see :mod:`.http_stream`); each
  sentence is sent once it is complete.

Either way, audio that is not the raw format asked for (a WAV or MP3 file, text) is a failure
before any of it is played (:mod:`.audio_check`), and so is a socket that ends without audio.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .base import PCM16, LiveSpeech, SpeechStream
from .elevenlabs_ws import CLOSE_WAIT, DEFAULT_SCHEDULE, ElevenLabsSocket  # noqa: F401
from .http_stream import CloudTTS, EmptySpeechStream, HttpSpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"
DEFAULT_MODEL = "eleven_flash_v2_5"
OUTPUT_FORMATS = {PCM16: "pcm_8000", "PCMU": "ulaw_8000", "PCMA": "alaw_8000"}


class ElevenLabsTTS(CloudTTS):
    """ElevenLabs: ``voice`` (a voice id, default Rachel), ``model`` (default
    ``eleven_flash_v2_5``), options ``transport`` (``websocket``, the default, or ``http``),
    ``language`` (an ISO 639-1 ``language_code``, for the models that take one) and
    ``chunk_length_schedule`` (the socket's generation schedule, default 50, 160, 250, 290
    characters)."""

    name = "elevenlabs"
    output_encodings = frozenset(OUTPUT_FORMATS)

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.voice = cfg.voice or DEFAULT_VOICE
        self.model = cfg.model or DEFAULT_MODEL
        self.language = str(cfg.options.get("language") or "")
        self.transport = str(cfg.options.get("transport") or "websocket").lower()
        if self.transport not in ("http", "websocket"):
            raise ValueError(f"tts provider 'elevenlabs': transport must be http or websocket, "
                             f"got {self.transport!r}")
        schedule = cfg.options.get("chunk_length_schedule") or DEFAULT_SCHEDULE
        self.chunk_schedule = tuple(min(500, max(50, int(n))) for n in schedule)
        self._headers = {"xi-api-key": cfg.api_key} if cfg.api_key else {}
        base = self.base_url
        self.ws_base = ("wss://" + base[8:] if base.startswith("https://") else
                        "ws://" + base[7:] if base.startswith("http://") else base)

    @property
    def streams_text(self) -> bool:  # type: ignore[override]
        """Over the WebSocket, a sentence is sent as it is written."""
        return self.transport == "websocket"

    @property
    def sentence_over_socket(self) -> bool:
        """A whole sentence goes over the socket too (HTTP is its fallback)."""
        return self.transport == "websocket"

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as 8 kHz audio in ``encoding``, over the configured transport."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        if self.transport == "websocket":
            socket = ElevenLabsSocket(self, encoding)
            socket.feed(text)
            return socket
        return self.synthesize_http(text, encoding)

    def synthesize_http(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` over HTTP, whatever the transport (the socket's fallback)."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        body: dict[str, Any] = {"text": text, "model_id": self.model}
        if self.language:
            body["language_code"] = self.language
        return HttpSpeechStream(
            self, f"{self.base_url}/v1/text-to-speech/{self.voice}/stream", json=body,
            encoding=encoding, headers=self._headers,
            params={"output_format": OUTPUT_FORMATS[encoding]})

    def synthesize_live(self, encoding: str = PCM16) -> LiveSpeech:
        """A sentence fed as it is written, over a socket that connects at once."""
        self.check_encoding(encoding)
        if self.transport != "websocket":
            return super().synthesize_live(encoding)
        socket = ElevenLabsSocket(self, encoding)
        socket.start()
        return socket

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


__all__ = ["ElevenLabsTTS"]
