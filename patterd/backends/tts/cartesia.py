"""Cartesia text-to-speech over HTTP (``POST {base_url}/tts/bytes``), streamed.

Cartesia writes raw 8 kHz μ-law/A-law/s16le itself (``container: "raw"``), so G.711 goes to
the carrier untouched. Every request names the API version (``Cartesia-Version``); errors are
JSON from version 2026-03-01 on and may be plain ``Title: Message`` text before.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .base import PCM16, SAMPLE_RATE, SpeechStream
from .http_stream import CloudTTS, EmptySpeechStream, HttpSpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_MODEL = "sonic-2"
DEFAULT_VOICE = "694f9389-aac1-45b6-b726-9d9369183238"
DEFAULT_VERSION = "2025-04-16"
DEFAULT_LANGUAGE = "en"
ENCODINGS = {PCM16: "pcm_s16le", "PCMU": "pcm_mulaw", "PCMA": "pcm_alaw"}


class CartesiaTTS(CloudTTS):
    """Cartesia Sonic: ``model`` (default ``sonic-2``), ``voice`` (a voice id), options
    ``language`` (default ``en``) and ``version`` (the ``Cartesia-Version``, default
    ``2025-04-16``); ``Authorization: Bearer <key>``."""

    name = "cartesia"
    output_encodings = frozenset(ENCODINGS)

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.model = cfg.model or DEFAULT_MODEL
        self.voice = cfg.voice or DEFAULT_VOICE
        self.language = str(cfg.options.get("language") or DEFAULT_LANGUAGE)
        self.version = str(cfg.options.get("version") or DEFAULT_VERSION)
        self._headers = {"Cartesia-Version": self.version}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as raw 8 kHz audio in ``encoding``."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        body = {"model_id": self.model, "transcript": text,
                "voice": {"mode": "id", "id": self.voice}, "language": self.language,
                "output_format": {"container": "raw", "encoding": ENCODINGS[encoding],
                                  "sample_rate": SAMPLE_RATE}}
        return HttpSpeechStream(self, f"{self.base_url}/tts/bytes", json=body,
                                encoding=encoding, headers=self._headers)

    def parse_error(self, status: int, body: bytes) -> str:
        """``{"error_code", "title", "message", "request_id"}`` (or plain text)."""
        try:
            err = json.loads(body)
            message = str(err.get("message") or err.get("title") or err.get("error") or "")
            if message:
                title, code = err.get("title"), err.get("error_code")
                if title and title != message:
                    message = f"{title}: {message}"
                return f"{message} ({code})" if code else message
        except (ValueError, TypeError, AttributeError):
            pass
        return super().parse_error(status, body)


__all__ = ["CartesiaTTS"]
