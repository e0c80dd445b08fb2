"""The ``anthropic`` LLM provider against a fake Anthropic Messages API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import MappingProxyType
from typing import Any

import pytest

from patterd.backends.errors import BackendError
from patterd.backends.llm import create_llm
from patterd.backends.llm.anthropic import CALL_STARTED, AnthropicLLM, to_anthropic
from patterd.backends.llm.base import (BUILTIN_TOOLS, Message, TextChunk, TokenUsage, ToolCall,
                                       ToolSpec)
from patterd.config.model import BackendConfig
from tests.support.fakes.anthropic_messages import FakeAnthropicMessages, Invalid
from tests.support.fakes.openai_chat import Reply, ToolUse

KEY = "sk-ant-test-fake-key-0123456789"
SYSTEM = Message("system", "You are a phone agent.")
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropicMessages]:
    f = FakeAnthropicMessages(KEY)
    f.url = await f.start()  # type: ignore[attr-defined]
    yield f
    await f.stop()


def provider(base_url: str, key: str = KEY, **kw: Any) -> AnthropicLLM:
    options = kw.pop("options", {})
    return AnthropicLLM(BackendConfig("anthropic", api_key=key, base_url=base_url,
                                      options=MappingProxyType(options), **kw))


@pytest.fixture
async def llm(fake: FakeAnthropicMessages) -> AsyncIterator[AnthropicLLM]:
    p = provider(fake.url)  # type: ignore[attr-defined]
    yield p
    await p.close()


async def collect(gen: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in gen]


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextChunk)]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


# ------------------------------------------------------------------------------- streaming

async def test_text_streamed_in_order_then_one_usage(fake: FakeAnthropicMessages,
                                                     llm: AnthropicLLM) -> None:
    fake.replies.append(Reply(["Hel", "lo", " there", ",", " how can I help?"],
                              input_tokens=21, output_tokens=5))
    events = await collect(llm.respond([SYSTEM], "hi"))
    assert texts(events) == ["Hel", "lo", " there", ",", " how can I help?"]
    assert events[-1] == TokenUsage(21, 5, 0)
    assert sum(isinstance(e, TokenUsage) for e in events) == 1
    body = fake.last.body
    assert body == {"model": "claude-haiku-4-5", "max_tokens": 1024, "stream": True,
                    "system": [{"type": "text", "text": "You are a phone agent.",
                                "cache_control": EPHEMERAL}],
                    "messages": [user("hi")]}     # no history yet: nothing else to mark
    headers = fake.last.headers
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert fake.last.path == "/v1/messages" and fake.last.completed
    assert b"event: ping" in b"".join(fake.last.events)      # pings were sent and ignored


async def test_first_text_arrives_while_the_stream_is_still_open(
        fake: FakeAnthropicMessages, llm: AnthropicLLM) -> None:
    # message_start, content_block_start, ping, first delta — then the fake holds
    fake.replies.append(Reply(["One", " two", " three."], hold_after=4))
    gen = llm.respond([SYSTEM], "count")
    first = await asyncio.wait_for(gen.__anext__(), 2)
    assert first == TextChunk("One") and not fake.last.completed
    await gen.aclose()


async def test_tool_use_json_split_to_single_bytes(fake: FakeAnthropicMessages,
                                                   llm: AnthropicLLM) -> None:
    fake.chunk_size = 1
    call = ToolUse("transfer_call", {"target": "sales", "note": "héllo \"quoted\" 👋"})
    fake.replies.append(Reply("Transferring you now.", tool_calls=[call], arg_piece=2))
    events = await collect(llm.respond([SYSTEM], "sales please", tools=BUILTIN_TOOLS))
    assert "".join(texts(events)) == "Transferring you now."
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("transfer_call", {"target": "sales", "note": "héllo \"quoted\" 👋"}, call.id)]
    assert call.id.startswith("toolu_")
    kinds = [type(e).__name__ for e in events]
    assert kinds[-2:] == ["ToolCall", "TokenUsage"]
    tools = fake.last.body["tools"]
    assert tools[0] == {"name": "transfer_call", "description": BUILTIN_TOOLS[0].description,
                        "input_schema": dict(BUILTIN_TOOLS[0].parameters)}
    assert [t["name"] for t in tools] == ["transfer_call", "end_call", "send_dtmf"]


async def test_two_tool_calls_and_empty_input(fake: FakeAnthropicMessages,
                                              llm: AnthropicLLM) -> None:
    a = ToolUse("send_dtmf", {"digits": "1234#"})
    b = ToolUse("end_call", {})
    fake.replies.append(Reply(tool_calls=[a, b], arg_piece=1))
    events = await collect(llm.respond([SYSTEM], "press then hang up", tools=BUILTIN_TOOLS))
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("send_dtmf", {"digits": "1234#"}, a.id), ToolCall("end_call", {}, b.id)]


async def test_invalid_json_input_becomes_empty_with_a_warning(
        fake: FakeAnthropicMessages, llm: AnthropicLLM,
        caplog: pytest.LogCaptureFixture) -> None:
    fake.replies.append(Reply(tool_calls=[ToolUse("send_dtmf", '{"digits": "12')],
                              finish_reason="max_tokens"))
    with caplog.at_level(logging.WARNING):
        events = await collect(llm.respond([SYSTEM], "x", tools=BUILTIN_TOOLS))
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)] == [
        ("send_dtmf", {})]
    assert "invalid JSON" in caplog.text


async def test_usage_counts_cache_reads_and_writes(fake: FakeAnthropicMessages,
                                                   llm: AnthropicLLM) -> None:
    fake.replies.append(Reply("ok", input_tokens=12, output_tokens=9, cached_tokens=2048,
                              cache_creation_tokens=300))
    events = await collect(llm.respond([SYSTEM], "x"))
    # input = uncached + cache reads + cache writes; cached = the reads; output from the
    # last (cumulative) message_delta, not message_start's placeholder 1
    assert [e for e in events if isinstance(e, TokenUsage)] == [
        TokenUsage(2360, 9, 2048, cache_write_tokens=300)]


async def test_history_with_tool_rounds_is_converted(fake: FakeAnthropicMessages,
                                                     llm: AnthropicLLM) -> None:
    history = [
        SYSTEM,
        Message("assistant", "Thanks for calling."),
        Message("user", "Where is my order A-17?"),
        Message("user", "And press 9 please."),                 # two user turns in a row
        Message("assistant", "Let me check.", tool_calls=(
            ToolCall("lookup_order", MappingProxyType({"order": "A-17"}), "toolu_1"),
            ToolCall("send_dtmf", {"digits": "9"}, "call.2:x"))),   # an id from elsewhere
        Message("tool", '{"status": "shipped"}', tool_call_id="toolu_1", name="lookup_order"),
        Message("tool", "", tool_call_id="call.2:x", name="send_dtmf"),
        Message("assistant", "  "),                             # whitespace-only: left out
        Message("system", "Be brief."),
    ]
    tools = [ToolSpec("lookup_order", "Look up an order",
                      MappingProxyType({"type": "object", "properties": {
                          "order": {"type": "string"}}}))]
    events = await collect(llm.respond(history, "hello?", tools=tools))
    assert fake.last.status == 200 and texts(events)
    body = fake.last.body
    assert body["system"] == [{"type": "text", "text": "You are a phone agent.\n\nBe brief.",
                               "cache_control": EPHEMERAL}]
    assert body["tools"][-1]["cache_control"] == EPHEMERAL
    assert body["messages"] == [
        user(CALL_STARTED),
        {"role": "assistant", "content": [{"type": "text", "text": "Thanks for calling."}]},
        {"role": "user", "content": [{"type": "text", "text": "Where is my order A-17?"},
                                     {"type": "text", "text": "And press 9 please."}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup_order",
             "input": {"order": "A-17"}},
            {"type": "tool_use", "id": "call_2_x", "name": "send_dtmf",
             "input": {"digits": "9"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": '{"status": "shipped"}'},
            # the history's last block carries the breakpoint, the new turn's text does not
            {"type": "tool_result", "tool_use_id": "call_2_x", "cache_control": EPHEMERAL},
            {"type": "text", "text": "hello?"}]}]


def test_tool_results_open_the_user_turn() -> None:
    _, messages = to_anthropic([
        Message("user", "hi"),
        Message("assistant", "", tool_calls=(ToolCall("end_call", {}, "t1"),)),
        Message("user", "wait"),                         # the caller spoke mid-round
        Message("tool", "ok", tool_call_id="t1", name="end_call")])
    assert [b["type"] for b in messages[-1]["content"]] == ["tool_result", "text"]


async def test_fake_refuses_a_wrong_conversion(fake: FakeAnthropicMessages,
                                               llm: AnthropicLLM) -> None:
    # what the provider would send if it skipped its conversion rules: refused with the API's
    # 400s (so the conversion test above would fail loudly if the provider regressed)
    wrong = [
        ({"messages": [{"role": "assistant", "content": "Thanks for calling."},
                       {"role": "user", "content": "hi"}]}, "first message must use"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         "roles must alternate"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": [
                           {"type": "tool_use", "id": "t1", "name": "end_call", "input": {}}]},
                       {"role": "user", "content": "hello"}]},
         "`tool_use` ids were found without `tool_result` blocks immediately after: t1"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]},
         "unexpected `tool_use_id`"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
         "non-whitespace"),
        ({"messages": [{"role": "system", "content": "x"}]}, "Input should be 'user'"),
    ]
    for patch, expected in wrong:
        with pytest.raises(Invalid, match=re.escape(expected)):
            fake.validate({"model": "m", "max_tokens": 5, **patch})
    with pytest.raises(Invalid, match="max_tokens: Field required"):
        fake.validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    # and over HTTP: an orphan tool result coming from the provider is a 400
    orphan = [SYSTEM, Message("user", "hi"),
              Message("tool", "x", tool_call_id="toolu_9", name="lookup_order")]
    with pytest.raises(BackendError) as err:
        await collect(llm.respond(orphan))
    assert err.value.status == 400 and not err.value.retryable
    assert "invalid_request_error" in err.value.message and "toolu_9" in err.value.message


async def test_options(fake: FakeAnthropicMessages) -> None:
    p = provider(fake.url, model="claude-sonnet-4-6",  # type: ignore[attr-defined]
                 options={"temperature": 0.2, "max_tokens": 300})
    try:
        await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    body = fake.last.body
    assert (body["model"], body["max_tokens"], body["temperature"]) == (
        "claude-sonnet-4-6", 300, 0.2)


async def test_missing_version_header_is_refused(fake: FakeAnthropicMessages,
                                                 llm: AnthropicLLM) -> None:
    del llm._headers["anthropic-version"]
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert err.value.status == 400 and "anthropic-version" in err.value.message


def test_factory() -> None:
    p = create_llm(BackendConfig("anthropic", api_key="k"))
    assert isinstance(p, AnthropicLLM) and p.name == "anthropic"
    assert p.url == "https://api.anthropic.com/v1/messages"


# ------------------------------------------------------------------------------- failures

async def test_wrong_key_is_a_401_without_the_key(fake: FakeAnthropicMessages) -> None:
    wrong = "sk-ant-wrong-key-abcdefghijklmnop"
    p = provider(fake.url, key=wrong)  # type: ignore[attr-defined]
    try:
        with pytest.raises(BackendError) as err:
            await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    assert err.value.status == 401 and not err.value.retryable
    assert err.value.message == "authentication_error: invalid x-api-key"
    assert wrong not in str(err.value)


async def test_a_key_echoed_by_the_server_is_redacted(fake: FakeAnthropicMessages,
                                                      llm: AnthropicLLM) -> None:
    fake.replies.append(Reply(status=403, error_message=f"key {KEY} may not use this model"))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert KEY not in str(err.value) and "***" in err.value.message


@pytest.mark.parametrize("status,kind,retryable", [
    (429, "rate_limit_error", True), (500, "api_error", True), (529, "overloaded_error", True),
    (400, "invalid_request_error", False), (404, "not_found_error", False)])
async def test_http_errors(fake: FakeAnthropicMessages, llm: AnthropicLLM, status: int,
                           kind: str, retryable: bool) -> None:
    fake.replies.append(Reply(status=status))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert err.value.status == status and err.value.retryable is retryable
    assert err.value.message.startswith(f"{kind}: ")
    assert fake.last.error["error"]["message"] in err.value.message


@pytest.mark.parametrize("kind,retryable", [("overloaded_error", True),
                                            ("invalid_request_error", False)])
async def test_mid_stream_error_event(fake: FakeAnthropicMessages, llm: AnthropicLLM,
                                      kind: str, retryable: bool) -> None:
    fake.replies.append(Reply("Some words before it fails.", error_after=5, error_type=kind))
    got: list[Any] = []
    with pytest.raises(BackendError) as err:
        async for event in llm.respond([SYSTEM], "hi"):
            got.append(event)
    assert texts(got) == ["Some", " words"]   # message_start, block start, ping, 2 deltas
    assert err.value.retryable is retryable and kind in err.value.message
    assert err.value.status is None           # the HTTP status was 200


async def test_dropped_connection(fake: FakeAnthropicMessages, llm: AnthropicLLM) -> None:
    fake.replies.append(Reply("a b c d e f", drop_after=5))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert err.value.retryable


async def test_stream_without_message_stop_is_an_error(fake: FakeAnthropicMessages,
                                                       llm: AnthropicLLM) -> None:
    # the body ends cleanly but before message_stop: the answer is incomplete
    fake.replies.append(Reply("cut short", end_after=5))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert "message_stop" in err.value.message and err.value.retryable


@pytest.mark.parametrize("knob", ["delay_headers", "stall_first"])
async def test_first_event_timeout(fake: FakeAnthropicMessages, knob: str) -> None:
    fake.replies.append(Reply("late", **{knob: 10.0}))
    p = provider(fake.url, timeout=0.3)  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with pytest.raises(BackendError) as err:
            await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    assert err.value.retryable and 0.25 < loop.time() - began < 2.0
    await asyncio.wait_for(fake.last.disconnected.wait(), 2)


async def test_idle_gap_timeout(fake: FakeAnthropicMessages, llm: AnthropicLLM) -> None:
    llm.token_timeout = 0.3
    fake.replies.append(Reply("first then silence", stall_after=5, stall_seconds=10))
    got: list[Any] = []
    with pytest.raises(BackendError) as err:
        async for event in llm.respond([SYSTEM], "hi"):
            got.append(event)
    assert texts(got) == ["first", " then"] and err.value.retryable
    assert "stalled" in err.value.message


@pytest.mark.parametrize("how", ["cancel", "aclose"])
async def test_cancelling_closes_the_connection_at_once(fake: FakeAnthropicMessages,
                                                        llm: AnthropicLLM, how: str) -> None:
    fake.replies.append(Reply("Talking and talking", hold_after=5))
    got: list[Any] = []
    first = asyncio.Event()
    gen = llm.respond([SYSTEM], "hi")

    async def consume() -> None:
        async for event in gen:
            got.append(event)
            first.set()

    if how == "cancel":
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        got.append(await gen.__anext__())
        await gen.aclose()
    await asyncio.wait_for(fake.last.disconnected.wait(), 1.0)
    assert got[0] == TextChunk("Talking") and not fake.last.completed
    fake.replies.append(Reply("again"))
    assert texts(await collect(llm.respond([SYSTEM], "hi"))) == ["again"]


# ------------------------------------------------------------------------------- measurements

class ThreadedFake:
    """The fake on its own event loop thread, so client-side timings are the client's alone."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> tuple[FakeAnthropicMessages, str]:
        self.thread.start()

        async def make() -> tuple[FakeAnthropicMessages, str]:
            f = FakeAnthropicMessages(KEY)
            return f, await f.start()

        self.fake, url = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return self.fake, url

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_fake() -> Iterator[tuple[FakeAnthropicMessages, str]]:
    with ThreadedFake() as pair:
        yield pair


async def test_measure_first_byte_to_first_text_and_cpu_per_chunk(
        threaded_fake: tuple[FakeAnthropicMessages, str]) -> None:
    fake, url = threaded_fake
    p = provider(url)
    try:
        gaps = []
        for _ in range(200):
            fake.replies.append(Reply(["Hello", " there."]))
            gen = p.respond([SYSTEM], "hi")
            async for event in gen:
                if isinstance(event, TextChunk):
                    gaps.append(time.perf_counter() - fake.last.first_byte_at)  # type: ignore
                    break
            await gen.aclose()
        median_ms = statistics.median(gaps) * 1000
        fake.replies.append(Reply([f"w{i} " for i in range(1000)]))
        cpu = time.thread_time()
        events = await collect(p.respond([SYSTEM], "long"))
        cpu = time.thread_time() - cpu
    finally:
        await p.close()
    assert len(texts(events)) == 1000
    print(f"\nanthropic: first byte → first TextChunk median {median_ms:.2f} ms over 200 "
          f"requests; client CPU {cpu * 1000:.1f} ms per 1,000 streamed chunks")
    assert median_ms < 50 and cpu < 1.0
