"""OpenAI text-to-speech (``POST {base_url}/audio/speech``), streamed.

OpenAI has no 8 kHz or G.711 output: ``response_format: "pcm"`` is raw 24 kHz s16le mono. Each
stream resamples it to 8 kHz with its own :class:`~patterd.audio.resample.Resampler` (an
anti-alias filter whose state is kept across chunks, flushed at the end), so this provider only
offers ``"PCM16"``; the session encodes G.711 itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ...audio.resample import Resampler
from .base import PCM16, SAMPLE_RATE, SpeechStream
from .http_stream import CloudTTS, EmptySpeechStream, HttpSpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICE = "alloy"
PCM_RATE = 24000
"""Sample rate of OpenAI's ``pcm`` response format."""


class OpenAITTS(CloudTTS):
    """OpenAI speech: ``model`` (default ``gpt-4o-mini-tts``), ``voice`` (default ``alloy``),
    Bearer auth; any OpenAI-compatible server with ``/audio/speech`` works via ``base_url``."""

    name = "openai"
    output_encodings = frozenset({PCM16})

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.model = cfg.model or DEFAULT_MODEL
        self.voice = cfg.voice or DEFAULT_VOICE
        self._headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as s16le 8 kHz, resampled from OpenAI's 24 kHz PCM as it streams."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        resampler = Resampler(PCM_RATE, SAMPLE_RATE)
        body = {"model": self.model, "input": text, "voice": self.voice,
                "response_format": "pcm"}
        return HttpSpeechStream(self, f"{self.base_url}/audio/speech", json=body,
                                encoding=PCM16, headers=self._headers,
                                transform=resampler.process, finish=resampler.flush)

    def parse_error(self, status: int, body: bytes) -> str:
        """``{"error": {"message", "type", "param", "code"}}``."""
        try:
            err = json.loads(body)["error"]
            message = str(err.get("message") or err.get("type") or "")
            code = err.get("code") or err.get("type")
            if message:
                return f"{message} ({code})" if code else message
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return super().parse_error(status, body)


__all__ = ["OpenAITTS"]
