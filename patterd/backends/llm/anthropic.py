"""Anthropic Messages streaming (``POST {base_url}/v1/messages``, ``stream: true``).

The stream is a sequence of named SSE events (providers.md §3): ``message_start`` (input and
cache usage), ``content_block_start``/``_delta``/``_stop`` per content block, ``message_delta``
(stop reason, cumulative output tokens), ``message_stop``; ``ping`` anywhere; ``error`` even
after HTTP 200. Text deltas are yielded as they arrive; a ``tool_use`` block's
``input_json_delta`` pieces are joined and yielded as one :class:`ToolCall` at its
``content_block_stop``. An event that is not a JSON object, or has no type, is a malformed
stream: a provider failure like an ``error`` event. Content blocks and the message's end are
tokens for the inter-token timeout; ``message_start`` and ``ping`` are not.

The history is converted to what the API accepts everywhere — including Anthropic-compatible
servers and older deployments that are stricter than api.anthropic.com today: system prompts go
to the top-level ``system``, same-role turns are merged, tool results of one round become one
``user`` message of ``tool_result`` blocks (placed before any text), and a conversation that
opens with the agent's greeting gets a short ``user`` turn in front of it.

Prompt caching is always on (a prompt shorter than the model's minimum is simply not cached,
at no cost): ``cache_control`` breakpoints go on the last tool, on the system prompt (sent as
a text block for that) and on the last block before the new user turn, so each turn reads the
previous turn's prefix from the cache (prefix order: tools → system → messages). That is 3 of
the 4 breakpoints a request may carry. Compatible servers without prompt caching ignore them.
"""

from __future__ import annotations

import json
import re
from types import NoneType
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping, Sequence

from ..errors import BackendError
from .base import LLMEvent, Message, TextChunk, TokenUsage, ToolCall, ToolSpec, user_message
from .http_llm import HttpStreamingLLM
from .sse import SSEEvent, dumps, error_detail, finish, parse_arguments, redact

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-haiku-4-5"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
CALL_STARTED = "(The call has been connected.)"
FATAL_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error",
                               "permission_error", "not_found_error", "request_too_large",
                               "billing_error"})
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# events that show the answer advancing (for the inter-token timeout); message_start, ping and
# unknown events do not
PROGRESS = frozenset({"content_block_start", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"})


def _breakpoint() -> dict[str, str]:
    # the default 5-minute TTL: a call's turns come seconds apart, and a 1 h write costs 2×
    return {"type": "ephemeral"}


class AnthropicLLM(HttpStreamingLLM):
    """The ``anthropic`` LLM provider."""

    name = "anthropic"

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> None:
        super().__init__(cfg, default_base_url=DEFAULT_BASE_URL, default_model=DEFAULT_MODEL,
                         path="/v1/messages")
        self.max_tokens = int(cfg.options.get("max_tokens") or DEFAULT_MAX_TOKENS)
        self._headers["anthropic-version"] = API_VERSION
        token = str(cfg.options.get("auth_token") or "")
        if self.api_key:        # an API key goes in x-api-key, as the API documents
            self._headers["x-api-key"] = self.api_key
        elif token:             # a bearer token (ANTHROPIC_AUTH_TOKEN), as the SDK sends one
            self._headers["Authorization"] = f"Bearer {token}"

    def request_body(self, history: Sequence[Message], user_text: str | None = None,
                     dtmf: str | None = None, tools: Sequence[ToolSpec] = ()) -> dict[str, Any]:
        """The JSON body of the Messages request for this turn, with its cache breakpoints."""
        extra = user_message(user_text, dtmf)
        system, messages = to_anthropic(list(history) + ([extra] if extra else []))
        # to_anthropic drops a blank turn; a kept one is the very last block
        mark_history(messages, skip=1 if extra and extra.content.strip() else 0)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": messages, "stream": True}
        if system:
            body["system"] = [{"type": "text", "text": system, "cache_control": _breakpoint()}]
        if tools:
            body["tools"] = [{"name": t.name, "description": t.description,
                              "input_schema": t.parameters} for t in tools]
            body["tools"][-1]["cache_control"] = _breakpoint()
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """Stream the answer: text as it arrives, each tool call when its block stops, then one
        :class:`TokenUsage` (input includes cache reads and writes; cached = cache reads,
        cache_write_tokens = cache writes)."""
        body = dumps(self.request_body(history, user_text, dtmf, tools))
        resp, stream = await self.open_stream(body)
        blocks: dict[int, list[Any]] = {}      # open tool_use blocks: index → [id, name, parts]
        usage: dict[str, int] = {}
        done = finished = released = stalled = False
        try:
            while not done:
                try:
                    events = await self.read_events(stream)
                except BackendError:
                    if not finished:
                        raise
                    stalled = True  # the answer is whole; only its message_stop never came
                    break
                if events is None:
                    break
                for event in events:
                    data = self._data(event)
                    kind = event.event if event.event != "message" else data.get("type")
                    if not kind or not isinstance(kind, str):
                        raise self.malformed("an event without a type", event)
                    if kind in PROGRESS:
                        stream.progress()
                    if kind.startswith("content_block_") and not isinstance(
                            data.get("index"), (int, NoneType)):
                        raise self.malformed("a block index that is not a number", event)
                    if kind == "content_block_delta":
                        delta = data.get("delta")
                        if not isinstance(delta, dict):
                            raise self.malformed("a delta is not an object", event)
                        dtype = delta.get("type")
                        if dtype == "text_delta":
                            text = delta.get("text")
                            if not isinstance(text, (str, NoneType)):
                                raise self.malformed("text is not a string", event)
                            if text:
                                yield TextChunk(text)
                        elif dtype == "input_json_delta":
                            part = delta.get("partial_json") or ""
                            if not isinstance(part, str):
                                raise self.malformed("partial_json is not a string", event)
                            block = blocks.get(data.get("index"))
                            if block is not None:
                                block[2].append(part)
                    elif kind == "content_block_start":
                        cb = data.get("content_block") or {}
                        if not isinstance(cb, dict):
                            raise self.malformed("content_block is not an object", event)
                        if cb.get("type") == "tool_use":
                            # a compatible server may put the whole input here
                            start = cb.get("input")
                            blocks[data.get("index")] = [cb.get("id") or "", cb.get("name") or "",
                                                         [dumps(start).decode()] if start else []]
                    elif kind == "content_block_stop":
                        block = blocks.pop(data.get("index"), None)
                        if block is not None:
                            yield self._tool_call(block)
                    elif kind in ("message_start", "message_delta"):
                        source = data.get("message", data) if kind == "message_start" else data
                        counts = source.get("usage") if isinstance(source, dict) else None
                        if not isinstance(counts, (dict, NoneType)):
                            raise self.malformed("usage is not an object", event)
                        for key, value in (counts or {}).items():
                            if isinstance(value, int):
                                usage[key] = value      # message_delta's counts are cumulative
                        delta = data.get("delta")
                        if kind == "message_delta" and isinstance(delta, dict) and delta.get(
                                "stop_reason"):
                            finished = True
                    elif kind == "message_stop":
                        done = True
                        break
                    elif kind == "error":
                        raise self._stream_error(data)
                    # ping, thinking blocks and unknown events: nothing to say
            if not (done or finished):
                raise BackendError("llm", self.name, "the stream ended before message_stop",
                                   retryable=True)
            if not stalled:
                await finish(resp, True)
                released = True
        finally:
            if not released:
                resp.close()    # cancelled or failed: drop the connection, stop the generation
        for block in blocks.values():      # blocks never stopped: best effort
            yield self._tool_call(block)
        if usage:
            # the API's input_tokens excludes both cache parts: ours is the whole prompt
            read = usage.get("cache_read_input_tokens", 0)
            written = usage.get("cache_creation_input_tokens", 0)
            yield TokenUsage(usage.get("input_tokens", 0) + read + written,
                             usage.get("output_tokens", 0), read, cache_write_tokens=written)

    def _tool_call(self, block: list[Any]) -> ToolCall:
        cid, name, parts = block
        return ToolCall(name, parse_arguments("".join(parts), name, self.name), cid)

    def _data(self, event: SSEEvent) -> dict[str, Any]:
        """The JSON object of one event; an ``error`` event raises its error, anything else
        that is not a JSON object (garbage from a proxy, another protocol) is a malformed
        stream."""
        try:
            data = json.loads(event.data)
        except ValueError:
            if event.event == "error":
                raise self._stream_error({"error": {"message": event.data}}) from None
            raise self.malformed("not JSON", event) from None
        if not isinstance(data, dict):
            if event.event == "error":
                raise self._stream_error({"error": {"message": str(data)}})
            raise self.malformed("not a JSON object", event)
        return data

    def _stream_error(self, data: Mapping[str, Any]) -> BackendError:
        message, kind = error_detail(data)
        text = redact(f"{kind}: {message}" if kind else message or "error event", self.api_key)
        return BackendError("llm", self.name, text, retryable=kind not in FATAL_ERROR_TYPES)



def _tool_id(raw: str) -> str:
    # tool_use ids must match ^[A-Za-z0-9_-]+$; ids from another provider (after a failover)
    # may not
    return _BAD_ID_CHARS.sub("_", raw) if raw else "toolu_missing"


def mark_history(messages: list[dict[str, Any]], skip: int = 0) -> None:
    """Put a cache breakpoint on the last content block of ``messages`` but ``skip`` (the new
    turn's): the next request repeats everything up to it, so it reads this prefix back."""
    for message in reversed(messages):
        for block in reversed(message["content"]):
            if skip:
                skip -= 1
                continue
            block["cache_control"] = _breakpoint()
            return


def to_anthropic(history: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)`` for the Messages API from the conversation history."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return                      # the API refuses empty turns and empty text blocks
        if out and out[-1]["role"] == role:
            merged = out[-1]["content"] + blocks
            if role == "user":          # tool results must open the user turn
                merged.sort(key=lambda b: b["type"] != "tool_result")
            out[-1]["content"] = merged
        else:
            out.append({"role": role, "content": blocks})

    for m in history:
        text = [{"type": "text", "text": m.content}] if m.content.strip() else []
        if m.role == "system":
            if text:
                system.append(m.content)
        elif m.role == "user":
            add("user", text)
        elif m.role == "assistant":
            add("assistant", text + [{"type": "tool_use", "id": _tool_id(c.id), "name": c.name,
                                      "input": c.arguments} for c in m.tool_calls])
        elif m.role == "tool":
            block: dict[str, Any] = {"type": "tool_result",
                                     "tool_use_id": _tool_id(m.tool_call_id)}
            if m.content:
                block["content"] = m.content
            add("user", [block])
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": CALL_STARTED}]})
    return "\n\n".join(system), out


__all__ = ["AnthropicLLM", "mark_history", "to_anthropic"]
