"""A fake OpenAI chat-completions API (``POST /v1/chat/completions``) on 127.0.0.1.

It validates like OpenAI does — Bearer key (401 ``invalid_api_key``), unknown body fields, the
model, message roles, assistant ``tool_calls`` (``arguments`` must be a JSON *string*), every
``tool`` message answering an id of the preceding assistant ``tool_calls`` and every such id
answered (400 ``invalid_request_error`` with OpenAI's wording), the ``tools`` schema and
``stream_options`` only with ``stream`` — and streams SSE chunks shaped like OpenAI's: a role
chunk, content deltas, ``tool_calls`` fragments (id/type/name on the first fragment of an
``index``, then small ``arguments`` pieces), the finish chunk, the ``choices: []`` usage chunk
when ``stream_options.include_usage`` is set, and ``data: [DONE]``. ``stream: false`` gets a
``chat.completion`` object.

Answers are scripted: ``fake.replies.append(Reply(...))`` (text and/or tool calls, and per-reply
failure knobs); with the queue empty the fake answers ``Reply(default_text)``. Fake-wide knobs:
``chunk_size`` (bytes per TCP write, to split events anywhere), ``event_delay`` (seconds between
events), ``api_key`` ("" = no auth, like a local server) and ``models`` (None = any model).
:class:`FakeLLMService`, :class:`Reply` and :class:`ToolUse` are shared with the Anthropic fake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

POLL = 0.005          # how often a waiting handler looks whether the client has gone
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ROLES = ("system", "developer", "user", "assistant", "tool")
KNOWN_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "tools", "tool_choice", "temperature",
    "max_tokens", "max_completion_tokens", "top_p", "n", "stop", "user", "seed",
    "parallel_tool_calls", "response_format", "frequency_penalty", "presence_penalty",
    "logprobs", "top_logprobs", "logit_bias", "store", "metadata", "service_tier",
    "reasoning_effort", "modalities", "audio", "prediction", "safety_identifier"})


@dataclass
class ToolUse:
    """A tool call the scripted model makes. ``arguments``: a dict (sent as JSON) or a str
    (sent verbatim — it may be invalid JSON on purpose)."""

    name: str
    arguments: Any = field(default_factory=dict)
    id: str = ""

    def json_args(self) -> str:
        """The arguments as the JSON text the model "generates"."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass
class Reply:
    """One scripted answer and how to deliver it.

    ``text``: a str (split into word-sized deltas) or a list of the exact deltas.
    ``arg_piece``: characters of tool arguments per fragment (0 = all at once).
    ``interleave``: alternate the fragments of several calls (OpenAI index interleaving).
    ``finish_reason``: override (OpenAI ``finish_reason`` / Anthropic ``stop_reason``).
    ``usage_style``: OpenAI only — ``"chunk"`` (per ``stream_options``), ``"groq"``
    (``x_groq.usage`` on the finish chunk) or ``"none"``.
    Failures: ``status`` (+ ``error_type``/``error_message``) answers an HTTP error;
    ``delay_headers`` stalls before the response headers; ``stall_first`` after them, before
    the first event; ``error_after`` sends a mid-stream error event after that many events;
    ``drop_after`` aborts the connection after that many events; ``stall_after`` +
    ``stall_seconds`` pause mid-stream; ``hold_after`` keeps the stream open (writing nothing)
    after that many events until the client leaves or the fake stops; ``end_after`` ends the
    body cleanly after that many events (a truncated answer without its end marker).
    Misbehaviour: ``garbage_after`` replaces the events from that one on by ``garbage`` (each
    sent as one ``data:`` event — not JSON, or JSON of the wrong shape — then the body ends,
    as a broken proxy or another protocol would); ``endless`` repeats the text deltas without
    end (a server that ignores ``max_tokens``), until the client leaves.
    """

    text: str | list[str] = ""
    tool_calls: list[ToolUse] = field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    arg_piece: int = 3
    interleave: bool = False
    usage_style: str = "chunk"
    status: int | None = None
    error_type: str = ""
    error_message: str = ""
    delay_headers: float = 0.0
    stall_first: float = 0.0
    error_after: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    hold_after: int | None = None
    end_after: int | None = None
    garbage_after: int | None = None
    garbage: tuple[str, ...] = ("<html><body><h1>502 Bad Gateway</h1></body></html>",
                                "upstream connect error or disconnect/reset before headers")
    endless: bool = False

    def deltas(self) -> list[str]:
        """The text deltas."""
        if isinstance(self.text, list):
            return list(self.text)
        return re.findall(r"\s*\S+", self.text) if self.text.strip() else []


@dataclass
class LLMRequest:
    """One request as the fake saw it, and what it did with it."""

    path: str
    headers: dict[str, str]
    body: Any = None
    peer: Any = None                       # the client's (host, port): same = reused connection
    status: int = 200
    error: Any = None                      # the error body sent, if any
    events: list[bytes] = field(default_factory=list)   # the SSE events written
    first_byte_at: float | None = None     # time.perf_counter() just before the first body write
    completed: bool = False                # the whole stream was written and ended
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


class FakeLLMService:
    """Server lifecycle, the reply queue and paced SSE writing (shared by the LLM fakes)."""

    default_text = "Hello from the fake model."

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.models: set[str] | None = None
        self.replies: deque[Reply] = deque()
        self.requests: list[LLMRequest] = []
        self.chunk_size = 0              # 0 = one write per event
        self.event_delay = 0.0
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._ids = itertools.count(1)

    @property
    def last(self) -> LLMRequest:
        """The most recent request."""
        return self.requests[-1]

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies received, in order."""
        return [r.body for r in self.requests]

    async def start(self) -> str:
        """Listen on a random port of 127.0.0.1; returns the provider base URL to configure."""
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        return self.base_url(f"http://127.0.0.1:{port}")

    def base_url(self, root: str) -> str:
        """The base URL clients configure for this server."""
        return root

    async def stop(self) -> None:
        """Stop listening; held or stalled streams end."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def record(self, request: web.Request) -> LLMRequest:
        """Start the record of ``request``."""
        transport = request.transport
        rec = LLMRequest(request.path, dict(request.headers),
                         peer=transport.get_extra_info("peername") if transport else None)
        self.requests.append(rec)
        return rec

    def next_reply(self) -> Reply:
        """The next scripted reply (or the default one)."""
        return self.replies.popleft() if self.replies else Reply(self.default_text)

    def new_id(self, prefix: str) -> str:
        """A fresh id like the service's (``call_…``, ``toolu_…``, ``msg_…``)."""
        return f"{prefix}{next(self._ids):04d}{uuid.uuid4().hex[:20]}"

    @staticmethod
    def gone(request: web.Request) -> bool:
        """Whether the client has closed the connection."""
        transport = request.transport
        return transport is None or transport.is_closing()

    async def wait(self, request: web.Request, rec: LLMRequest, seconds: float) -> bool:
        """Wait ``seconds`` (inf = until the client leaves or the fake stops) unless the client
        leaves first; False if it left."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            if self.gone(request):
                rec.disconnected.set()
                return False
            await asyncio.sleep(POLL)
        if self.gone(request):       # left between the last look and the deadline
            rec.disconnected.set()
            return False
        return True

    async def stream(self, request: web.Request, rec: LLMRequest, reply: Reply,
                     events: Iterable[bytes], headers: dict[str, str]) -> web.StreamResponse:
        """Write ``events`` as a ``text/event-stream`` response, applying the reply's knobs.
        ``events`` must already contain any mid-stream error event at ``error_after`` (and
        be endless for an ``endless`` reply)."""
        if reply.delay_headers and not await self.wait(request, rec, reply.delay_headers):
            return web.Response(status=499)
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            **headers})
        await resp.prepare(request)
        if reply.stall_first and not await self.wait(request, rec, reply.stall_first):
            return resp
        if reply.end_after is not None:
            events = itertools.islice(events, reply.end_after)
        if reply.garbage_after is not None:
            events = itertools.chain(itertools.islice(events, reply.garbage_after),
                                     (sse(g) for g in reply.garbage))
        for n, event in enumerate(events):
            if n == reply.drop_after:
                assert request.transport is not None
                request.transport.abort()
                rec.disconnected.set()
                return resp
            if n == reply.hold_after:
                await self.wait(request, rec, float("inf"))
                return resp
            if n == reply.stall_after and not await self.wait(request, rec, reply.stall_seconds):
                return resp
            if self.event_delay and n and not await self.wait(request, rec, self.event_delay):
                return resp
            if self.gone(request):
                rec.disconnected.set()
                return resp
            step = self.chunk_size or len(event)
            try:
                for pos in range(0, len(event), step):
                    if rec.first_byte_at is None:
                        rec.first_byte_at = time.perf_counter()
                    await resp.write(event[pos:pos + step])
                    if self.chunk_size:
                        await asyncio.sleep(0)    # let each piece go out on its own
            except (ConnectionError, RuntimeError):
                rec.disconnected.set()
                return resp
            if len(rec.events) < 10_000:        # an endless stream's first ones suffice
                rec.events.append(event)
        try:
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            rec.disconnected.set()
            return resp
        rec.completed = True
        return resp


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event (``data`` JSON-encoded unless it is a str)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def endless(head: list[bytes], repeated: list[bytes]) -> Iterator[bytes]:
    """``head``, then ``repeated`` over and over: an answer that never ends."""
    yield from head
    while True:
        yield from repeated


def pieces(text: str, size: int) -> list[str]:
    """``text`` cut into ``size``-character pieces (``size`` 0: one piece)."""
    if not size or len(text) <= size:
        return [text]
    return [text[i:i + size] for i in range(0, len(text), size)]


def estimate_tokens(value: Any) -> int:
    """A rough token count (4 characters a token) for usage numbers."""
    return max(1, len(json.dumps(value)) // 4)


# --------------------------------------------------------------------------------------- OpenAI

OPENAI_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    404: ("invalid_request_error", "Not found."),
    429: ("requests", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", "The server had an error while processing your request. Sorry about "
                          "that!"),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


class BadRequest(Exception):
    """A request OpenAI would refuse (becomes its 4xx error body)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


class FakeOpenAIChat(FakeLLMService):
    """The fake OpenAI chat-completions service (see the module docstring)."""

    def __init__(self, api_key: str = "sk-test-fake-openai-key-0123456789") -> None:
        super().__init__(api_key)
        self.app.router.add_post("/v1/chat/completions", self._handle)
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)

    def base_url(self, root: str) -> str:
        return f"{root}/v1"

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {
            "message": f"Invalid URL ({request.method} {request.path})",
            "type": "invalid_request_error", "param": None, "code": None}}, status=404)

    def _auth(self, request: web.Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise BadRequest(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                status=401)
        key = header[7:].strip()
        if key != self.api_key:
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
            raise BadRequest(f"Incorrect API key provided: {masked}. You can find your API key "
                             "at https://platform.openai.com/account/api-keys.",
                             code="invalid_api_key", status=401)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = self.record(request)
        try:
            self._auth(request)
            try:
                rec.body = json.loads(await request.read())
            except ValueError:
                raise BadRequest("We could not parse the JSON body of your request. (HINT: This "
                                 "likely means you aren't using your HTTP library correctly.)")
            self.validate(rec.body)
        except BadRequest as exc:
            rec.status, rec.error = exc.status, exc.body
            return web.json_response(exc.body, status=exc.status)
        reply = self.next_reply()
        if reply.status:
            kind, message = OPENAI_ERRORS.get(reply.status, ("server_error", "Error."))
            body = {"error": {"message": reply.error_message or message,
                              "type": reply.error_type or kind, "param": None,
                              "code": "rate_limit_exceeded" if reply.status == 429 else None}}
            rec.status, rec.error = reply.status, body
            return web.json_response(body, status=reply.status)
        body = rec.body
        if not body.get("stream"):
            return web.json_response(self.completion(body, reply))
        return await self.stream(request, rec, reply, self.chunks(body, reply),
                                 {"x-request-id": f"req_{uuid.uuid4().hex}",
                                  "openai-processing-ms": "12"})

    # ---------------------------------------------------------------- validation

    def validate(self, body: Any) -> None:
        """Raise :class:`BadRequest` for what OpenAI would refuse."""
        if not isinstance(body, dict):
            raise BadRequest("Invalid type for request body: expected an object.")
        for key in body:
            if key not in KNOWN_FIELDS:
                raise BadRequest(f"Unrecognized request argument supplied: {key}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        if self.models is not None and model not in self.models:
            raise BadRequest(f"The model `{model}` does not exist or you do not have access "
                             "to it.", code="model_not_found", status=404)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("[] is too short - 'messages'", param="messages")
        pending: dict[str, int] = {}      # tool_call ids of the last assistant, unanswered
        for i, m in enumerate(messages):
            self._check_message(i, m, pending)
            if m["role"] != "tool" and pending:
                self._unanswered(i - 1, pending)
            if m["role"] == "assistant" and m.get("tool_calls"):
                pending = {c["id"]: i for c in m["tool_calls"]}
        if pending:
            self._unanswered(len(messages) - 1, pending)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("Invalid type for 'stream': expected a boolean.", param="stream")
        if "stream_options" in body:
            if not stream:
                raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' "
                                 "is enabled.", param="stream_options")
            if not isinstance(body["stream_options"], dict):
                raise BadRequest("Invalid type for 'stream_options'.", param="stream_options")
        tools = body.get("tools")
        if tools is not None:
            self._check_tools(tools)
        if "tool_choice" in body and not tools:
            raise BadRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed "
                             "when 'tools' are specified.", param="tool_choice")
        temperature = body.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float))
                                             and 0 <= temperature <= 2):
            raise BadRequest(f"Invalid 'temperature': expected a value between 0 and 2, but "
                             f"got {temperature} instead.", param="temperature",
                             code="decimal_above_max_value")
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise BadRequest(f"Invalid '{key}': integer below minimum value.", param=key)

    def _check_message(self, i: int, m: Any, pending: dict[str, int]) -> None:
        if not isinstance(m, dict):
            raise BadRequest(f"Invalid type for 'messages[{i}]': expected an object.")
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"Invalid value: '{role}'. Supported values are: 'system', "
                             "'assistant', 'user', 'tool', 'function', and 'developer'.",
                             param=f"messages[{i}].role", code="invalid_value")
        content = m.get("content")
        if content is None and not (role == "assistant" and m.get("tool_calls")):
            raise BadRequest("Invalid value for 'content': expected a string, got null.",
                             param=f"messages.[{i}].content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"Invalid type for 'messages[{i}].content'.",
                             param=f"messages[{i}].content")
        if role == "assistant" and "tool_calls" in m:
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not calls:
                raise BadRequest(f"Invalid 'messages[{i}].tool_calls': empty array.",
                                 param=f"messages[{i}].tool_calls")
            for j, c in enumerate(calls):
                where = f"messages[{i}].tool_calls[{j}]"
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not c["id"]:
                    raise BadRequest(f"Missing required parameter: '{where}.id'.",
                                     param=f"{where}.id")
                if c.get("type") != "function" or not isinstance(fn, dict):
                    raise BadRequest(f"Missing required parameter: '{where}.function'.",
                                     param=f"{where}.function")
                if not isinstance(fn.get("name"), str) or not fn["name"]:
                    raise BadRequest(f"Missing required parameter: '{where}.function.name'.",
                                     param=f"{where}.function.name")
                if not isinstance(fn.get("arguments"), str):
                    raise BadRequest(f"Invalid type for '{where}.function.arguments': expected "
                                     "a string, but got an object instead.",
                                     param=f"{where}.function.arguments",
                                     code="invalid_type")
        if role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or not cid:
                raise BadRequest(f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                                 param=f"messages[{i}].tool_call_id")
            if cid not in pending:
                raise BadRequest("Invalid parameter: messages with role 'tool' must be a response "
                                 "to a preceeding message with 'tool_calls'.",
                                 param=f"messages.[{i}].role")
            del pending[cid]

    @staticmethod
    def _unanswered(i: int, pending: dict[str, int]) -> None:
        at = min(pending.values())
        raise BadRequest("An assistant message with 'tool_calls' must be followed by tool "
                         "messages responding to each 'tool_call_id'. The following "
                         f"tool_call_ids did not have response messages: {', '.join(pending)}",
                         param=f"messages.[{at}].role")

    @staticmethod
    def _check_tools(tools: Any) -> None:
        if not isinstance(tools, list):
            raise BadRequest("Invalid type for 'tools': expected an array.", param="tools")
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
                raise BadRequest(f"Missing required parameter: 'tools[{i}].function'.",
                                 param=f"tools[{i}].function")
            name = fn.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise BadRequest(f"Invalid 'tools[{i}].function.name': string does not match "
                                 "pattern. Expected a string that matches the pattern "
                                 "'^[a-zA-Z0-9_-]+$'.", param=f"tools[{i}].function.name",
                                 code="invalid_value")
            if "description" in fn and not isinstance(fn["description"], str):
                raise BadRequest(f"Invalid type for 'tools[{i}].function.description'.",
                                 param=f"tools[{i}].function.description")
            params = fn.get("parameters")
            if params is not None and (not isinstance(params, dict)
                                       or params.get("type") != "object"):
                raise BadRequest(f"Invalid schema for function '{name}': schema must be a JSON "
                                 "Schema of 'type: \"object\"'.",
                                 param=f"tools[{i}].function.parameters",
                                 code="invalid_function_parameters")

    # ---------------------------------------------------------------- answers

    def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        prompt = reply.input_tokens if reply.input_tokens is not None else estimate_tokens(
            body["messages"])
        completion = reply.output_tokens if reply.output_tokens is not None else (
            len(reply.deltas()) + sum(len(c.json_args()) // 4 + 5 for c in reply.tool_calls))
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": reply.cached_tokens,
                                          "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    def _finish_reason(self, reply: Reply) -> str:
        return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")

    def chunks(self, body: dict[str, Any], reply: Reply) -> Iterable[bytes]:
        """The SSE events of a streamed answer."""
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_fake0001"}
        with_usage = reply.usage_style == "chunk" and bool(
            (body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]}
            if with_usage:
                out["usage"] = None
            return out

        deltas = reply.deltas()
        out = [chunk({"role": "assistant", "content": "" if deltas else None, "refusal": None})]
        if reply.endless:
            return endless([sse(c) for c in out], [sse(chunk({"content": d})) for d in deltas])
        out += [chunk({"content": d}) for d in deltas]
        per_call: list[list[dict[str, Any]]] = []
        for index, call in enumerate(reply.tool_calls):
            call.id = call.id or self.new_id("call_")
            frags = [{"index": index, "id": call.id, "type": "function",
                      "function": {"name": call.name, "arguments": ""}}]
            args = call.json_args()
            if reply.arg_piece == 0:
                frags[0]["function"]["arguments"] = args
            else:
                frags += [{"index": index, "function": {"arguments": p}}
                          for p in pieces(args, reply.arg_piece)]
            per_call.append(frags)
        if reply.interleave:
            ordered = [f for group in itertools.zip_longest(*per_call) for f in group if f]
        else:
            ordered = [f for frags in per_call for f in frags]
        out += [chunk({"tool_calls": [f]}) for f in ordered]
        finish = chunk({}, self._finish_reason(reply))
        if reply.usage_style == "groq":
            finish["x_groq"] = {"id": f"req_{uuid.uuid4().hex[:26]}",
                                "usage": self._usage(body, reply)}
        out.append(finish)
        if with_usage:
            out.append({**base, "choices": [], "usage": self._usage(body, reply)})
        events = [sse(c) for c in out]
        if reply.error_after is not None:
            events = events[:reply.error_after] + [sse({"error": {
                "message": reply.error_message or OPENAI_ERRORS[500][1],
                "type": reply.error_type or "server_error", "param": None, "code": None}})]
            return events
        return events + [sse("[DONE]")]

    def completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """A non-streamed ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.deltas())
                                   or None, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": c.id or self.new_id("call_"), "type": "function",
                 "function": {"name": c.name, "arguments": c.json_args()}}
                for c in reply.tool_calls]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self._finish_reason(reply)}],
                "usage": self._usage(body, reply), "system_fingerprint": "fp_fake0001"}


__all__ = ["FakeLLMService", "FakeOpenAIChat", "LLMRequest", "Reply", "ToolUse", "endless",
           "estimate_tokens", "pieces", "sse"]
