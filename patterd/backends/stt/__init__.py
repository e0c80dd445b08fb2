"""Speech-to-text providers and their factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnknownProviderError
from .base import SAMPLE_RATE, STT, STTStream, Transcript

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

PROVIDERS = ("pocketsphinx", "deepgram", "openai")


def create_stt(cfg: "BackendConfig", agent: "AgentConfig",
               llm: "BackendConfig | None" = None) -> STT:
    """The STT provider ``cfg.provider`` names.

    ``llm`` is the ``llm:`` section: the offline recogniser takes its vocabulary from its rules
    (and the agent's messages). Raises :class:`UnknownProviderError` for providers not built in.
    """
    if cfg.provider == "pocketsphinx":
        from .pocketsphinx import PocketsphinxSTT
        return PocketsphinxSTT(cfg, agent, llm)
    if cfg.provider == "deepgram":
        from .deepgram import DeepgramSTT
        return DeepgramSTT(cfg, agent, llm)
    if cfg.provider == "openai":
        from .openai import OpenAISTT
        return OpenAISTT(cfg, agent, llm)
    raise UnknownProviderError("stt", cfg.provider, PROVIDERS)


__all__ = ["PROVIDERS", "SAMPLE_RATE", "STT", "STTStream", "Transcript", "create_stt"]
