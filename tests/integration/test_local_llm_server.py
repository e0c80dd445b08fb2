"""The ``openai`` LLM provider against a real OpenAI-compatible server: llama.cpp's server with a
270M-parameter model, on 127.0.0.1 (tests/support/local_llm.py; the ``llm-local`` extra).

The model (Gemma 3 270M, a base model, greedy sampling) says little of sense, but every token,
usage count, tool call and error here is the real server's, not a fake's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from patterd.backends.errors import BackendError
from patterd.backends.llm import create_llm
from patterd.backends.llm.base import (BUILTIN_TOOLS, TRANSFER_CALL, LLMEvent, Message,
                                       TextChunk, TokenUsage, ToolCall)
from patterd.config.model import BackendConfig
from tests.support.local_llm import LocalLLMServer, local_llm_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.llm_server

MAX_TOKENS = 24


def llm_for(server: LocalLLMServer, *, api_key: str | None = None, max_tokens: int = MAX_TOKENS):
    """The provider as the daemon builds it from ``llm: {provider: openai, base_url: ...}``."""
    return create_llm(BackendConfig(
        "openai", api_key=server.api_key if api_key is None else api_key,
        base_url=server.base_url, model=server.model, timeout=30.0,
        options={"max_tokens": max_tokens}))


async def collect(events: AsyncIterator[LLMEvent]) -> list[LLMEvent]:
    return [event async for event in events]


def of(kind: type, events: Sequence[LLMEvent]) -> list:
    return [e for e in events if isinstance(e, kind)]


async def test_reply_streams_as_text_chunks_with_usage(local_llm_server: LocalLLMServer) -> None:
    llm = llm_for(local_llm_server)
    try:
        events = await collect(llm.respond([Message("system", "You are terse.")],
                                           user_text="Say hello."))
    finally:
        await llm.close()

    chunks = of(TextChunk, events)
    assert len(chunks) >= 2, events                      # streamed token by token, not in one go
    assert all(c.text for c in chunks)
    assert "".join(c.text for c in chunks).strip()
    usage = of(TokenUsage, events)
    assert len(usage) == 1 and events[-1] == usage[0]    # one report, after the text
    # the prompt (template + system + user turns) is tens of tokens; the reply is capped
    assert usage[0].input_tokens > 5
    assert 0 < usage[0].output_tokens <= MAX_TOKENS
    assert not of(ToolCall, events)


async def test_model_calls_an_offered_tool(local_llm_server: LocalLLMServer) -> None:
    # One earlier call of the tool in the history shows this small base model the format; the
    # server renders it with the template and parses the model's <tool_call> into tool_calls.
    history = [
        Message("system", "You are a phone assistant. Transfer callers with transfer_call."),
        Message("user", "Transfer me to billing."),
        Message("assistant", "", tool_calls=(
            ToolCall(TRANSFER_CALL, {"target": "billing"}, "call_1"),)),
        Message("tool", "ok", tool_call_id="call_1", name=TRANSFER_CALL),
        Message("assistant", "Transferring you now."),
    ]
    llm = llm_for(local_llm_server, max_tokens=48)
    try:
        events = await collect(llm.respond(history, user_text="Transfer me to sales.",
                                           tools=BUILTIN_TOOLS))
    finally:
        await llm.close()

    calls = of(ToolCall, events)
    assert calls, events
    assert calls[0].name == TRANSFER_CALL
    assert dict(calls[0].arguments) == {"target": "sales"}
    assert calls[0].id                                   # the server's id of the call
    assert of(TokenUsage, events)[0].output_tokens > 0


async def test_wrong_key_is_the_servers_401(local_llm_server: LocalLLMServer) -> None:
    wrong = "sk-not-the-right-key-4242"
    llm = llm_for(local_llm_server, api_key=wrong)
    try:
        with pytest.raises(BackendError) as info:
            await collect(llm.respond([Message("system", "You are terse.")], user_text="Hi."))
    finally:
        await llm.close()

    err = info.value
    assert (err.layer, err.provider, err.status, err.retryable) == ("llm", "openai", 401, False)
    assert "Invalid API Key" in err.message              # llama.cpp's own error body
    assert wrong not in str(err)
