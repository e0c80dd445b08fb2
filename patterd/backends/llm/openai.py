"""OpenAI chat-completions streaming — and every server that speaks it through ``base_url``.

Groq, Cerebras, Ollama, vLLM and llama.cpp's ``llama-server`` serve the same
``POST {base_url}/chat/completions`` with ``stream: true``. Text deltas are yielded as they
arrive; tool calls come as fragments (``delta.tool_calls[]``: ``id``/``name`` on the first
fragment of an ``index``, ``arguments`` as string pieces) and are yielded once the choice
finishes. The parser is lenient where servers differ (providers.md §2): whole arguments in one
fragment, no ``index``, no ``id``, ``finish_reason: "stop"`` on a tool turn, usage in the extra
``choices: []`` chunk or in Groq's ``x_groq.usage``. It is strict where a server is broken: an
event that is not a chunk object (not JSON, no ``choices`` list, a delta of the wrong shape) is
a malformed stream, a provider failure like an error event. Text, tool-call fragments, the
finish and streamed reasoning are tokens for the inter-token timeout; empty chunks are not.
"""

from __future__ import annotations

import json
import logging
import uuid
from types import NoneType
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping, Sequence
from urllib.parse import urlsplit

from ..errors import BackendError
from .base import LLMEvent, Message, TextChunk, TokenUsage, ToolCall, ToolSpec, user_message
from .http_llm import HttpStreamingLLM
from .sse import SSEEvent, dumps, error_detail, finish, parse_arguments, redact

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
# error types of a mid-stream error event that another attempt cannot fix
FATAL_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error",
                               "permission_error", "not_found_error", "insufficient_quota",
                               "invalid_api_key", "context_length_exceeded"})
# the model's reasoning as some servers stream it (vLLM, DeepSeek, Ollama): not spoken, but a
# sign the answer advances
REASONING_KEYS = ("reasoning_content", "reasoning")


class OpenAILLM(HttpStreamingLLM):
    """The ``openai`` LLM provider (OpenAI or any OpenAI-compatible server)."""

    name = "openai"

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> None:
        super().__init__(cfg, default_base_url=DEFAULT_BASE_URL, default_model=DEFAULT_MODEL,
                         path="/chat/completions")
        self.max_tokens: int = int(cfg.options.get("max_tokens") or 0)
        self.include_usage = bool(cfg.options.get("include_usage", True))
        # api.openai.com deprecated max_tokens (o-series models refuse it); older
        # OpenAI-compatible servers only know max_tokens
        official = urlsplit(self.base_url).hostname == "api.openai.com"
        self._max_tokens_key = "max_completion_tokens" if official else "max_tokens"
        if self.api_key:                  # local servers (Ollama, llama.cpp) need none
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def request_body(self, history: Sequence[Message], user_text: str | None = None,
                     dtmf: str | None = None, tools: Sequence[ToolSpec] = ()) -> dict[str, Any]:
        """The JSON body of the chat-completions request for this turn."""
        messages = to_openai_messages(history)
        extra = user_message(user_text, dtmf)
        if extra is not None:
            messages.append({"role": "user", "content": extra.content})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
            body["tool_choice"] = "auto"
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens:
            body[self._max_tokens_key] = self.max_tokens
        return body

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """Stream the answer: text as it arrives, tool calls when the choice finishes, then
        one :class:`TokenUsage` if the server reported usage."""
        body = dumps(self.request_body(history, user_text, dtmf, tools))
        resp, stream = await self.open_stream(body)
        calls = ToolCallAssembler(self.name)
        usage: Mapping[str, Any] | None = None
        done = finished = released = stalled = False
        try:
            while not done:
                try:
                    events = await self.read_events(stream)
                except BackendError:
                    if not finished:
                        raise
                    stalled = True  # the answer is whole; only its [DONE] never came
                    break
                if events is None:
                    break
                for event in events:
                    if event.data == "[DONE]":
                        done = True
                        break
                    chunk = self._chunk(event)
                    found = chunk.get("usage")
                    groq = chunk.get("x_groq")
                    if not found and isinstance(groq, dict):
                        found = groq.get("usage")
                    if found:
                        if not isinstance(found, Mapping):
                            raise self.malformed("usage is not an object", event)
                        usage = found       # the last report wins (vLLM repeats cumulative ones)
                    choices = chunk.get("choices")
                    if not isinstance(choices, list) and not (choices is None and found):
                        raise self.malformed("no choices list", event)
                    for choice in choices or ():
                        if not isinstance(choice, dict):
                            raise self.malformed("a choice is not an object", event)
                        if choice.get("index", 0):
                            continue        # n > 1 is never requested
                        delta = choice.get("delta") or {}
                        if not isinstance(delta, dict):
                            raise self.malformed("a delta is not an object", event)
                        text, fragments = delta.get("content"), delta.get("tool_calls")
                        if not isinstance(text, (str, NoneType)) or not isinstance(
                                fragments, (list, NoneType)):
                            raise self.malformed("a delta of the wrong shape", event)
                        if text or fragments or choice.get("finish_reason") or any(
                                delta.get(k) for k in REASONING_KEYS):
                            stream.progress()
                        if text:
                            yield TextChunk(text)
                        if fragments:
                            calls.add(fragments)
                        if choice.get("finish_reason"):
                            # a tool turn is decided by the calls, not the reason: some servers
                            # end tool turns with "stop"
                            finished = True
                            for call in calls.finish():
                                yield call
            if not (done or finished):
                raise BackendError("llm", self.name, "the stream ended before the answer did",
                                   retryable=True)
            if not stalled:
                await finish(resp, True)
                released = True
        finally:
            if not released:
                resp.close()    # cancelled or failed: drop the connection, stop the generation
        for call in calls.finish():                # a server that sent [DONE] without a finish
            yield call
        if usage is not None:
            yield openai_usage(usage)

    def _chunk(self, event: SSEEvent) -> dict[str, Any]:
        """The JSON object of one event; an error event raises its error, anything else that
        is not a JSON object (garbage from a proxy, another protocol) is a malformed stream."""
        try:
            chunk = json.loads(event.data)
        except ValueError:
            if event.event == "error":
                raise self._stream_error({"message": event.data}) from None
            raise self.malformed("not JSON", event) from None
        if not isinstance(chunk, dict):
            if event.event == "error":
                raise self._stream_error({"message": str(chunk)})
            raise self.malformed("not a JSON object", event)
        if chunk.get("error") or event.event == "error":
            raise self._stream_error(chunk)
        return chunk

    def _stream_error(self, chunk: Mapping[str, Any]) -> BackendError:
        message, kind = error_detail(chunk)
        text = redact(f"{kind}: {message}" if kind else message or "error event", self.api_key)
        return BackendError("llm", self.name, text, retryable=kind not in FATAL_ERROR_TYPES)



class _Slot:
    __slots__ = ("id", "name", "parts", "obj")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.parts: list[str] = []
        self.obj: dict[str, Any] | None = None


class ToolCallAssembler:
    """Assembles ``delta.tool_calls`` fragments into whole calls, keyed by ``index`` (or by
    ``id`` for servers that omit the index; a new ``id`` on a used index starts a new call)."""

    __slots__ = ("_by_id", "_by_index", "_provider", "_slots")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._slots: list[_Slot] = []
        self._by_index: dict[Any, _Slot] = {}
        self._by_id: dict[str, _Slot] = {}

    def add(self, fragments: Sequence[Any]) -> None:
        """Take the ``tool_calls`` list of one delta."""
        for item in fragments:
            if not isinstance(item, dict):
                continue
            index, cid = item.get("index"), item.get("id") or ""
            slot = self._by_id.get(cid) if cid else None
            if slot is None and index is not None:
                slot = self._by_index.get(index)
                if slot is not None and cid and slot.id and slot.id != cid:
                    slot = None
            if slot is None and index is None and not cid and self._slots:
                slot = self._slots[-1]
            if slot is None:
                slot = _Slot()
                self._slots.append(slot)
            if index is not None:
                self._by_index[index] = slot
            if cid and not slot.id:
                slot.id = cid
                self._by_id[cid] = slot
            fn = item.get("function") or {}
            if fn.get("name") and not slot.name:
                slot.name = fn["name"]
            args = fn.get("arguments")
            if isinstance(args, str):
                if args:
                    slot.parts.append(args)
            elif isinstance(args, dict):   # a few servers send the object itself
                slot.obj = args

    def finish(self) -> list[ToolCall]:
        """The calls assembled so far, in order; the assembler is empty afterwards."""
        out: list[ToolCall] = []
        for slot in self._slots:
            if not slot.name:
                log.warning("llm %s: dropped a tool call without a name", self._provider)
                continue
            args = slot.obj if slot.obj is not None else parse_arguments(
                "".join(slot.parts), slot.name, self._provider)
            out.append(ToolCall(slot.name, args, slot.id or f"call_{uuid.uuid4().hex[:24]}"))
        self._slots, self._by_index, self._by_id = [], {}, {}
        return out


def to_openai_messages(history: Sequence[Message]) -> list[dict[str, Any]]:
    """``history`` as chat-completions ``messages`` (assistant ``tool_calls`` with JSON-string
    arguments, tool results as ``role: tool``; empty assistant turns left out)."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "assistant":
            if m.tool_calls:
                out.append({"role": "assistant", "content": m.content or None, "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": dumps(c.arguments).decode()}}
                    for c in m.tool_calls]})
            elif m.content:
                out.append({"role": "assistant", "content": m.content})
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def openai_usage(usage: Mapping[str, Any]) -> TokenUsage:
    """:class:`TokenUsage` from a chat-completions ``usage`` object."""
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0
    return TokenUsage(int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0), int(cached))


__all__ = ["OpenAILLM", "ToolCallAssembler", "openai_usage", "to_openai_messages"]
