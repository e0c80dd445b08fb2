"""Text-to-speech providers and their factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnknownProviderError
from .base import SAMPLE_RATE, TTS, SpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

PROVIDERS = ("espeak",)


def create_tts(cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> TTS:
    """The TTS provider ``cfg.provider`` names; :class:`UnknownProviderError` if not built in."""
    if cfg.provider == "espeak":
        from .espeak import EspeakTTS
        return EspeakTTS(cfg, agent)
    raise UnknownProviderError("tts", cfg.provider, PROVIDERS)


__all__ = ["PROVIDERS", "SAMPLE_RATE", "SpeechStream", "TTS", "create_tts"]
