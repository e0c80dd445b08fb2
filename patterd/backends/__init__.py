"""Backends: speech-to-text, language model (the agent) and text-to-speech.

Each layer has one small interface (``stt/base.py``, ``llm/base.py``, ``tts/base.py``), one file
per provider and a factory that picks the provider by ``BackendConfig.provider``. The offline
defaults need nothing from the network: ``pocketsphinx`` (STT), ``rules`` (LLM), ``espeak`` (TTS).
Providers are imported only when created, so unused engines cost nothing.
"""

from __future__ import annotations

from .errors import UnknownProviderError
from .llm import LLM, LLMEvent, Message, TextChunk, ToolCall, create_llm
from .stt import STT, STTStream, Transcript, create_stt
from .tts import TTS, SpeechStream, create_tts

__all__ = ["LLM", "LLMEvent", "Message", "STT", "STTStream", "SpeechStream", "TTS", "TextChunk",
           "ToolCall", "Transcript", "UnknownProviderError", "create_llm", "create_stt",
           "create_tts"]
