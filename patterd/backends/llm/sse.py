"""Server-Sent Events over an aiohttp response, and the HTTP plumbing the streaming LLMs share.

:class:`SSEParser` is an incremental parser of the ``text/event-stream`` format (WHATWG HTML
§9.2): ``event:``/``data:``/``id:`` fields, multi-line ``data``, ``:`` comments, LF, CRLF or CR
line ends, and bytes split anywhere (inside a line, a UTF-8 character or a CRLF pair).
:class:`SSEStream` reads events from a response under two limits: the first token by an absolute
deadline (connect + time to first result), then at most ``token_timeout`` seconds of waiting
between two tokens. What counts as a token is the provider's to say (:meth:`SSEStream.progress`):
keep-alive comments, pings and empty chunks do not, so a server that keeps a stalled answer
open with them still times out. A body longer than ``max_bytes`` ends the stream too.
:func:`post_stream` opens the request and turns HTTP errors into :class:`BackendError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp

from ..errors import BackendError

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 65536      # bytes of an error answer read for its message
MAX_MESSAGE = 500           # characters of a provider message kept in a BackendError
MAX_STREAM_BYTES = 8 * 1024 * 1024
"""Bytes of one answer's event stream read at most: a catch-all for a stream that never ends
(the reply's length cap, ``max_reply_chars``, normally cuts a long answer far earlier)."""
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 529})


class SSEEvent(NamedTuple):
    """One dispatched event: its type (``message`` when no ``event:`` line), data and id."""

    event: str
    data: str
    id: str = ""


class SSETimeout(TimeoutError):
    """No token before the first-token deadline, or none for ``token_timeout`` seconds."""

    def __init__(self, first: bool, seconds: float) -> None:
        self.first = first
        what = "no first token within" if first else "stream stalled: no token for"
        super().__init__(f"{what} {seconds:.1f} s")


class SSETooLong(ValueError):
    """The event stream went past its byte limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer stream longer than {limit} bytes")


class SSEParser:
    """Feed it bytes as they arrive; it returns the events completed by them."""

    __slots__ = ("_buf", "_cr", "_data", "_event", "_id", "_started")

    def __init__(self) -> None:
        self._buf = b""          # an incomplete line (LF-normalised)
        self._cr = False         # the last chunk ended with CR: a leading LF is its partner
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self._started = False    # the BOM check is done

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; returns the events whose terminating blank line it contained."""
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buf = buf          # could still be a BOM: wait for more
                return []
            self._started = True
            if buf[:3] == b"\xef\xbb\xbf":
                buf = buf[3:]
        if b"\r" in buf:
            self._cr = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in buf:
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[SSEEvent] = []
        for raw in lines:
            if not raw:                              # blank line: dispatch
                if self._data:
                    out.append(SSEEvent(self._event or "message", "\n".join(self._data),
                                        self._id))
                    self._data = []
                self._event = ""
                continue
            if raw[0] == 58:                         # ":" comment (keep-alive)
                continue
            line = raw.decode("utf-8", "replace")
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\x00" not in value:
                self._id = value
            # "retry" and unknown fields are ignored
        return out


class SSEStream:
    """Events of one response, read under the first-token deadline, the inter-token timeout
    and the byte limit.

    The inter-token clock runs only while :meth:`read` waits: time the caller spends between
    reads (speaking a sentence) is not the server's stall, and the bytes that arrived meanwhile
    are read at once. :meth:`progress` (a token arrived) gives the next one the full
    ``token_timeout`` again; events that are not progress use up what is left of it."""

    __slots__ = ("_budget", "_bytes", "_content", "_deadline", "_first", "_max_bytes",
                 "_parser", "first_timeout", "token_timeout")

    def __init__(self, content: aiohttp.StreamReader, *, deadline: float, token_timeout: float,
                 first_timeout: float, max_bytes: int = MAX_STREAM_BYTES) -> None:
        self._content = content
        self._deadline = deadline      # loop time by which the first token must be in
        self._first = True
        self._budget = token_timeout   # waiting left before the next token is overdue
        self._bytes = 0
        self._max_bytes = max_bytes
        self._parser = SSEParser()
        self.first_timeout = first_timeout
        self.token_timeout = token_timeout

    def progress(self) -> None:
        """A token (text, a tool-call fragment, the end of the answer) arrived: the next one
        is due within ``token_timeout`` of waiting."""
        self._first = False
        self._budget = self.token_timeout

    async def read(self) -> list[SSEEvent] | None:
        """The next batch of events (never empty), or None at the end of the body.

        Raises :class:`SSETimeout`, :class:`SSETooLong`, or :class:`aiohttp.ClientError` on a
        broken connection."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                if self._first:
                    async with asyncio.timeout_at(self._deadline):
                        chunk = await self._content.readany()
                else:
                    async with asyncio.timeout(max(self._budget, 0.0)):
                        chunk = await self._content.readany()
            except TimeoutError:
                raise SSETimeout(self._first, self.first_timeout if self._first
                                 else self.token_timeout) from None
            if not self._first:
                self._budget -= loop.time() - began
            if not chunk:
                return None
            self._bytes += len(chunk)
            if self._bytes > self._max_bytes:
                raise SSETooLong(self._max_bytes)
            events = self._parser.feed(chunk)
            if events:
                return events


def retryable_status(status: int) -> bool:
    """Whether another attempt (or provider) might succeed: 408/409/429/5xx/529, not other 4xx."""
    return status >= 500 or status in RETRYABLE_STATUS


def error_detail(body: Any) -> tuple[str, str]:
    """``(message, type)`` of an error object in OpenAI's ``{"error":{"message","type"}}`` or
    Anthropic's ``{"type":"error","error":{"type","message"}}`` shape (either may be bare)."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            message = err.get("message") or err.get("detail") or ""
            kind = err.get("type") or err.get("code") or ""
            return str(message), str(kind)
        if isinstance(err, str):
            return err, ""
    return "", ""


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` in it, cut to :data:`MAX_MESSAGE` characters."""
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, "***")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def dumps(value: Any) -> bytes:
    """Compact JSON, turning read-only mappings (the config's MappingProxyType) into objects."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


async def post_stream(session: aiohttp.ClientSession, url: str, *, body: bytes,
                      headers: Mapping[str, str], deadline: float, provider: str,
                      secret: str) -> aiohttp.ClientResponse:
    """POST ``body`` and return the response once a 2xx event stream has started.

    The connect and the response headers must come by ``deadline`` (loop time). HTTP errors
    become :class:`BackendError` with the provider's own message (``secret`` never in it)."""
    try:
        async with asyncio.timeout_at(deadline):
            try:
                resp = await session.post(url, data=body, headers=headers)
            except aiohttp.ClientConnectorError:
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # a kept-alive connection the server had already closed (llama.cpp's server
                # closes them after a stream): nothing was processed, so try a fresh one once
                resp = await session.post(url, data=body, headers=headers)
    except TimeoutError:
        raise BackendError("llm", provider, "no response before the first-event deadline",
                           retryable=True) from None
    except aiohttp.ClientError as exc:
        raise BackendError("llm", provider, redact(f"connection failed: {exc}", secret),
                           retryable=True) from None
    if resp.status < 300:
        ctype = resp.headers.get("Content-Type", "")
        if "event-stream" in ctype:
            return resp
        resp.close()
        got = f"content type {ctype!r}" if ctype else "no content type"
        raise BackendError("llm", provider, f"expected an event stream, got {got}",
                           status=resp.status, retryable=False)
    try:
        async with asyncio.timeout_at(max(deadline, asyncio.get_running_loop().time() + 1.0)):
            raw = await resp.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    finally:
        resp.close()
    text = raw.decode("utf-8", "replace")
    try:
        message, kind = error_detail(json.loads(text))
    except ValueError:
        message, kind = text.strip()[:200], ""
    message = message or resp.reason or "HTTP error"
    raise BackendError("llm", provider, redact(f"{kind}: {message}" if kind else message, secret),
                       status=resp.status, retryable=retryable_status(resp.status))


async def finish(resp: aiohttp.ClientResponse, completed: bool) -> None:
    """Give the connection back for reuse after a complete stream (draining the last bytes
    briefly), or close it at once otherwise — a cancelled stream must stop the generation."""
    if completed and not resp.content.is_eof():
        try:
            async with asyncio.timeout(0.5):
                while await resp.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            completed = False
    if completed:
        resp.release()
    else:
        resp.close()


def parse_arguments(raw: str, tool: str, provider: str) -> dict[str, Any]:
    """A tool call's assembled JSON arguments as a dict; ``""`` is ``{}``. Invalid JSON (a
    truncated stream, a sloppy local model) is logged and becomes ``{}`` — never an exception."""
    if not raw or raw.isspace():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    # the arguments may hold what the caller said: log their size, not their content
    log.warning("llm %s: tool call %r has invalid JSON arguments (%d characters); using {}",
                provider, tool, len(raw))
    return {}


def new_session() -> aiohttp.ClientSession:
    """A client session for one provider: no overall timeout (our deadlines bound each stream),
    no connection cap (every call of the daemon may stream at once), warm keep-alive."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


__all__ = ["MAX_STREAM_BYTES", "SSEEvent", "SSEParser", "SSEStream", "SSETimeout", "SSETooLong",
           "dumps", "error_detail", "finish", "new_session", "parse_arguments", "post_stream",
           "redact", "retryable_status"]
