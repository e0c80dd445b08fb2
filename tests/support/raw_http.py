"""HTTP/1.1 over a plain asyncio socket, for what aiohttp's client will not do: a request sent
in several TCP writes with pauses between them, a head or body that never completes, a client
that hangs up mid-body."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    """The status line's code, the headers (lower-case names) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


def request_bytes(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 request (``Content-Length`` set, connection closed after it)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def split(data: bytes, pieces: int) -> list[bytes]:
    """``data`` cut into ``pieces`` nearly equal parts (none empty)."""
    step = max(1, -(-len(data) // pieces))
    return [data[i:i + step] for i in range(0, len(data), step)]


async def send_in_pieces(port: int, data: bytes, *, pieces: int = 4, delay: float = 0.05,
                         timeout: float = 10.0) -> RawResponse:
    """Write ``data`` in ``pieces`` TCP writes ``delay`` seconds apart (TCP_NODELAY, so each
    goes out as its own segment), then read the whole answer."""
    import socket

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i, piece in enumerate(split(data, pieces)):
            if i:
                await asyncio.sleep(delay)
            writer.write(piece)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return parse_response(raw)


def parse_response(raw: bytes) -> RawResponse:
    """One HTTP/1.1 response (body by Content-Length, or up to the end)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/1.1 "):
        raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return RawResponse(int(lines[0].split()[1]), headers, body)
