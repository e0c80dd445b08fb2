"""A user's own HTTP endpoint (a tool server, or the ``webhook`` agent) on 127.0.0.1.

It behaves like the endpoint we document for users: it accepts only ``POST`` with a JSON object
body, verifies ``X-Patterd-Signature`` with :func:`patterd.backends.llm.signing.verify` when it
has a secret (401 ``{"error": "invalid signature"}`` otherwise), records what it accepted and
answers with a scripted handler. Knobs inject the failures the client must survive.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal

from aiohttp import web

from patterd.backends.llm.signing import SIGNATURE_HEADER, verify

Answer = web.StreamResponse | dict | list | str | None
Handler = Callable[["Received"], Answer | Awaitable[Answer]]


@dataclass
class Received:
    """One request the endpoint got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None


def default_handler(req: Received) -> Answer:
    """Echo the tool name and arguments, like a trivial tool would."""
    return {"ok": True, "name": req.json.get("name"), "arguments": req.json.get("arguments")}


class UserEndpoint:
    """The fake endpoint. ``await start()`` gives its base URL (``http://127.0.0.1:PORT``).

    The handler gets the :class:`Received` request and returns a ``web.StreamResponse``, a
    dict/list (JSON), a str (``text/plain``) or None (``204``).
    """

    def __init__(self, secret: str = "", handler: Handler | None = None) -> None:
        self.secret = secret
        self.handler: Handler = handler or default_handler
        self.requests: list[Received] = []      # accepted (signature good), in order
        self.rejected: list[Received] = []      # refused: bad/missing signature, bad body
        # -- knobs --
        self.fail_times = 0                     # answer the next N requests with fail_status
        self.fail_status = 503
        self.stall = 0.0                        # seconds to wait before answering
        self.oversize: Literal["length", "chunked"] | None = None
        self.oversize_bytes = 32 * 1024 * 1024  # body size in oversize mode
        self.body_delay = 0.0                   # oversize mode: pause after the headers
        self.redirect_to: str | None = None     # answer 307 to this URL
        # -- what the oversize stream managed to send before the client hung up --
        self.oversize_sent = 0
        self.stream_done = asyncio.Event()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Listen on a random port of 127.0.0.1; return the base URL."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Release stalled handlers and shut down."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Received(request.method, request.path, dict(request.headers), body)
        if request.method != "POST":
            self.rejected.append(seen)
            return web.json_response({"error": "method not allowed"}, status=405)
        if request.content_type != "application/json":
            self.rejected.append(seen)
            return web.json_response({"error": "expected application/json"}, status=415)
        if self.secret and not verify(self.secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.rejected.append(seen)
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            seen.json = json.loads(body)
        except ValueError:
            seen.json = None
        if not isinstance(seen.json, dict):
            self.rejected.append(seen)
            return web.json_response({"error": "expected a JSON object"}, status=400)
        self.requests.append(seen)
        if self.redirect_to:
            return web.Response(status=307, headers={"Location": self.redirect_to})
        if self.fail_times > 0:
            self.fail_times -= 1
            return web.json_response({"error": "temporarily unavailable"},
                                     status=self.fail_status)
        if self.stall:
            try:
                await asyncio.wait_for(self._released.wait(), self.stall)
            except asyncio.TimeoutError:
                pass
        if self.oversize:
            return await self._stream_oversize(request)
        answer = self.handler(seen)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        if answer is None:
            return web.Response(status=204)
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="text/plain")
        return web.json_response(answer)

    async def _stream_oversize(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.oversize == "length":
            resp.content_length = self.oversize_bytes
        else:
            resp.enable_chunked_encoding()
        chunk = b" " * 65536
        try:
            await resp.prepare(request)
            if self.body_delay:
                try:
                    await asyncio.wait_for(self._released.wait(), self.body_delay)
                except asyncio.TimeoutError:
                    pass
            while self.oversize_sent < self.oversize_bytes:
                n = min(len(chunk), self.oversize_bytes - self.oversize_sent)
                await resp.write(chunk[:n])
                self.oversize_sent += n
            await resp.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass   # the client hung up: what we want to see
        finally:
            self.stream_done.set()
        return resp


__all__ = ["Received", "UserEndpoint", "default_handler"]
