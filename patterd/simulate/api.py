"""A local stand-in for the carrier's REST API, so the daemon's commands (answer, hang up,
transfer, DTMF, TwiML updates) reach the simulator.

It listens on the host and port of ``carrier.api_base_url`` when that is a loopback URL; the
carrier modules (``twilio.py``, ``telnyx.py``) add their routes under the URL's path and
dispatch each request to the live simulated call it names.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from ..carriers.rest import SIMULATOR_HEADER


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _mark(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer says it is the simulator's: the daemon then knows that a call this stand-in
    does not know (one of another simulation run) is no carrier failure."""
    response.headers[SIMULATOR_HEADER] = "1"


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
    call_id: str = ""


Watcher = Callable[[ApiRequest], None]
CALL_ID = web.RequestKey("sim_call_id", str)    # the call a request created (set by routes)


def request_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """A request body as a dict: JSON as is; a form with repeated keys as lists."""
    if content_type == "application/json":
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return {"_raw": body.decode("utf-8", "replace")[:2000]}
        return doc if isinstance(doc, dict) else {"_json": doc}
    out: dict[str, Any] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if name in out:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[name] = value
    return out


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
        self.app = web.Application(middlewares=[self._watch])
        self.app.on_response_prepare.append(_mark)
        self.calls: dict[str, ApiCall] = {}
        self.ended: set[str] = set()        # calls that are over (the carrier says so)
        self.requests: list[ApiRequest] = []
        # outbound calls the simulator expects the daemon to place, by the number dialled
        self.pending: dict[str, list[Any]] = {}
        # call id → who wants every request about that call (outbound results)
        self.watchers: dict[str, Watcher] = {}
        # calls that are over: their final resource, for GETs (Twilio keeps calls)
        self.finished: dict[str, dict[str, Any]] = {}
        # Twilio's price of a finished call (e.g. "-0.0085"), in its resource from the end on;
        # None: never priced, as while Twilio has not priced it yet (its price fetches go on)
        self.call_price: str | None = None
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _watch(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Report every request about a watched call (``request[CALL_ID]`` or the
        ``{call}`` of the route) with the status it was answered."""
        try:
            resp = await handler(request)
            status = resp.status
        except web.HTTPException as exc:
            resp, status = exc, exc.status
        call_id = request.get(CALL_ID) or request.match_info.get("call", "")
        watcher = self.watchers.get(call_id) if call_id else None
        if watcher is not None:
            fields = request_fields(await request.read(), request.content_type)
            watcher(ApiRequest(time.time(), request.method, request.path, status, fields,
                               call_id))
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

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
