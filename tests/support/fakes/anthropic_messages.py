"""A fake Anthropic Messages API (``POST /v1/messages``) on 127.0.0.1.

It validates like the API — ``x-api-key`` (401 ``authentication_error``), ``anthropic-version``
(400), unknown body fields ("Extra inputs are not permitted"), ``model``, ``max_tokens``
(required), ``system`` as a string or text blocks, message roles, non-empty content and text,
``tool_use`` only from the assistant, ``tool_result`` blocks first in the next user message and
answering exactly the previous message's ``tool_use`` ids, the ``tools`` schema, ``temperature``
in 0..1, ``cache_control`` (``type`` ``"ephemeral"``, ``ttl`` 5m/1h with 1h ones first, at most
4 per request) — answering 400 ``invalid_request_error`` in Anthropic's shape and wording.

Prompt caching is simulated (:meth:`FakeAnthropicMessages.simulate_cache`): breakpoint prefixes
of at least ``cache_min_tokens`` (default: the model's minimum) are remembered, later requests
read them back, and ``message_start`` reports the reads, the writes and — excluding both — the
``input_tokens``. A ``Reply`` with scripted token counts reports those and leaves the cache be.

Roles are checked the strict way (first message ``user``, then alternating): api.anthropic.com
now merges consecutive same-role turns and accepts an assistant opening, but Bedrock and
Anthropic-compatible servers still refuse them, so a client that passes here works everywhere.
``strict_roles = False`` gives today's lenient first-party behaviour.

Streams the named SSE events: ``message_start`` (usage with cache fields), per block
``content_block_start``/``content_block_delta`` (``text_delta`` or ``input_json_delta`` split into
small pieces, the first one empty as the API sends it)/``content_block_stop``, ``ping``,
``message_delta`` (``stop_reason``, cumulative ``output_tokens``) and ``message_stop``. Failure
knobs and scripted replies are those of :mod:`tests.support.fakes.openai_chat` (``Reply``): HTTP
errors default to the API's types (429 ``rate_limit_error``, 500 ``api_error``, 529
``overloaded_error``), and ``error_after`` sends ``event: error`` (``overloaded_error``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .openai_chat import (TOOL_NAME, FakeLLMService, Reply, endless, estimate_tokens, pieces,
                          sse)

VERSIONS = ("2023-06-01", "2023-01-01")
KNOWN_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "stream", "tools",
                          "tool_choice", "temperature", "top_p", "top_k", "stop_sequences",
                          "metadata", "thinking", "service_tier", "container", "mcp_servers"})
ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified "
                              "resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate "
                              "limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
MAX_BREAKPOINTS = 4


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix the model caches (⚠️ the prompt-caching docs' table as quoted in
    2026; Sonnet 4.6 was reported caching only from 2048). Shorter: no cache, no error."""
    if any(name in model for name in ("haiku-4-5", "opus-4-5", "opus-4-6")):
        return 4096
    if "haiku" in model or "opus-4-7" in model:       # Haiku 3 and 3.5
        return 2048
    return 1024


def prefix_blocks(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The request's blocks in cache-prefix order — tools, system, messages — as ``(where,
    role, block)``; a string ``system`` or message content counts as one text block."""
    out = [(f"tools.{i}", "tools", t) for i, t in enumerate(body.get("tools") or [])]
    system = body.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    out += [(f"system.{i}", "system", b) for i, b in enumerate(system or [])]
    for i, m in enumerate(body["messages"]):
        content = m["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        out += [(f"messages.{i}.content.{j}", m["role"], b) for j, b in enumerate(blocks)]
    return out


class Invalid(Exception):
    """A request the API would refuse."""

    def __init__(self, message: str, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(kind, message)


def error_body(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape."""
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}"}


class FakeAnthropicMessages(FakeLLMService):
    """The fake Anthropic Messages service (see the module docstring)."""

    default_text = "Hello from the fake Claude."

    def __init__(self, api_key: str = "sk-ant-test-fake-key-0123456789") -> None:
        super().__init__(api_key)
        self.auth_token = "sk-ant-oat-test-fake-token-0123456789"
        self.strict_roles = True
        self.cache_min_tokens: int | None = None       # None: min_cacheable_tokens(model)
        self.cache_lookback = 20                       # boundaries checked before a breakpoint
        self.prompt_cache: dict[str, int] = {}         # prefix hash → its tokens (no expiry)
        self.app.router.add_post("/v1/messages", self._handle)
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(error_body("not_found_error", "Not Found"), status=404)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = self.record(request)
        try:
            # An API key in x-api-key (as the API documents and the SDK sends it); a bearer
            # token (the SDK's auth_token) in Authorization.
            key = request.headers.get("x-api-key", "")
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if not key and scheme.lower() == "bearer" and token:
                if token != self.auth_token:
                    raise Invalid("Invalid bearer token", 401, "authentication_error")
            elif not key:
                raise Invalid("x-api-key header is required", 401, "authentication_error")
            elif key != self.api_key:
                raise Invalid("invalid x-api-key", 401, "authentication_error")
            version = request.headers.get("anthropic-version")
            if not version:
                raise Invalid("anthropic-version: header is required")
            if version not in VERSIONS:
                raise Invalid(f"anthropic-version: invalid version {version!r}")
            try:
                rec.body = json.loads(await request.read())
            except ValueError:
                raise Invalid("There was an issue with your request body: invalid JSON")
            self.validate(rec.body)
        except Invalid as exc:
            rec.status, rec.error = exc.status, exc.body
            return web.json_response(exc.body, status=exc.status)
        reply = self.next_reply()
        if reply.status:
            kind, message = ERRORS.get(reply.status, ("api_error", "Internal server error"))
            body = error_body(reply.error_type or kind, reply.error_message or message)
            rec.status, rec.error = reply.status, body
            return web.json_response(body, status=reply.status)
        if not rec.body.get("stream"):
            return web.json_response(self.message(rec.body, reply))
        return await self.stream(request, rec, reply, self.events(rec.body, reply),
                                 {"request-id": f"req_{uuid.uuid4().hex[:24]}"})

    # ---------------------------------------------------------------- validation

    def validate(self, body: Any) -> None:
        """Raise :class:`Invalid` for what the API would refuse."""
        if not isinstance(body, dict):
            raise Invalid("body: Input should be a valid dictionary")
        for key in body:
            if key not in KNOWN_FIELDS:
                raise Invalid(f"{key}: Extra inputs are not permitted")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise Invalid("model: Field required")
        if self.models is not None and body["model"] not in self.models:
            raise Invalid(f"model: {body['model']}", 404, "not_found_error")
        if "max_tokens" not in body:
            raise Invalid("max_tokens: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            raise Invalid("max_tokens: Input should be greater than or equal to 1")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            if not isinstance(system, list) or not all(
                    isinstance(b, dict) and b.get("type") == "text" and b.get("text")
                    for b in system):
                raise Invalid("system: Input should be a valid string or a list of text blocks")
        temperature = body.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float))
                                             and 0 <= temperature <= 1):
            raise Invalid("temperature: range: 0..1")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise Invalid("stream: Input should be a valid boolean")
        self._check_messages(body.get("messages"))
        if "tools" in body:
            self._check_tools(body["tools"])
        choice = body.get("tool_choice")
        if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in (
                "auto", "any", "tool", "none")):
            raise Invalid("tool_choice: Input tag does not match any of the expected tags: "
                          "'auto', 'any', 'tool', 'none'")
        self._check_cache_control(body)

    def _check_messages(self, messages: Any) -> None:
        if not isinstance(messages, list) or not messages:
            raise Invalid("messages: Field required" if messages is None
                          else "messages: at least one message is required")
        open_ids: list[str] = []           # tool_use ids of the previous assistant message
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise Invalid(f"messages.{i}: Input should be a valid dictionary")
            role = m.get("role")
            if role not in ("user", "assistant"):
                raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if self.strict_roles:
                if i == 0 and role != "user":
                    raise Invalid('messages: first message must use the "user" role')
                if i and messages[i - 1].get("role") == role:
                    raise Invalid('messages: roles must alternate between "user" and '
                                  f'"assistant", but found multiple "{role}" roles in a row')
            blocks = self._blocks(i, m.get("content"), last=i == len(messages) - 1,
                                  role=role)
            kinds = [b["type"] for b in blocks]
            results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
            if results and role != "user":
                raise Invalid(f"messages.{i}: `tool_result` blocks can only be in user messages")
            if "tool_use" in kinds and role != "assistant":
                raise Invalid(f"messages.{i}: `tool_use` blocks can only be in assistant "
                              "messages")
            if open_ids:
                missing = [t for t in open_ids if t not in results]
                if missing:
                    raise Invalid(f"messages.{i - 1}: `tool_use` ids were found without "
                                  f"`tool_result` blocks immediately after: {', '.join(missing)}"
                                  ". Each `tool_use` block must have a corresponding "
                                  "`tool_result` block in the next message.")
            extra = [t for t in results if t not in open_ids]
            if extra:
                raise Invalid(f"messages.{i}.content: unexpected `tool_use_id` found in "
                              f"`tool_result` blocks: {', '.join(extra)}. Each `tool_result` "
                              "block must have a corresponding `tool_use` block in the "
                              "previous message.")
            if results and kinds[:len(results)] != ["tool_result"] * len(results):
                raise Invalid(f"messages.{i}: `tool_result` blocks must come first in the "
                              "content, before any other block.")
            open_ids = [b["id"] for b in blocks if b["type"] == "tool_use"]
        if open_ids:
            raise Invalid(f"messages.{len(messages) - 1}: `tool_use` ids were found without "
                          f"`tool_result` blocks immediately after: {', '.join(open_ids)}. "
                          "Each `tool_use` block must have a corresponding `tool_result` block "
                          "in the next message.")

    @staticmethod
    def _blocks(i: int, content: Any, *, last: bool, role: str) -> list[dict[str, Any]]:
        if isinstance(content, str):
            if not content.strip() and not (last and role == "assistant"):
                raise Invalid(f"messages.{i}: all messages must have non-empty content except "
                              "for the optional final assistant message")
            return [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for "
                          "the optional final assistant message")
        for j, b in enumerate(content):
            where = f"messages.{i}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                if not isinstance(b.get("text"), str) or not b["text"]:
                    raise Invalid(f"{where}.text: text content blocks must be non-empty")
                if not b["text"].strip():
                    raise Invalid(f"{where}.text: text content blocks must contain "
                                  "non-whitespace text")
            elif kind == "tool_use":
                if not isinstance(b.get("id"), str) or not TOOL_NAME.fullmatch(b["id"] or "-"):
                    raise Invalid(f"{where}.id: String should match pattern "
                                  "'^[a-zA-Z0-9_-]+$'")
                if not isinstance(b.get("name"), str) or not b["name"]:
                    raise Invalid(f"{where}.name: Field required")
                if not isinstance(b.get("input"), dict):
                    raise Invalid(f"{where}.input: Input should be a valid dictionary")
            elif kind == "tool_result":
                if not isinstance(b.get("tool_use_id"), str) or not b["tool_use_id"]:
                    raise Invalid(f"{where}.tool_use_id: Field required")
                body = b.get("content")
                if body is not None and not isinstance(body, (str, list)):
                    raise Invalid(f"{where}.content: Input should be a valid string or list")
            else:
                raise Invalid(f"{where}: Input tag '{kind}' found using 'type' does not match "
                              "any of the expected tags")
        return content

    @staticmethod
    def _check_tools(tools: Any) -> None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise Invalid(f"tools.{i}.name: Field required")
            if not TOOL_NAME.fullmatch(t["name"]):
                raise Invalid(f"tools.{i}.custom.name: String should match pattern "
                              "'^[a-zA-Z0-9_-]{1,64}$'")
            schema = t.get("input_schema")
            if not isinstance(schema, dict):
                raise Invalid(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
            if "description" in t and not isinstance(t["description"], str):
                raise Invalid(f"tools.{i}.custom.description: Input should be a valid string")

    @staticmethod
    def _check_cache_control(body: dict[str, Any]) -> None:
        marks = [(where, b["cache_control"]) for where, _, b in prefix_blocks(body)
                 if "cache_control" in b]
        ttls = []
        for where, mark in marks:
            if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
                raise Invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
            ttls.append(mark.get("ttl", "5m"))
            if ttls[-1] not in ("5m", "1h"):
                raise Invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
        if len(marks) > MAX_BREAKPOINTS:
            raise Invalid(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be "
                          f"provided. Found {len(marks)}.")
        if "5m" in ttls and "1h" in ttls[ttls.index("5m"):]:
            raise Invalid("a ttl='1h' cache_control block must not come after a ttl='5m' "
                          "cache_control block")

    # ---------------------------------------------------------------- answers

    def simulate_cache(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """``(input, cache read, cache write)`` tokens of a request (JSON chars ÷ 4 a block).

        Each breakpoint's prefix (tools → system → messages, hashed per model without the
        markers) of at least the minimum is remembered. The read is the longest remembered
        prefix ending within ``cache_lookback`` blocks before one of the request's breakpoints;
        the write runs from there to its last breakpoint that is long enough."""
        blocks = prefix_blocks(body)
        running = hashlib.sha256(body["model"].encode())
        hashes, sizes = [], []
        for _, role, block in blocks:
            text = json.dumps([role, {k: v for k, v in block.items() if k != "cache_control"}],
                              sort_keys=True)
            running.update(text.encode())
            hashes.append(running.hexdigest())
            sizes.append(max(1, len(text) // 4))
        upto = list(itertools.accumulate(sizes))
        marks = [i for i, (_, _, b) in enumerate(blocks) if "cache_control" in b]
        hit = max((j for b in marks for j in range(max(0, b - self.cache_lookback), b + 1)
                   if hashes[j] in self.prompt_cache), default=-1)
        read = upto[hit] if hit >= 0 else 0
        minimum = (self.cache_min_tokens if self.cache_min_tokens is not None
                   else min_cacheable_tokens(body["model"]))
        cacheable = [b for b in marks if upto[b] >= minimum]
        for b in cacheable:
            self.prompt_cache[hashes[b]] = upto[b]
        last = max(cacheable, default=-1)
        written = upto[last] - read if last > hit else 0
        return upto[-1] - read - written, read, written

    def _usage(self, body: dict[str, Any], reply: Reply) -> tuple[dict[str, int], int]:
        if reply.input_tokens is None and not (reply.cached_tokens
                                               or reply.cache_creation_tokens):
            prompt, read, written = self.simulate_cache(body)
        else:
            prompt = reply.input_tokens if reply.input_tokens is not None else (
                estimate_tokens([body.get("system"), body["messages"]]))
            read, written = reply.cached_tokens, reply.cache_creation_tokens
        output = reply.output_tokens if reply.output_tokens is not None else (
            len(reply.deltas()) + sum(len(c.json_args()) // 4 + 5 for c in reply.tool_calls))
        return ({"input_tokens": prompt, "cache_creation_input_tokens": written,
                 "cache_read_input_tokens": read, "output_tokens": 1}, output)

    def events(self, body: dict[str, Any], reply: Reply) -> Iterable[bytes]:
        """The SSE events of a streamed answer."""
        start_usage, output = self._usage(body, reply)
        out = [sse({"type": "message_start", "message": {
            "id": self.new_id("msg_"), "type": "message", "role": "assistant",
            "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": start_usage}}, "message_start")]
        index = 0
        deltas = reply.deltas()
        if deltas:
            out.append(sse({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}},
                           "content_block_start"))
            out.append(sse({"type": "ping"}, "ping"))
            text_events = [sse({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": d}},
                               "content_block_delta") for d in deltas]
            if reply.endless:
                return endless(out, text_events)
            out += text_events
            out.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        for call in reply.tool_calls:
            call.id = call.id or self.new_id("toolu_")
            out.append(sse({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": call.id, "name": call.name, "input": {}}},
                "content_block_start"))
            if index == 0:
                out.append(sse({"type": "ping"}, "ping"))
            parts = [""] + pieces(call.json_args(), reply.arg_piece)
            out += [sse({"type": "content_block_delta", "index": index,
                         "delta": {"type": "input_json_delta", "partial_json": p}},
                        "content_block_delta") for p in parts]
            out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
        out.append(sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                           "stop_sequence": None},
                        "usage": {"output_tokens": output}}, "message_delta"))
        out.append(sse({"type": "message_stop"}, "message_stop"))
        if reply.error_after is not None:
            kind = reply.error_type or "overloaded_error"
            message = reply.error_message or dict(ERRORS.values()).get(kind, "Overloaded")
            out = out[:reply.error_after] + [sse({"type": "error", "error": {
                "type": kind, "message": message}}, "error")]
        return out

    def message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """A non-streamed ``message`` object."""
        start_usage, output = self._usage(body, reply)
        content: list[dict[str, Any]] = []
        if reply.deltas():
            content.append({"type": "text", "text": "".join(reply.deltas())})
        for call in reply.tool_calls:
            call.id = call.id or self.new_id("toolu_")
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": json.loads(call.json_args() or "{}")})
        return {"id": self.new_id("msg_"), "type": "message", "role": "assistant",
                "model": body["model"], "content": content,
                "stop_reason": reply.finish_reason or ("tool_use" if reply.tool_calls
                                                       else "end_turn"),
                "stop_sequence": None, "usage": {**start_usage, "output_tokens": output}}


__all__ = ["FakeAnthropicMessages", "error_body", "min_cacheable_tokens", "prefix_blocks"]
