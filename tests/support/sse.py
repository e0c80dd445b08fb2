"""A Server-Sent Events reader for tests: the wire format parsed by hand (no client library
between the test and what the daemon sends)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    """One event (``name`` ``""`` for a comment line, whose text is in ``comment``)."""

    id: str
    name: str
    data: Any
    comment: str = ""


class SseReader:
    """Reads events from an open ``text/event-stream`` response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.last_id = ""
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> SseEvent:
        """The next event (comments are collected in ``comments`` on the way)."""
        fields: dict[str, str] = {}
        data: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError("no event in time")
            raw = await asyncio.wait_for(self.resp.content.readline(), left)
            if not raw:
                raise EOFError("the event stream ended")
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data or "event" in fields:
                    if "id" in fields:
                        self.last_id = fields["id"]
                    return SseEvent(fields.get("id", ""), fields.get("event", "message"),
                                    json.loads("\n".join(data)) if data else None)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def until(self, predicate: Any, timeout: float = 10.0) -> list[SseEvent]:
        """Events up to and including the first for which ``predicate(event)`` holds."""
        out: list[SseEvent] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError(f"no matching event; got {[e.name for e in out]}")
            event = await self.next(left)
            out.append(event)
            if predicate(event):
                return out
