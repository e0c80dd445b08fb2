"""User tools (``llm.tools``): functions the model may call, each served by the user's HTTPS
endpoint.

:meth:`ToolRunner.run` POSTs ``{"name", "arguments", "call"}`` (signed with
``X-Patterd-Signature`` when the tool has a ``secret``) and hands the response body to the model.
A tool failure never raises: the model gets ``{"error": "..."}`` and can tell the caller.

Guard rails, because a tool URL is fetched on behalf of a phone call:

- a timeout per attempt, at most ``retries`` extra attempts (connection errors, timeouts,
  429 and 5xx only), with a short backoff;
- a response size cap, checked on ``Content-Length`` and again while reading, so an oversized
  body is never buffered;
- no private, loopback, link-local, multicast, reserved or unspecified address unless the tool
  says ``allow_private``: the check runs *after* DNS resolution, in the resolver the connection
  actually uses (so DNS rebinding cannot slip an internal address in), plus a check of hosts
  written as IP literals (aiohttp does not resolve those);
- redirects are not followed (one could point inside the network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from typing import TYPE_CHECKING, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from ...ops.logging import get_logger
from .base import ToolCall, ToolSpec
from .signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from ...config.model import ToolConfig

log = get_logger("patterd.llm.tools")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ERROR_EXCERPT = 300          # bytes of an endpoint's error body quoted to the model


class PrivateAddressError(OSError):
    """The tool's host is (or resolves only to) an address inside a private network."""


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; False for private, loopback, link-local,
    multicast, reserved, unspecified and CGNAT ones — also when wrapped in IPv6 (IPv4-mapped,
    6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried in IPv6 is reached as that IPv4 address: judge it as one.
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip.is_site_local:
            return False
    elif ip in _CGNAT:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def literal_host_problem(host: str) -> str | None:
    """Why a URL host written as an IP address may not be reached (None: fine, or a name)."""
    ip = _parse_ip(host)
    if ip is None:
        # aiohttp treats any all-digit or colon host as an address and skips the resolver;
        # refuse forms it would not parse the way we do (127.1, 2130706433, ...).
        if ":" in host or host.replace(".", "").isdigit():
            return f"{host} is not a canonical IP address"
        return None
    if not is_public_address(ip):
        return f"{host} is a private or reserved address"
    return None


class PublicOnlyResolver(AbstractResolver):
    """Resolves with ``inner`` (aiohttp's default resolver), then drops every address that is
    not public; raises :class:`PrivateAddressError` when nothing is left."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()
        self._owner = inner is None

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """The public addresses ``host`` resolves to."""
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        for r in results:
            ip = _parse_ip(r["host"].split("%", 1)[0])
            if ip is not None and is_public_address(ip):
                kept.append(r)
        if not kept:
            addrs = ", ".join(sorted({r["host"] for r in results})) or "nothing"
            raise PrivateAddressError(f"{host} resolves to a private or reserved address "
                                      f"({addrs})")
        return kept

    async def close(self) -> None:
        """Close the inner resolver if this one created it."""
        if self._owner:
            await self._inner.close()


class _ToolFailure(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message, self.retryable = message, retryable


def error_result(message: str) -> str:
    """A tool result the model reads as a failure."""
    return json.dumps({"error": message})


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, or None if it is longer than ``cap`` bytes (then at most ``cap + 1`` bytes
    have been read; the caller closes the connection rather than draining the rest)."""
    if resp.content_length is not None and resp.content_length > cap:
        return None
    buf = bytearray()
    while True:
        chunk = await resp.content.read(cap + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > cap:
            return None


def decode_body(resp: aiohttp.ClientResponse, body: bytes) -> str:
    """``body`` as text in the response's charset (UTF-8 by default), never raising."""
    try:
        return body.decode(resp.charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


class ToolRunner:
    """Runs the user's tools for every call of the daemon (one HTTP session per guard mode)."""

    def __init__(self, tools: tuple["ToolConfig", ...], *, resolver: AbstractResolver | None = None,
                 backoff: float = 0.2) -> None:
        """``resolver`` replaces aiohttp's default DNS resolver (the caller keeps closing it);
        ``backoff`` is the first pause before a retry (then doubled each time)."""
        self._tools = {t.name: t for t in tools}
        self._resolver = resolver
        self._backoff = backoff
        self._sessions: dict[bool, aiohttp.ClientSession] = {}   # allow_private → session
        self._resolvers: list[AbstractResolver] = []

    def specs(self) -> tuple[ToolSpec, ...]:
        """The tools as the model is offered them."""
        return tuple(ToolSpec(t.name, t.description, dict(t.parameters))
                     for t in self._tools.values())

    def has(self, name: str) -> bool:
        """Whether ``name`` is one of the user's tools."""
        return name in self._tools

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_private)
        if session is None or session.closed:
            if allow_private:
                resolver = self._resolver if self._resolver is not None else DefaultResolver()
            else:
                resolver = PublicOnlyResolver(self._resolver)
            if resolver is not self._resolver:
                self._resolvers.append(resolver)
            # trust_env stays off: an HTTP(S)_PROXY would connect to the proxy, not the
            # checked address.
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver),
                                            trust_env=False)
            self._sessions[allow_private] = session
        return session

    async def run(self, call: ToolCall, context: Mapping[str, str]) -> str:
        """Call the tool ``call.name`` and return what the model gets: the endpoint's response
        body, or ``{"error": ...}`` if the tool failed (never raises for a tool failure)."""
        tool = self._tools.get(call.name)
        if tool is None:
            log.warning("llm_tool_failed", tool=call.name, reason="unknown tool")
            return error_result(f"unknown tool {call.name!r}")
        host = URL(tool.url).host or ""
        attempts = 0
        try:
            problem = None if tool.allow_private else literal_host_problem(host)
            if problem is not None:
                raise _ToolFailure(f"refused: {problem} (set allow_private for endpoints on "
                                   "your own network)", False)
            body = json.dumps({"name": tool.name, "arguments": dict(call.arguments),
                               "call": dict(context or {})}, default=str).encode()
            while True:
                attempts += 1
                try:
                    return await self._attempt(tool, body)
                except _ToolFailure as exc:
                    if not exc.retryable or attempts > tool.retries:
                        raise
                    log.debug("llm_tool_retry", tool=tool.name, host=host, reason=exc.message)
                    await asyncio.sleep(self._backoff * 2 ** (attempts - 1))
        except _ToolFailure as exc:
            message = exc.message
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a tool must never break the call
            message = f"tool failed: {type(exc).__name__}"
        log.warning("llm_tool_failed", tool=tool.name, host=host, attempts=attempts,
                    reason=message)
        return error_result(message)

    async def _attempt(self, tool: "ToolConfig", body: bytes) -> str:
        headers = {"Content-Type": "application/json", "User-Agent": "patterd",
                   "Accept-Encoding": "identity"}
        if tool.secret:
            headers[SIGNATURE_HEADER] = sign(tool.secret, body)   # fresh timestamp per attempt
        session = self._session(tool.allow_private)
        try:
            async with session.post(tool.url, data=body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=tool.timeout)) as resp:
                if 300 <= resp.status < 400:
                    resp.close()
                    raise _ToolFailure(f"HTTP {resp.status}: redirect not followed", False)
                if resp.status >= 400:
                    excerpt = await resp.content.read(_ERROR_EXCERPT)
                    resp.close()
                    text = " ".join(decode_body(resp, excerpt).split())
                    raise _ToolFailure(f"HTTP {resp.status}" + (f": {text}" if text else ""),
                                       resp.status >= 500 or resp.status == 429)
                data = await read_capped(resp, tool.max_response_bytes)
                if data is None:
                    resp.close()
                    raise _ToolFailure(
                        f"response larger than {tool.max_response_bytes} bytes", False)
                return decode_body(resp, data) if data else json.dumps({"ok": True})
        except asyncio.TimeoutError:
            raise _ToolFailure(f"timed out after {tool.timeout:g} s", True) from None
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, PrivateAddressError):
                raise _ToolFailure(f"refused: {exc.os_error} (set allow_private for "
                                   "endpoints on your own network)", False) from None
            raise _ToolFailure(f"cannot resolve {exc.host}", True) from None
        except aiohttp.ClientError as exc:
            raise _ToolFailure(f"connection failed: {type(exc).__name__}", True) from None

    async def close(self) -> None:
        """Close the HTTP sessions. Idempotent."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        resolvers, self._resolvers = self._resolvers, []
        for resolver in resolvers:
            await resolver.close()


__all__ = ["PrivateAddressError", "PublicOnlyResolver", "ToolRunner", "decode_body",
           "error_result", "is_public_address", "literal_host_problem", "read_capped"]
