"""Prompt caching of the ``anthropic`` LLM provider, against the fake Messages API's simulated
cache: where the breakpoints go, what a conversation's turns read back, and what it costs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest

from patterd.backends.llm.anthropic import AnthropicLLM
from patterd.backends.llm.base import BUILTIN_TOOLS, Message, TokenUsage, ToolCall, ToolSpec
from patterd.call.context import Meter
from patterd.config.model import BackendConfig
from patterd.ops.cost import breakdown
from patterd.ops.pricing import merge_pricing
from tests.support.fakes.anthropic_messages import (FakeAnthropicMessages, Invalid,
                                                    min_cacheable_tokens, prefix_blocks)
from tests.support.fakes.openai_chat import Reply

from tests.unit.test_llm_anthropic import KEY, fake  # noqa: E402,F401  (the fake server fixture)
EPHEMERAL = {"type": "ephemeral"}
# ~6,000 tokens: past claude-haiku-4-5's 4,096-token minimum on its own
LONG_SYSTEM = Message("system", "You are the receptionist of Example Company. " + " ".join(
    f"Policy {i}: answer questions about opening hours, orders and returns politely."
    for i in range(300)))
USER_TOOL = ToolSpec("lookup_order", "Look up an order", MappingProxyType(
    {"type": "object", "properties": {"order": {"type": "string"}}}))


@pytest.fixture
async def llm(fake: FakeAnthropicMessages) -> AsyncIterator[AnthropicLLM]:
    p = AnthropicLLM(BackendConfig("anthropic", api_key=KEY,
                                   base_url=fake.url))  # type: ignore[attr-defined]
    yield p
    await p.close()


async def usage_of(llm: AnthropicLLM, history: list[Message], text: str | None,
                   **kw: Any) -> TokenUsage:
    used = [e async for e in llm.respond(history, text, **kw) if isinstance(e, TokenUsage)]
    assert len(used) == 1
    return used[0]


def marked(body: dict[str, Any]) -> list[str]:
    """Where the request's cache breakpoints are, in prefix order."""
    return [where for where, _, block in prefix_blocks(body) if "cache_control" in block]


async def test_each_turn_reads_the_previous_turns_prefix_and_is_priced_so(
        fake: FakeAnthropicMessages, llm: AnthropicLLM) -> None:
    assert min_cacheable_tokens(llm.model) == 4096 and fake.cache_min_tokens is None
    tools = BUILTIN_TOOLS + (USER_TOOL,)
    history = [LONG_SYSTEM]
    used = []
    for caller, agent in [("hi", "Hello, how can I help?"), ("your hours?", "Nine to five."),
                          ("thanks", "You're welcome.")]:
        fake.replies.append(Reply(agent, output_tokens=6))
        used.append(await usage_of(llm, history, caller, tools=tools))
        assert fake.last.status == 200
        history += [Message("user", caller), Message("assistant", agent)]
    first, second, third = used
    # turn 1: nothing to read; tools + system written (the history breakpoint has no block yet)
    assert first.cached_tokens == 0 and first.cache_write_tokens > 4096
    assert marked(fake.bodies[0]) == ["tools.3", "system.0"]
    # turn 2 reads exactly what turn 1 wrote and writes the first exchange on top of it
    assert second.cached_tokens == first.cache_write_tokens
    assert 0 < second.cache_write_tokens < 100
    assert marked(fake.bodies[1]) == ["tools.3", "system.0", "messages.1.content.0"]
    # turn 3 reads turn 2's whole prefix: the breakpoint moved with the history
    assert third.cached_tokens == second.cached_tokens + second.cache_write_tokens
    assert marked(fake.bodies[2]) == ["tools.3", "system.0", "messages.3.content.0"]
    for u in used:      # what is neither read nor written is the new turn: a few tokens
        assert 0 < u.input_tokens - u.cached_tokens - u.cache_write_tokens < 30
        assert u.output_tokens == 6
    # the call's cost: writes at 1.25 ×, reads at 0.1 × the input rate (Sonnet's list prices)
    meter = Meter()
    for u in used:
        meter.tokens(u, "anthropic")
    problems: list[str] = []
    pricing = merge_pricing({"llm": {"anthropic": {
        "input_per_million": 3.0, "output_per_million": 15.0, "cached_input_per_million": 0.30,
        "cache_write_input_per_million": 3.75}}}, "pricing", problems)
    assert problems == []
    cost = breakdown(pricing, carrier="twilio", direction="inbound", seconds=0, stt="deepgram",
                     llm="anthropic", tts="elevenlabs", usage=meter.usage)
    reads = sum(u.cached_tokens for u in used)
    writes = sum(u.cache_write_tokens for u in used)
    fresh = sum(u.input_tokens for u in used) - reads - writes
    assert meter.usage.llm_cache_write_tokens == writes
    assert cost["llm"] == pytest.approx(round(
        (fresh * 3.0 + reads * 0.30 + writes * 3.75 + 18 * 15.0) / 1e6, 6))
    # against no caching at all (every turn's whole prompt at the input rate) it saves money
    uncached = (sum(u.input_tokens for u in used) * 3.0 + 18 * 15.0) / 1e6
    assert cost["llm"] < 0.7 * uncached


@pytest.mark.parametrize("text,dtmf,new_block", [
    ("and my order?", None, True),              # the caller's new words stay unmarked
    (None, "5", True),                          # a keypad turn is a new turn too
    ("   ", None, False),                       # a blank utterance adds no block
    (None, None, False)])                       # a tool round: its results end the history
async def test_breakpoints_stay_at_three_with_tools_and_a_long_history(
        fake: FakeAnthropicMessages, llm: AnthropicLLM, text: str | None, dtmf: str | None,
        new_block: bool) -> None:
    history = [LONG_SYSTEM, Message("assistant", "Thanks for calling.")]
    for i in range(30):
        history += [Message("user", f"question {i}"), Message("assistant", "", tool_calls=(
            ToolCall("lookup_order", {"order": str(i)}, f"toolu_{i}"),)),
            Message("tool", '{"status": "shipped"}', tool_call_id=f"toolu_{i}"),
            Message("assistant", f"Order {i} has shipped.")]
    history += [Message("assistant", "", tool_calls=(ToolCall("end_call", {}, "toolu_x"),)),
                Message("tool", "ok", tool_call_id="toolu_x")]
    tools = BUILTIN_TOOLS + (USER_TOOL,)
    await usage_of(llm, history, text, dtmf=dtmf, tools=tools)
    body = fake.last.body
    assert fake.last.status == 200
    where = marked(body)
    blocks = [w for w, _, _ in prefix_blocks(body)]
    assert len(where) == 3 <= 4 and where[:2] == ["tools.3", "system.0"]
    # the last mark: the history's last block (the tool result), before any new turn's text
    assert where[2] == (blocks[-2] if new_block else blocks[-1])
    content = body["messages"][-1]["content"]
    assert content[0]["type"] == "tool_result" and "cache_control" in content[0]
    assert len(content) == 1 + new_block


async def test_a_short_prompt_is_accepted_and_not_cached(fake: FakeAnthropicMessages,
                                                         llm: AnthropicLLM) -> None:
    short = [Message("system", "You are a phone agent.")]
    for _ in range(2):
        fake.replies.append(Reply("Hello.", output_tokens=2))
        used = await usage_of(llm, short, "hi", tools=BUILTIN_TOOLS)
        assert fake.last.status == 200 and len(marked(fake.last.body)) == 2
        assert used.cached_tokens == 0 and used.cache_write_tokens == 0
        assert used.input_tokens > 0
    assert fake.prompt_cache == {}
    # the same prompt past a lower minimum is cached: it was the length that kept it out
    fake.cache_min_tokens = 50
    fake.replies.append(Reply("Hello.", output_tokens=2))
    used = await usage_of(llm, short, "hi", tools=BUILTIN_TOOLS)
    assert used.cache_write_tokens > 50 and fake.prompt_cache


@pytest.mark.parametrize("marks,control,status,message", [
    (5, EPHEMERAL, 400, "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    (4, EPHEMERAL, 200, ""),
    (1, {"type": "persistent"}, 400, "messages.0.content.0.cache_control.type: Input should "
                                     "be 'ephemeral'"),
    (1, {"type": "ephemeral", "ttl": "1d"}, 400, "ttl: Input should be '5m' or '1h'")])
async def test_the_fake_checks_cache_control_over_http(
        fake: FakeAnthropicMessages, marks: int, control: Any, status: int,
        message: str) -> None:
    content = [{"type": "text", "text": f"part {i}", **({"cache_control": control}
                                                        if i < marks else {})}
               for i in range(6)]
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": content}]}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/v1/messages",  # type: ignore[attr-defined]
                                json=body, headers=headers) as resp:
            assert resp.status == status
            answer = await resp.json() if status != 200 else None
            await resp.read()
    if status == 200:
        return
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]
    assert fake.prompt_cache == {}


async def test_the_fake_refuses_a_1h_breakpoint_after_a_5m_one(
        fake: FakeAnthropicMessages) -> None:
    body = {"model": "m", "max_tokens": 5, "system": [
        {"type": "text", "text": "a", "cache_control": EPHEMERAL},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(Invalid, match="must not come after a ttl='5m'"):
        fake.validate(body)
    body["system"].reverse()            # 1h first, then 5m: allowed
    fake.validate(body)
