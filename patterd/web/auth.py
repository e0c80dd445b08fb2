"""The admin token: ``Authorization: Bearer <admin.token>``, compared in constant time.

Every ``/v1`` route and every console API and event route goes through :func:`bearer_guard`;
a missing or wrong token is a 401 with ``WWW-Authenticate: Bearer`` (and a JSON reason).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_matches(given: str, token: bytes) -> bool:
    """Whether ``given`` is the token (constant time; never True for an empty token)."""
    return bool(token) and hmac.compare_digest(given.strip().encode("utf-8", "replace"), token)


def bearer_ok(request: web.Request, token: bytes) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(value, token)


def unauthorized() -> web.Response:
    """The 401 answer."""
    return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                             headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"})


def bearer_guard(token: bytes) -> Callable[[Handler], Handler]:
    """A decorator answering 401 unless the request carries the bearer ``token``."""
    def guarded(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            if not bearer_ok(request, token):
                return unauthorized()
            return await handler(request)
        return run
    return guarded


__all__ = ["Handler", "bearer_guard", "bearer_ok", "token_matches", "unauthorized"]
