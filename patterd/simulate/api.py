"""A local stand-in for the carrier's REST API, so the daemon's commands (answer, hang up,
transfer, DTMF, TwiML updates) reach the simulator.

It listens on the host and port of ``carrier.api_base_url`` when that is a loopback URL; the
carrier modules (``twilio.py``, ``telnyx.py``) add their routes under the URL's path and
dispatch each request to the live simulated call it names.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiCall(Protocol):
    """A live simulated call, as the REST stand-in sees it."""

    async def on_rest(self, action: str, fields: dict[str, Any]) -> web.Response:
        """Apply a REST request to the call and return the carrier's answer."""
        ...


@dataclass(slots=True)
class ApiRequest:
    """One request the stand-in received."""

    at: float
    method: str
    path: str
    status: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


class CarrierApi:
    """The carrier's REST API on 127.0.0.1 (or wherever ``api_base_url`` points locally)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"carrier.api_base_url {base_url!r}: the simulator serves plain "
                             "http:// only (e.g. http://127.0.0.1:9090)")
        if not is_loopback(base_url):
            raise ValueError(f"carrier.api_base_url {base_url!r} is not a loopback URL")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.app = web.Application()
        self.calls: dict[str, ApiCall] = {}
        self.ended: set[str] = set()        # calls that are over (the carrier says so)
        self.requests: list[ApiRequest] = []
        self._runner: web.AppRunner | None = None

    def add_post(self, path: str, handler: Any) -> None:
        """Route ``POST {prefix}{path}``."""
        self.app.router.add_post(self.prefix + path, handler)

    def add_get(self, path: str, handler: Any) -> None:
        """Route ``GET {prefix}{path}``."""
        self.app.router.add_get(self.prefix + path, handler)

    def log(self, request: web.Request, status: int, fields: dict[str, Any]) -> None:
        """Remember a request (for reports on requests that matched no call)."""
        self.requests.append(ApiRequest(time.time(), request.method, request.path, status,
                                        fields))

    async def start(self) -> None:
        """Listen; raises ``OSError`` when the port is taken."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "CarrierApi":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
