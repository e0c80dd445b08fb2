"""Shared webhook plumbing: bounded body reads, clear 4xx answers, per-route counting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..gateway import GATEWAY
from ..ops.logging import get_logger

log = get_logger("patterd.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(web.HTTPBadRequest):
    """400 with a JSON reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


class Forbidden(web.HTTPForbidden):
    """403 with a JSON reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


def parse_json(body: bytes | str) -> Any:
    """Decoded JSON, or a 400 with the reason (also for absurdly deep nesting and for
    ``\ud800``-style escapes that are not Unicode text)."""
    try:
        doc = json.loads(body)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise BadRequest("body is not valid JSON text") from None
    return doc


class ClientGone(web.HTTPClientError):
    """The client closed the connection before its body was read (nobody hears the answer;
    counted as ``499``, nginx's "client closed request", never as a server error)."""

    status_code = 499

    def __init__(self) -> None:
        super().__init__(text=json.dumps({"error": "the client closed the connection"}),
                         content_type="application/json")


async def read_body(request: web.Request, limit: int, timeout: float | None = None) -> bytes:
    """The whole raw body: 413 for anything over ``limit`` bytes (before reading it all when
    ``Content-Length`` says so), 408 when it has not all arrived within ``timeout`` seconds,
    :class:`ClientGone` when the client hangs up mid-body.

    ``request.content.read(n)`` returns only what has arrived so far: a body sent in several
    TCP segments (no buffering proxy in front) is read to its end here.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout):
            body = await _read_up_to(request.content, limit + 1)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=json.dumps({"error": f"the body did not arrive within {timeout:g} s"}),
            content_type="application/json", headers={"Connection": "close"}) from None
    except (HttpProcessingError, RequestPayloadError):
        raise BadRequest("body could not be read (bad Content-Encoding or framing)") from None
    except ConnectionError:
        raise ClientGone() from None
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def _read_up_to(stream: Any, n: int) -> bytes:
    """Read until EOF or ``n`` bytes, whichever comes first."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = await stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=limit + 1,
        text=json.dumps({"error": f"body larger than {limit} bytes"}),
        content_type="application/json")


def counted(carrier: str, endpoint: str) -> Callable[[Handler], Handler]:
    """Count each answer in ``patterd_webhook_requests_total``; turn stray bugs into a logged
    500 rather than a dropped connection."""

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            metrics = request.app[GATEWAY].metrics
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                metrics.webhook_requests.labels(carrier, endpoint, str(exc.status)).inc()
                raise
            except Exception:
                log.exception("webhook_handler_failed", carrier=carrier, endpoint=endpoint)
                metrics.webhook_requests.labels(carrier, endpoint, "500").inc()
                return web.json_response({"error": "internal error"}, status=500)
            metrics.webhook_requests.labels(carrier, endpoint, str(resp.status)).inc()
            return resp

        return run

    return wrap
