"""Streaming LLM servers that answer 200 and then misbehave — garbage events, JSON of the wrong
shape, a stall after the first token, an answer that never ends — against the OpenAI and
Anthropic fakes: each is a provider failure (or a cut answer) within a bound, heard by the
failover chain, never a silent empty reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from patterd.backends.errors import BackendError
from patterd.backends.failover import DEFAULT_MAX_REPLY_CHARS, FailoverLLM
from patterd.backends.llm import create_llm
from patterd.backends.llm.base import LLM, Message, StartOver, TextChunk, TokenUsage, Truncated
from patterd.backends.llm.http_llm import FIRST_TIMEOUT, TOKEN_TIMEOUT
from patterd.config.model import BackendConfig
from tests.support.fakes.anthropic_messages import FakeAnthropicMessages
from tests.support.fakes.openai_chat import FakeLLMService, FakeOpenAIChat, Reply

SYSTEM = Message("system", "You are a phone agent.")
ANSWER = "We are open nine to five. Is there anything else?"


@dataclass
class Server:
    """A fake LLM service and a provider pointed at it."""

    fake: FakeLLMService
    llm: LLM
    name: str
    text_events: int        # events before the first text delta of a reply


@pytest.fixture(params=["openai", "anthropic"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    fake: FakeLLMService = FakeOpenAIChat() if request.param == "openai" \
        else FakeAnthropicMessages()
    url = await fake.start()
    llm = create_llm(BackendConfig(request.param, api_key=fake.api_key, base_url=url,
                                   timeout=2.0, inter_token_timeout=0.3))
    # OpenAI: the role chunk; Anthropic: message_start, content_block_start, ping
    yield Server(fake, llm, request.param, 1 if request.param == "openai" else 3)
    await llm.close()
    await fake.stop()


async def answer(llm: LLM) -> list[Any]:
    return [event async for event in llm.respond([SYSTEM], "when are you open")]


def texts(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextChunk))


def test_defaults_and_config_reach_the_provider() -> None:
    plain = create_llm(BackendConfig("openai", api_key="k"))
    assert (plain.first_timeout, plain.token_timeout) == (FIRST_TIMEOUT, TOKEN_TIMEOUT)
    tuned = create_llm(BackendConfig("anthropic", api_key="k", timeout=3, inter_token_timeout=1.5))
    assert (tuned.first_timeout, tuned.token_timeout) == (3, 1.5)
    assert TOKEN_TIMEOUT < 10 and DEFAULT_MAX_REPLY_CHARS >= 1000
    capped = create_llm(BackendConfig("webhook", max_reply_chars=500,
                                      options={"url": "https://agent.example/turn"}))
    chain = FailoverLLM([plain, capped, tuned], max_reply_chars=[0, 0, 700])
    assert chain._caps == [DEFAULT_MAX_REPLY_CHARS, 500, 700]


# ------------------------------------------------------------------------------ garbage

# what a broken proxy or a server of another protocol sends, then the stream's proper end
GARBAGE = ("<html><body><h1>502 Bad Gateway</h1></body></html>",
           "upstream connect error or disconnect/reset before headers")
END = {"openai": "[DONE]", "anthropic": '{"type": "message_stop"}'}


@pytest.mark.parametrize("after_text", [False, True])
async def test_a_stream_of_non_json_events_is_a_failure(server: Server,
                                                        after_text: bool) -> None:
    at = server.text_events + (2 if after_text else 0)
    server.fake.replies.append(Reply(ANSWER, garbage_after=at,
                                     garbage=GARBAGE + (END[server.name],)))
    got: list[Any] = []
    with pytest.raises(BackendError) as err:
        async for event in server.llm.respond([SYSTEM], "when are you open"):
            got.append(event)
    assert "malformed stream: not JSON" in err.value.message and err.value.retryable
    assert "Bad Gateway" not in err.value.message          # content is not quoted
    assert texts(got) == ("We are" if after_text else "")


WRONG_SHAPES = {
    "openai": ['{"id": "x", "object": "chat.completion.chunk"}', '[1, 2, 3]', '"text"',
               '{"choices": "Hello"}', '{"choices": [{"delta": "Hello"}]}',
               '{"choices": [{"delta": {"content": 42}}]}'],
    "anthropic": ['{"index": 0, "delta": {"text": "Hi"}}', '[1, 2, 3]', '42',
                  '{"type": "content_block_delta", "index": 0, "delta": "Hi"}',
                  '{"type": "content_block_delta", "index": 0, '
                  '"delta": {"type": "text_delta", "text": 7}}',
                  '{"type": "content_block_stop", "index": [0]}'],
}


@pytest.mark.parametrize("which", range(6))
async def test_json_of_the_wrong_shape_is_a_failure(server: Server, which: int) -> None:
    server.fake.replies.append(Reply(ANSWER, garbage_after=server.text_events,
                                     garbage=(WRONG_SHAPES[server.name][which],)))
    with pytest.raises(BackendError, match="malformed stream"):
        await answer(server.llm)


async def test_an_error_event_is_a_failure(server: Server) -> None:
    server.fake.replies.append(Reply(ANSWER, error_after=server.text_events + 1))
    with pytest.raises(BackendError):
        await answer(server.llm)


async def test_a_garbage_answer_moves_to_the_next_provider_and_is_counted(
        server: Server) -> None:
    backup = FakeOpenAIChat()
    url = await backup.start()
    backup.replies.append(Reply("The backup answers."))
    errors: list[tuple[str, str]] = []
    chain = FailoverLLM([server.llm, create_llm(BackendConfig(
        "openai", api_key=backup.api_key, base_url=url))],
        on_error=lambda layer, name, exc: errors.append((layer, name)))
    server.fake.replies.append(Reply(ANSWER, garbage_after=server.text_events + 2))
    try:
        events = await answer(chain)
    finally:
        await chain.providers[1].close()
        await backup.stop()
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("StartOver") < kinds.index("TextChunk", kinds.index("StartOver"))
    after = events[kinds.index("StartOver") + 1:]
    assert texts(after) == "The backup answers."
    assert errors == [("llm", server.name)]


# ------------------------------------------------------------------------------ stalls

async def test_a_stall_after_the_first_token_fails_within_the_bound(server: Server) -> None:
    server.fake.replies.append(Reply(ANSWER, stall_after=server.text_events + 3,
                                     stall_seconds=30))
    loop = asyncio.get_running_loop()
    got: list[Any] = []
    began = loop.time()
    with pytest.raises(BackendError, match="stalled") as err:
        async for event in server.llm.respond([SYSTEM], "hi"):
            got.append(event)
            began = loop.time()
    assert 0.25 < loop.time() - began < 1.5 and err.value.retryable
    assert texts(got) == "We are open"
    await asyncio.wait_for(server.fake.last.disconnected.wait(), 2)   # we hung up


async def test_keepalives_do_not_hide_a_stall(server: Server) -> None:
    """Empty chunks (OpenAI) or pings (Anthropic) every 50 ms are not tokens."""
    empty = '{"choices": [{"index": 0, "delta": {}, "finish_reason": null}]}' \
        if server.name == "openai" else '{"type": "ping"}'
    server.fake.replies.append(Reply(ANSWER, garbage_after=server.text_events + 2,
                                     garbage=(empty,) * 100))
    server.fake.event_delay = 0.05
    with pytest.raises(BackendError, match="stalled"):
        await asyncio.wait_for(answer(server.llm), 3)


async def test_a_whole_answer_whose_end_marker_never_comes_is_kept(server: Server) -> None:
    """The finish came, then the server hung: the answer is complete, nothing fails."""
    events = len(ANSWER.split()) + server.text_events + (2 if server.name == "openai" else 3)
    server.fake.replies.append(Reply(ANSWER, hold_after=events))
    got = await asyncio.wait_for(answer(server.llm), 3)
    assert texts(got) == ANSWER


# ------------------------------------------------------------------------------ length

async def test_an_endless_answer_is_cut_at_the_cap_and_counted(server: Server) -> None:
    errors: list[tuple[str, str, BaseException]] = []
    chain = FailoverLLM([server.llm], on_error=lambda *e: errors.append(e),
                        max_reply_chars=[300])
    server.fake.replies.append(Reply([" And so on", " and so forth."], endless=True))
    events = await asyncio.wait_for(answer(chain), 5)
    assert isinstance(events[-1], Truncated) and events[-1].chars == 300
    said = texts(events)
    assert len(said) == 300 and said.startswith(" And so on and so forth. And so on")
    assert [(layer, name) for layer, name, _ in errors] == [("llm", server.name)]
    assert "longer than 300 characters" in str(errors[0][2])
    await asyncio.wait_for(server.fake.last.disconnected.wait(), 2)   # we stopped reading
    assert not any(isinstance(e, (StartOver, TokenUsage)) for e in events)


async def test_an_answer_within_the_cap_is_untouched(server: Server) -> None:
    chain = FailoverLLM([server.llm], max_reply_chars=[len(ANSWER)])
    server.fake.replies.append(Reply(ANSWER))
    events = await answer(chain)
    assert texts(events) == ANSWER and not any(isinstance(e, Truncated) for e in events)
