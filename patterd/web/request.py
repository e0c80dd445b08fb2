"""Shared webhook plumbing: bounded body reads, clear 4xx answers, per-route counting."""

from __future__ import annotations

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


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes before reading it all."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        body = await request.content.read(limit + 1)
    except (HttpProcessingError, RequestPayloadError):
        raise BadRequest("body could not be read (bad Content-Encoding or framing)") from None
    if len(body) > limit:
        raise _too_large(limit)
    return body


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
