"""Provider facts as the current official SDKs send them, and the older forms the APIs still
take: Anthropic's API key (``x-api-key``) or bearer token, ElevenLabs' first-message key,
Cartesia's version and voice; and the config keys that choose them."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from patterd.backends.errors import BackendError
from patterd.backends.llm.anthropic import AnthropicLLM
from patterd.backends.llm.base import Message, TextChunk
from patterd.config import ConfigError, build_config
from patterd.config.model import BackendConfig
from patterd.config.render import render
from tests.conftest import twilio_raw
from tests.support.fakes.anthropic_messages import FakeAnthropicMessages
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.openai_chat import Reply


async def answer(llm: AnthropicLLM) -> str:
    return "".join([e.text async for e in llm.respond([Message("system", "Be brief.")], "hi")
                    if isinstance(e, TextChunk)])


async def test_anthropic_api_key_or_bearer_token() -> None:
    fake = FakeAnthropicMessages()
    url = await fake.start()
    try:
        fake.replies += [Reply("By key."), Reply("By token.")]
        by_key = AnthropicLLM(BackendConfig("anthropic", api_key=fake.api_key, base_url=url))
        assert await answer(by_key) == "By key."
        assert fake.requests[0].headers["x-api-key"] == fake.api_key
        assert "Authorization" not in fake.requests[0].headers
        assert fake.requests[0].headers["anthropic-version"] == "2023-06-01"
        by_token = AnthropicLLM(BackendConfig("anthropic", base_url=url,
                                              options={"auth_token": fake.auth_token}))
        assert await answer(by_token) == "By token."
        assert fake.requests[1].headers["Authorization"] == f"Bearer {fake.auth_token}"
        assert "x-api-key" not in fake.requests[1].headers
        wrong = AnthropicLLM(BackendConfig("anthropic", base_url=url,
                                           options={"auth_token": "sk-ant-not-a-token"}))
        with pytest.raises(BackendError) as err:
            await answer(wrong)
        assert err.value.status == 401 and not err.value.retryable
        for llm in (by_key, by_token, wrong):
            await llm.close()
    finally:
        await fake.stop()


@pytest.mark.parametrize("field", ["xi-api-key", "xi_api_key", "authorization"])
async def test_elevenlabs_first_message_key_forms(field: str) -> None:
    """The current SDK's ``InitializeConnection`` serialises ``xi-api-key``; older docs
    wrote ``xi_api_key``; a bearer token goes in ``authorization``."""
    fake = FakeElevenLabs()
    url = await fake.start()
    value = f"Bearer {fake.api_key}" if field == "authorization" else fake.api_key
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{url.replace('http', 'ws')}/v1/text-to-speech/"
                                       "21m00Tcm4TlvDq8ikWAM/stream-input",
                                       params={"model_id": "eleven_flash_v2_5",
                                               "output_format": "ulaw_8000"}) as ws:
                await ws.send_json({"text": " ", field: value})
                await ws.send_json({"text": "Hello there. ", "flush": True})
                await ws.send_json({"text": ""})
                audio = b""
                async with asyncio.timeout(5):
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("audio"):
                            audio += base64.b64decode(data["audio"])
                        assert "error" not in data, data
        assert audio == fake.audio("Hello there.", "ulaw_8000")
    finally:
        await fake.stop()


def test_config_of_the_provider_facts() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "anthropic"}
    raw["tts"] = {"provider": "elevenlabs", "chunk_length_schedule": [60, 120],
                  "failover": [{"provider": "cartesia", "transport": "http",
                                "max_buffer_delay_ms": 500}]}
    env = {"ANTHROPIC_AUTH_TOKEN": "sk-ant-oat-secret", "ELEVENLABS_API_KEY": "el",
           "CARTESIA_API_KEY": "ca"}
    cfg = build_config(raw, env=env)
    assert cfg.llm.api_key == "" and cfg.llm.options["auth_token"] == "sk-ant-oat-secret"
    assert cfg.tts.options["chunk_length_schedule"] == ("60", "120")
    assert cfg.tts.failover[0].options == {"transport": "http", "max_buffer_delay_ms": 500}
    assert "sk-ant-oat-secret" not in render(cfg)
    raw["tts"] = {"provider": "elevenlabs", "chunk_length_schedule": [20],
                  "transport": "grpc"}
    raw["llm"] = {"provider": "openai", "auth_token": "x"}
    with pytest.raises(ConfigError) as info:
        build_config(raw, env={**env, "OPENAI_API_KEY": "sk"})
    problems: list[Any] = info.value.problems
    assert any(p.startswith("tts.chunk_length_schedule:") for p in problems), problems
    assert any(p.startswith("tts.transport:") for p in problems), problems
    assert any("llm.auth_token" in p for p in problems), problems
