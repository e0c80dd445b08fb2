"""Backend factories pick providers by name; unknown ones fail clearly, naming the provider."""

from __future__ import annotations

import pytest

from patterd.backends import (LLM, STT, TTS, UnknownProviderError, create_llm, create_stt,
                              create_tts)
from patterd.backends.llm.rules import RulesLLM
from patterd.backends.stt.pocketsphinx import PocketsphinxSTT
from patterd.backends.tts.espeak import EspeakTTS
from patterd.config.model import AgentConfig, BackendConfig


def test_offline_defaults() -> None:
    agent = AgentConfig()
    stt = create_stt(BackendConfig("pocketsphinx"), agent)
    llm = create_llm(BackendConfig("rules"), agent)
    tts = create_tts(BackendConfig("espeak"), agent)
    assert isinstance(stt, PocketsphinxSTT) and isinstance(stt, STT)
    assert isinstance(llm, RulesLLM) and isinstance(llm, LLM)
    assert isinstance(tts, EspeakTTS) and isinstance(tts, TTS)
    assert tts.voice == "en-us" and tts.rate == 175


@pytest.mark.parametrize("factory,layer,name", [
    (create_stt, "stt", "whisper-cpp"), (create_llm, "llm", "gemini"),
    (create_tts, "tts", "festival"), (create_llm, "llm", "nonsense")])
def test_unknown_provider(factory, layer: str, name: str) -> None:
    with pytest.raises(NotImplementedError) as err:
        factory(BackendConfig(name), AgentConfig())
    assert isinstance(err.value, UnknownProviderError)
    assert f"{layer} provider {name!r}" in str(err.value)
    assert err.value.provider == name and err.value.layer == layer
