"""Deepgram Aura text-to-speech over REST (``POST {base_url}/speak``), streamed.

Aura speaks G.711 at 8 kHz itself, so μ-law/A-law go to the carrier untouched. The REST
default is a WAV container: without ``container=none`` the first bytes of the audio would be a
RIFF header (a click on the line), so it is always sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .base import PCM16, SAMPLE_RATE, SpeechStream
from .http_stream import CloudTTS, EmptySpeechStream, HttpSpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_MODEL = "aura-2-thalia-en"
ENCODINGS = {PCM16: "linear16", "PCMU": "mulaw", "PCMA": "alaw"}


class DeepgramTTS(CloudTTS):
    """Deepgram Aura: the voice is the model (``voice`` or ``model``, default
    ``aura-2-thalia-en``); ``Authorization: Token <key>``."""

    name = "deepgram"
    output_encodings = frozenset(ENCODINGS)

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.model = cfg.voice or cfg.model or DEFAULT_MODEL
        self._headers = {"Authorization": f"Token {cfg.api_key}"} if cfg.api_key else {}

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as raw 8 kHz audio in ``encoding`` (no container)."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        params = {"model": self.model, "encoding": ENCODINGS[encoding],
                  "sample_rate": str(SAMPLE_RATE), "container": "none"}
        return HttpSpeechStream(self, f"{self.base_url}/speak", json={"text": text},
                                encoding=encoding, headers=self._headers, params=params)

    def parse_error(self, status: int, body: bytes) -> str:
        """``{"err_code", "err_msg", "request_id"}``."""
        try:
            err = json.loads(body)
            message = str(err.get("err_msg") or err.get("message") or "")
            if message:
                code = err.get("err_code")
                rid = err.get("request_id")
                extra = ", ".join(str(x) for x in (code, rid and f"request {rid}") if x)
                return f"{message} ({extra})" if extra else message
        except (ValueError, TypeError, AttributeError):
            pass
        return super().parse_error(status, body)


__all__ = ["DeepgramTTS"]
