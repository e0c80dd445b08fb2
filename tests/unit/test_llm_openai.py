"""The ``openai`` LLM provider against a fake OpenAI chat-completions API on 127.0.0.1 (and, when
the ``llm-local`` extra is installed, against llama.cpp's real server)."""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import MappingProxyType
from typing import Any

import pytest

from patterd.backends.errors import BackendError
from patterd.backends.llm import create_llm
from patterd.backends.llm.base import (BUILTIN_TOOLS, Message, TextChunk, TokenUsage, ToolCall,
                                       ToolSpec)
from patterd.backends.llm.openai import OpenAILLM, ToolCallAssembler
from patterd.config.model import BackendConfig
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply, ToolUse
from tests.support.local_llm import LocalLLMServer, local_llm_server  # noqa: F401 (fixture)

KEY = "sk-test-fake-openai-key-0123456789"
SYSTEM = Message("system", "You are a phone agent.")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIChat]:
    f = FakeOpenAIChat(KEY)
    f.url = await f.start()  # type: ignore[attr-defined]
    yield f
    await f.stop()


def provider(base_url: str, key: str = KEY, **kw: Any) -> OpenAILLM:
    options = kw.pop("options", {})
    return OpenAILLM(BackendConfig("openai", api_key=key, base_url=base_url,
                                   options=MappingProxyType(options), **kw))


@pytest.fixture
async def llm(fake: FakeOpenAIChat) -> AsyncIterator[OpenAILLM]:
    p = provider(fake.url)  # type: ignore[attr-defined]
    yield p
    await p.close()


async def collect(gen: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in gen]


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextChunk)]


# ------------------------------------------------------------------------------- streaming

async def test_text_streamed_in_order_then_one_usage(fake: FakeOpenAIChat,
                                                     llm: OpenAILLM) -> None:
    fake.replies.append(Reply(["Hel", "lo", " there", ",", " how can I help?"], input_tokens=21,
                              output_tokens=5))
    events = await collect(llm.respond([SYSTEM], "hi"))
    assert texts(events) == ["Hel", "lo", " there", ",", " how can I help?"]
    assert events[-1] == TokenUsage(21, 5, 0)
    assert sum(isinstance(e, TokenUsage) for e in events) == 1
    body = fake.last.body
    assert body["model"] == "gpt-4o-mini" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "You are a phone agent."},
                                {"role": "user", "content": "hi"}]
    assert "tools" not in body and "tool_choice" not in body
    assert fake.last.headers["Authorization"] == f"Bearer {KEY}"
    assert fake.last.path == "/v1/chat/completions" and fake.last.completed


async def test_first_text_arrives_while_the_stream_is_still_open(fake: FakeOpenAIChat,
                                                                 llm: OpenAILLM) -> None:
    # role chunk + first delta written, then the fake holds: no sentence buffering
    fake.replies.append(Reply(["One", " two", " three."], hold_after=2))
    gen = llm.respond([SYSTEM], "count")
    first = await asyncio.wait_for(gen.__anext__(), 2)
    assert first == TextChunk("One") and not fake.last.completed
    await gen.aclose()


async def test_tool_call_fragments_split_to_single_bytes(fake: FakeOpenAIChat,
                                                         llm: OpenAILLM) -> None:
    fake.chunk_size = 1                  # every event is split into 1-byte TCP writes
    call = ToolUse("transfer_call", {"target": "sales", "note": "héllo \"quoted\" 👋"})
    fake.replies.append(Reply("Transferring you now.", tool_calls=[call], arg_piece=2))
    events = await collect(llm.respond([SYSTEM], "sales please", tools=BUILTIN_TOOLS))
    assert "".join(texts(events)) == "Transferring you now."
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls == [ToolCall("transfer_call", {"target": "sales", "note": "héllo \"quoted\" 👋"},
                              call.id)]
    assert call.id.startswith("call_")
    # the tool call comes after the text and before the usage
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ToolCall") > max(i for i, k in enumerate(kinds) if k == "TextChunk")
    assert kinds[-1] == "TokenUsage"
    sent = fake.last.body
    assert sent["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in sent["tools"]] == ["transfer_call", "end_call",
                                                             "send_dtmf"]
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "transfer_call", "description": BUILTIN_TOOLS[0].description,
        "parameters": dict(BUILTIN_TOOLS[0].parameters)}}


async def test_two_interleaved_calls(fake: FakeOpenAIChat, llm: OpenAILLM) -> None:
    a = ToolUse("send_dtmf", {"digits": "1234#"})
    b = ToolUse("lookup_order", {"order": "A-17", "verbose": True})
    fake.replies.append(Reply(tool_calls=[a, b], interleave=True, arg_piece=1))
    events = await collect(llm.respond([SYSTEM], "press and look up", tools=BUILTIN_TOOLS))
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("send_dtmf", {"digits": "1234#"}, a.id),
        ToolCall("lookup_order", {"order": "A-17", "verbose": True}, b.id)]
    assert texts(events) == []


async def test_whole_arguments_at_once_and_finish_reason_stop(fake: FakeOpenAIChat,
                                                              llm: OpenAILLM) -> None:
    call = ToolUse("end_call", {})
    fake.replies.append(Reply("Bye!", tool_calls=[call], arg_piece=0, finish_reason="stop"))
    events = await collect(llm.respond([SYSTEM], "bye", tools=BUILTIN_TOOLS))
    assert [e for e in events if isinstance(e, ToolCall)] == [ToolCall("end_call", {}, call.id)]


async def test_invalid_json_arguments_become_empty_with_a_warning(
        fake: FakeOpenAIChat, llm: OpenAILLM, caplog: pytest.LogCaptureFixture) -> None:
    fake.replies.append(Reply(tool_calls=[ToolUse("send_dtmf", '{"digits": "12')]))
    with caplog.at_level(logging.WARNING):
        events = await collect(llm.respond([SYSTEM], "x", tools=BUILTIN_TOOLS))
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)] == [
        ("send_dtmf", {})]
    assert "invalid JSON" in caplog.text


async def test_usage_with_cached_tokens_and_groq_usage(fake: FakeOpenAIChat,
                                                       llm: OpenAILLM) -> None:
    fake.replies.append(Reply("ok", input_tokens=1500, output_tokens=3, cached_tokens=1280))
    events = await collect(llm.respond([SYSTEM], "x"))
    assert [e for e in events if isinstance(e, TokenUsage)] == [TokenUsage(1500, 3, 1280)]
    fake.replies.append(Reply("ok", input_tokens=40, output_tokens=2, usage_style="groq"))
    events = await collect(llm.respond([SYSTEM], "x"))
    assert [e for e in events if isinstance(e, TokenUsage)] == [TokenUsage(40, 2, 0)]
    fake.replies.append(Reply("ok", usage_style="none"))
    events = await collect(llm.respond([SYSTEM], "x"))
    assert texts(events) == ["ok"] and not any(isinstance(e, TokenUsage) for e in events)


async def test_history_with_tool_rounds_is_converted(fake: FakeOpenAIChat,
                                                     llm: OpenAILLM) -> None:
    history = [
        SYSTEM,
        Message("assistant", "Thanks for calling."),
        Message("user", "Where is my order A-17?"),
        Message("assistant", "", tool_calls=(
            ToolCall("lookup_order", MappingProxyType({"order": "A-17"}), "call_1"),
            ToolCall("send_dtmf", {"digits": "9"}, "call_2"))),
        Message("tool", '{"status": "shipped"}', tool_call_id="call_1", name="lookup_order"),
        Message("tool", "sent", tool_call_id="call_2", name="send_dtmf"),
        Message("assistant", ""),                       # an empty turn (barge-in) is left out
    ]
    tools = [ToolSpec("lookup_order", "Look up an order",
                      MappingProxyType({"type": "object", "properties": {
                          "order": {"type": "string"}}}))]
    events = await collect(llm.respond(history, None, "5", tools=tools))
    assert fake.last.status == 200 and texts(events)
    assert fake.last.body["messages"] == [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "assistant", "content": "Thanks for calling."},
        {"role": "user", "content": "Where is my order A-17?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup_order", "arguments": '{"order":"A-17"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "send_dtmf", "arguments": '{"digits":"9"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "sent"},
        {"role": "user", "content": "[The caller pressed 5 on the keypad]"}]
    assert fake.last.body["tools"][0]["function"]["parameters"]["properties"] == {
        "order": {"type": "string"}}


async def test_fake_refuses_a_wrong_tool_history(fake: FakeOpenAIChat, llm: OpenAILLM) -> None:
    # a tool result that answers no call, and a call left unanswered: OpenAI's 400s
    orphan = [SYSTEM, Message("user", "hi"),
              Message("tool", "x", tool_call_id="call_9", name="lookup_order")]
    with pytest.raises(BackendError) as err:
        await collect(llm.respond(orphan))
    assert err.value.status == 400 and not err.value.retryable
    assert "must be a response to a preceeding message with 'tool_calls'" in err.value.message
    unanswered = [SYSTEM, Message("assistant", "", tool_calls=(ToolCall("end_call", {}, "c1"),)),
                  Message("user", "hello?")]
    with pytest.raises(BackendError) as err:
        await collect(llm.respond(unanswered))
    assert "did not have response messages: c1" in err.value.message


async def test_options_and_a_server_without_key(fake: FakeOpenAIChat) -> None:
    fake.api_key = ""                         # like Ollama / llama.cpp without --api-key
    p = provider(fake.url, key="", model="llama3.2",  # type: ignore[attr-defined]
                 options={"temperature": 0.0, "max_tokens": 200})
    try:
        await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    body = fake.last.body
    assert "Authorization" not in fake.last.headers
    assert body["model"] == "llama3.2" and body["temperature"] == 0.0
    assert body["max_tokens"] == 200 and "max_completion_tokens" not in body
    official = provider("https://api.openai.com/v1", options={"max_tokens": 200})
    assert official.request_body([SYSTEM], "hi")["max_completion_tokens"] == 200
    assert official.url == "https://api.openai.com/v1/chat/completions"
    assert "temperature" not in official.request_body([SYSTEM], "hi")
    quiet = provider(fake.url, options={"include_usage": False})  # type: ignore[attr-defined]
    assert "stream_options" not in quiet.request_body([SYSTEM], "hi")


async def test_connection_is_reused_between_turns(fake: FakeOpenAIChat, llm: OpenAILLM) -> None:
    await collect(llm.respond([SYSTEM], "one"))
    await collect(llm.respond([SYSTEM], "two"))
    assert fake.requests[0].peer == fake.requests[1].peer


def test_assembler_copes_with_server_quirks() -> None:
    # no index (older Ollama), a reused index with a new id, arguments as an object, the id
    # repeated on later fragments, no id at all
    calls = ToolCallAssembler("openai")
    calls.add([{"id": "a", "function": {"name": "send_dtmf", "arguments": '{"digits":'}}])
    calls.add([{"id": "a", "function": {"arguments": ' "1"}'}}])
    calls.add([{"index": 0, "id": "b", "function": {"name": "end_call", "arguments": {}}}])
    calls.add([{"index": 0, "id": "c", "function": {"name": "transfer_call",
                                                      "arguments": {"target": "x"}}}])
    calls.add([{"index": 1, "function": {"name": "lookup", "arguments": "{}"}}])
    calls.add([{"index": 2, "function": {"arguments": "{}"}}])          # never named: dropped
    out = calls.finish()
    assert [(c.name, c.arguments, c.id) for c in out[:4]] == [
        ("send_dtmf", {"digits": "1"}, "a"), ("end_call", {}, "b"),
        ("transfer_call", {"target": "x"}, "c"), ("lookup", {}, out[3].id)]
    assert len(out) == 4 and out[3].id.startswith("call_") and calls.finish() == []


def test_factory() -> None:
    p = create_llm(BackendConfig("openai", api_key="k"))
    assert isinstance(p, OpenAILLM) and p.name == "openai"
    assert p.url == "https://api.openai.com/v1/chat/completions"


# ------------------------------------------------------------------------------- failures

async def test_wrong_key_is_a_401_without_the_key(fake: FakeOpenAIChat) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    p = provider(fake.url, key=wrong)  # type: ignore[attr-defined]
    try:
        with pytest.raises(BackendError) as err:
            await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    assert err.value.status == 401 and not err.value.retryable
    assert "Incorrect API key provided" in err.value.message
    assert wrong not in str(err.value) and wrong not in repr(err.value.args)


async def test_a_key_echoed_by_the_server_is_redacted(fake: FakeOpenAIChat,
                                                      llm: OpenAILLM) -> None:
    fake.replies.append(Reply(status=400, error_message=f"bad request for key {KEY}"))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert KEY not in str(err.value) and "***" in err.value.message


@pytest.mark.parametrize("status,retryable", [(429, True), (500, True), (503, True),
                                              (400, False), (404, False)])
async def test_http_errors(fake: FakeOpenAIChat, llm: OpenAILLM, status: int,
                           retryable: bool) -> None:
    fake.replies.append(Reply(status=status))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert err.value.status == status and err.value.retryable is retryable
    assert err.value.provider == "openai" and err.value.layer == "llm"
    assert fake.last.error["error"]["message"] in err.value.message


@pytest.mark.parametrize("kind,retryable", [("server_error", True),
                                            ("invalid_request_error", False)])
async def test_mid_stream_error_event(fake: FakeOpenAIChat, llm: OpenAILLM, kind: str,
                                      retryable: bool) -> None:
    fake.replies.append(Reply("Some words before it fails.", error_after=3, error_type=kind))
    got: list[Any] = []
    with pytest.raises(BackendError) as err:
        async for event in llm.respond([SYSTEM], "hi"):
            got.append(event)
    assert texts(got) == ["Some", " words"]           # role chunk + 2 deltas were sent
    assert err.value.retryable is retryable and kind in err.value.message


async def test_dropped_connection(fake: FakeOpenAIChat, llm: OpenAILLM) -> None:
    fake.replies.append(Reply("a b c d e f", drop_after=3))
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert err.value.retryable


async def test_stream_ending_before_the_answer_is_an_error(fake: FakeOpenAIChat,
                                                           llm: OpenAILLM) -> None:
    fake.replies.append(Reply("cut short here", end_after=3))    # no finish chunk, no [DONE]
    with pytest.raises(BackendError) as err:
        await collect(llm.respond([SYSTEM], "hi"))
    assert "ended before" in err.value.message and err.value.retryable


async def test_unreachable_server() -> None:
    p = provider("http://127.0.0.1:9/v1", timeout=2.0)
    try:
        with pytest.raises(BackendError) as err:
            await collect(p.respond([SYSTEM], "hi"))
    finally:
        await p.close()
    assert err.value.retryable and "connection failed" in err.value.message


@pytest.mark.parametrize("knob", ["delay_headers", "stall_first"])
async def test_first_event_timeout(fake: FakeOpenAIChat, knob: str) -> None:
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
    await asyncio.wait_for(fake.last.disconnected.wait(), 2)   # and we hung up


async def test_idle_gap_timeout(fake: FakeOpenAIChat, llm: OpenAILLM) -> None:
    llm.token_timeout = 0.3
    fake.replies.append(Reply("first then silence", stall_after=3, stall_seconds=10))
    got: list[Any] = []
    with pytest.raises(BackendError) as err:
        async for event in llm.respond([SYSTEM], "hi"):
            got.append(event)
    assert texts(got) == ["first", " then"] and err.value.retryable
    assert "stalled" in err.value.message


@pytest.mark.parametrize("how", ["cancel", "aclose"])
async def test_cancelling_closes_the_connection_at_once(fake: FakeOpenAIChat, llm: OpenAILLM,
                                                        how: str) -> None:
    fake.replies.append(Reply("Talking and talking", hold_after=3))
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
    # the provider is still usable
    fake.replies.append(Reply("again"))
    assert texts(await collect(llm.respond([SYSTEM], "hi"))) == ["again"]


# ------------------------------------------------------------------------------- real server

async def test_llama_cpp_server(local_llm_server: LocalLLMServer) -> None:  # noqa: F811
    # a real model on a CPU shared with the rest of the suite: the protocol is tested here,
    # not its speed (the default 8 s for a first token was missed once under load)
    p = provider(local_llm_server.base_url, key=local_llm_server.api_key,
                 model=local_llm_server.model, timeout=60.0, inter_token_timeout=30.0,
                 options={"max_tokens": 8, "temperature": 0.0})
    history = [SYSTEM, Message("user", "Please hang up."),
               Message("assistant", "", tool_calls=(ToolCall("end_call", {}, "call_a1"),)),
               Message("tool", '{"ok": true}', tool_call_id="call_a1", name="end_call")]
    try:
        events = await collect(p.respond([SYSTEM], "Say hello in three words."))
        assert "".join(texts(events)).strip()
        usage = [e for e in events if isinstance(e, TokenUsage)]
        assert len(usage) == 1 and usage[0].input_tokens > 0 and usage[0].output_tokens > 0
        # a tool round is accepted by a real server's chat template (on a fresh request over
        # the connection the server may have closed after the first stream)
        events = await collect(p.respond(history))
        assert any(isinstance(e, TokenUsage) for e in events)
    finally:
        await p.close()


# ------------------------------------------------------------------------------- measurements

class ThreadedFake:
    """The fake on its own event loop thread, so client-side timings are the client's alone."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> tuple[FakeOpenAIChat, str]:
        self.thread.start()

        async def make() -> tuple[FakeOpenAIChat, str]:
            f = FakeOpenAIChat(KEY)
            return f, await f.start()

        self.fake, url = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return self.fake, url

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_fake() -> Iterator[tuple[FakeOpenAIChat, str]]:
    with ThreadedFake() as pair:
        yield pair


async def test_measure_first_byte_to_first_text_and_cpu_per_chunk(
        threaded_fake: tuple[FakeOpenAIChat, str]) -> None:
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
    print(f"\nopenai: first byte → first TextChunk median {median_ms:.2f} ms over 200 requests; "
          f"client CPU {cpu * 1000:.1f} ms per 1,000 streamed chunks")
    assert median_ms < 50 and cpu < 1.0
