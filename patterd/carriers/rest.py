"""The small HTTP client both carriers' REST modules share: auth, timeouts, bounded retries.

Retried: connection errors, timeouts, 429 and 5xx, with exponential backoff and jitter, because
the request is either idempotent (Telnyx ``command_id``; Twilio updates to a final state) or was
never received. Other 4xx are the caller's mistake and are returned at once.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp

from ..ops import trace as tracing

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Marks every answer of ``patterd simulate``'s stand-in for a carrier's REST API.
SIMULATOR_HEADER = "X-Patterd-Simulator"

SessionSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RestResponse:
    """A carrier API answer: status and the decoded JSON body (``{}`` when not JSON)."""

    status: int
    body: Any
    simulator: bool = False    # answered by patterd's simulator, not the carrier

    @property
    def ok(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300


class RestError(Exception):
    """A request that failed for good (after retries, or a non-retryable 4xx)."""

    def __init__(self, status: int, code: str, message: str, *,
                 unreachable: bool = False, simulator: bool = False) -> None:
        super().__init__(f"HTTP {status} {code}: {message}".strip())
        self.status = status
        self.code = code
        self.message = message
        self.unreachable = unreachable   # no connection could be made (refused, no route…)
        self.simulator = simulator       # the answer came from patterd's simulator
        self.reported = False   # already handed to a client's ``on_error`` hook


ErrorHook = Callable[[RestError], None]


class RestClient:
    """One carrier's REST endpoint."""

    def __init__(self, session: SessionSource, base_url: str, *,
                 headers: Mapping[str, str] | None = None,
                 attempts: int = 3, backoff: float = 0.25, timeout: float = 10.0,
                 on_error: ErrorHook | None = None) -> None:
        self._session = session
        self.on_error = on_error
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(self, method: str, path: str, *,
                      form: Sequence[tuple[str, str]] | None = None,
                      json_body: Mapping[str, Any] | None = None,
                      params: Mapping[str, str] | None = None) -> RestResponse:
        """Send one request with retries; returns the last response (any status)."""
        url = self.base_url + path
        last_exc: Exception | None = None
        for attempt in range(self._attempts):
            if attempt:
                delay = self._backoff * (2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random()))
            session = self._session if isinstance(self._session, aiohttp.ClientSession) \
                else self._session()
            try:
                async with session.request(
                        method, url, data=_form(form) if form is not None else None,
                        json=json_body, params=params,
                        headers=self._headers, timeout=self._timeout) as resp:
                    raw = await resp.read()
                    body = _decode(raw)
                    if resp.status in RETRY_STATUSES and attempt + 1 < self._attempts:
                        continue
                    return RestResponse(resp.status, body,
                                        simulator=SIMULATOR_HEADER in resp.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last_exc = exc
        raise RestError(0, "network", f"{method} {path} failed: {_why(last_exc, self._timeout)}",
                        unreachable=isinstance(last_exc, aiohttp.ClientConnectorError))

    def report(self, exc: RestError) -> None:
        """Hand a failed action to ``on_error`` (e.g. a metric), once per error."""
        if exc.reported or self.on_error is None:
            return
        exc.reported = True
        self.on_error(exc)


def reported(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a carrier REST action (a method of an object with a ``_client``
    :class:`RestClient`): a :class:`RestError` leaving it — the carrier refused, or the
    request never got an answer after the retries — is reported once, then re-raised.
    "Already ended" answers are not errors and never reach this. Within a traced call the
    action is a span ``carrier.<method>``."""
    action = method.__name__

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        span = tracing.begin("carrier." + action, **{"patterd.carrier.action": action})
        try:
            result = await method(*args, **kwargs)
        except RestError as exc:
            args[0]._client.report(exc)  # type: ignore[attr-defined]
            span.end(f"HTTP {exc.status} {exc.code}".strip(), **{
                "http.response.status_code": exc.status or None})
            raise
        except BaseException as exc:
            span.end(type(exc).__name__)
            raise
        span.end(**({"patterd.carrier.ok": result} if isinstance(result, bool) else {}))
        return result
    return run


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``): a local
    stand-in for a carrier's API (the simulator, a test), never the carrier itself."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _why(exc: Exception | None, timeout: aiohttp.ClientTimeout) -> str:
    """A network failure in words (not aiohttp's repr of its connection key)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason.lower()})"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout.total:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _form(fields: Sequence[tuple[str, str]]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields:  # repeated keys stay repeated (Twilio StatusCallbackEvent)
        data.add_field(name, value)
    return data


def _decode(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw[:500].decode("utf-8", "replace")}
