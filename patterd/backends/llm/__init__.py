"""Language-model (agent) providers and their factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnknownProviderError
from .base import (END_CALL, LLM, SEND_DTMF, TOOL_NAMES, TRANSFER_CALL, LLMEvent, Message,
                   TextChunk, ToolCall)

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

PROVIDERS = ("rules", "webhook", "openai", "anthropic")


def create_llm(cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> LLM:
    """The LLM provider ``cfg.provider`` names; :class:`UnknownProviderError` if not built in."""
    if cfg.provider == "rules":
        from .rules import RulesLLM
        return RulesLLM(cfg, agent)
    if cfg.provider == "webhook":
        from .webhook import WebhookLLM
        return WebhookLLM(cfg, agent)
    if cfg.provider == "openai":
        from .openai import OpenAILLM
        return OpenAILLM(cfg, agent)
    if cfg.provider == "anthropic":
        from .anthropic import AnthropicLLM
        return AnthropicLLM(cfg, agent)
    raise UnknownProviderError("llm", cfg.provider, PROVIDERS)


__all__ = ["END_CALL", "LLM", "LLMEvent", "Message", "PROVIDERS", "SEND_DTMF", "TOOL_NAMES",
           "TRANSFER_CALL", "TextChunk", "ToolCall", "create_llm"]
