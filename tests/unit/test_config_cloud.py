"""Config of the cloud backends: failover lists, timeouts, user tools, the webhook agent."""

from __future__ import annotations

import pytest

from patterd.config import ConfigError, build_config
from patterd.config.render import render
from tests.conftest import twilio_raw


def problems_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, env=env or {})
    return info.value.problems


def test_failover_chain_with_keys_from_the_environment() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "openai", "model": "gpt-4o-mini", "timeout": 4,
                  "failover": [{"provider": "anthropic", "model": "claude-haiku-4-5"},
                               {"provider": "openai", "base_url": "http://127.0.0.1:8080/v1",
                                "model": "local"}]}
    raw["stt"] = {"provider": "deepgram", "failover": [{"provider": "openai"}]}
    raw["tts"] = {"provider": "elevenlabs", "voice": "v1", "transport": "websocket",
                  "failover": [{"provider": "cartesia", "version": "2025-04-16"}]}
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "DEEPGRAM_API_KEY": "dg",
           "ELEVENLABS_API_KEY": "el", "CARTESIA_API_KEY": "ca"}
    cfg = build_config(raw, env=env)
    assert [(b.provider, b.api_key) for b in cfg.llm.chain] == [
        ("openai", "sk-o"), ("anthropic", "sk-a"), ("openai", "sk-o")]
    assert cfg.llm.timeout == 4 and cfg.llm.failover[1].base_url == "http://127.0.0.1:8080/v1"
    assert cfg.llm.failover[0].base_url == "https://api.anthropic.com"
    assert [b.provider for b in cfg.stt.chain] == ["deepgram", "openai"]
    assert cfg.tts.options["transport"] == "websocket"
    assert cfg.tts.failover[0].options["version"] == "2025-04-16"
    shown = render(cfg)
    assert "sk-o" not in shown and "sk-a" not in shown and "failover:" in shown


def test_failover_problems_name_their_key_paths() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "openai", "api_key": "k",
                  "failover": [{"provider": "anthropc"}, {"provider": "anthropic", "tools": []},
                               {"provider": "anthropic", "api_key": "k", "timeout": "soon"}]}
    problems = problems_of(raw)
    assert any(p.startswith("llm.failover[0].provider: expected one of") and "anthropic" in p
               for p in problems)
    assert any(p.startswith("llm.failover[1].api_key: required for anthropic")
               for p in problems)
    assert any(p.startswith("llm.failover[1].tools: belongs to the llm section itself")
               for p in problems)
    assert any(p.startswith("llm.failover[2].timeout: expected a number") for p in problems)


def test_user_tools_are_read_and_checked() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "openai", "api_key": "k", "max_tool_rounds": 2, "tools": [
        {"name": "order_status", "description": "Look up an order",
         "url": "https://tools.example.com/order", "timeout": 2, "retries": 2,
         "parameters": {"properties": {"order": {"type": "string"}}, "required": ["order"]},
         "secret": "s3cret"},
        {"name": "local", "description": "On my network", "url": "http://10.0.0.5/x",
         "allow_private": True},
    ]}
    cfg = build_config(raw, env={})
    order, local = cfg.llm.tools
    assert (order.name, order.timeout, order.retries, order.allow_private) == (
        "order_status", 2, 2, False)
    assert order.parameters["type"] == "object" and order.parameters["required"] == ["order"]
    assert local.allow_private and cfg.llm.max_tool_rounds == 2
    assert "s3cret" not in render(cfg)

    raw["llm"]["tools"] = [
        {"name": "end_call", "description": "mine", "url": "https://x.example/a"},
        {"name": "bad name!", "url": "ftp://x"},
        {"name": "plain", "description": "d", "url": "http://tools.example.com/a"},
        {"name": "schema", "description": "d", "url": "https://x.example/a",
         "parameters": {"type": "array"}, "retries": 9},
    ]
    problems = problems_of(raw)
    for expected in ("llm.tools[0].name: 'end_call' is already taken",
                     "llm.tools[1].name: expected a function name",
                     "llm.tools[1].description: required",
                     "llm.tools[1].url: expected the https:// URL",
                     "llm.tools[2].url: expected https://",
                     "llm.tools[3].parameters: expected a JSON Schema object",
                     "llm.tools[3].retries: expected at most 5"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_cloud_provider_without_a_key_is_explained() -> None:
    raw = twilio_raw()
    raw["tts"] = {"provider": "deepgram"}
    assert any(p.startswith("tts.api_key: required for deepgram (or set DEEPGRAM_API_KEY")
               for p in problems_of(raw))
    raw["tts"] = {"provider": "elevenlabs", "api_key": "k", "transport": "grpc"}
    assert any(p.startswith("tts.transport: expected http or websocket, got 'grpc'")
               for p in problems_of(raw))


def test_inter_token_timeout_and_reply_cap_per_llm_provider() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "openai", "inter_token_timeout": 2.5, "max_reply_chars": 1500,
                  "failover": [{"provider": "anthropic"},
                               {"provider": "webhook", "url": "https://agent.example/turn",
                                "secret": "s3cret", "max_reply_chars": 800}]}
    cfg = build_config(raw, env={"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"})
    assert [(b.inter_token_timeout, b.max_reply_chars) for b in cfg.llm.chain] == [
        (2.5, 1500), (0.0, 0), (0.0, 800)]
    shown = render(cfg)
    assert "inter_token_timeout: 2.5" in shown and "max_reply_chars: 1500" in shown
    assert "max_reply_chars: 800" in shown


def test_inter_token_timeout_and_reply_cap_are_checked() -> None:
    raw = twilio_raw()
    raw["llm"] = {"provider": "openai", "api_key": "k", "inter_token_timeout": -1,
                  "max_reply_chars": 10**7}
    problems = " ".join(problems_of(raw))
    assert "llm.inter_token_timeout" in problems and "llm.max_reply_chars" in problems
    raw["llm"] = {"provider": "webhook", "url": "https://agent.example/turn", "secret": "s",
                  "inter_token_timeout": 3}
    assert any("llm.inter_token_timeout" in p for p in problems_of(raw))  # not streamed
    raw["llm"] = {"provider": "rules", "max_reply_chars": 100}
    assert any("llm.max_reply_chars" in p for p in problems_of(raw))
