"""Text-to-speech providers and their factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnknownProviderError
from .base import SAMPLE_RATE, TTS, SpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

PROVIDERS = ("espeak", "elevenlabs", "openai", "deepgram", "cartesia")


def create_tts(cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> TTS:
    """The TTS provider ``cfg.provider`` names; :class:`UnknownProviderError` if not built in."""
    if cfg.provider == "espeak":
        from .espeak import EspeakTTS
        return EspeakTTS(cfg, agent)
    if cfg.provider == "elevenlabs":
        from .elevenlabs import ElevenLabsTTS
        return ElevenLabsTTS(cfg, agent)
    if cfg.provider == "openai":
        from .openai import OpenAITTS
        return OpenAITTS(cfg, agent)
    if cfg.provider == "deepgram":
        from .deepgram import DeepgramTTS
        return DeepgramTTS(cfg, agent)
    if cfg.provider == "cartesia":
        from .cartesia import CartesiaTTS
        return CartesiaTTS(cfg, agent)
    raise UnknownProviderError("tts", cfg.provider, PROVIDERS)


__all__ = ["PROVIDERS", "SAMPLE_RATE", "SpeechStream", "TTS", "create_tts"]
