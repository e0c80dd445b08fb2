"""What the agent's actions do on a browser test call: there is no carrier, so a hang-up or a
transfer tells the page and closes its socket (the record notes the action as for a phone
call), and DTMF the agent sends is shown to the page."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web


STOP_GRACE = 5.0     # seconds the page has to answer a hang-up with ``stop``


async def _close_later(ws: web.WebSocketResponse, why: str) -> None:
    await asyncio.sleep(STOP_GRACE)
    if not ws.closed:
        await ws.close(code=1000, message=why.encode())


class BrowserControl:
    """The :class:`~patterd.carriers.base.CallControl` of browser calls (one per daemon)."""

    dtmf_ends_stream = False
    stop_keeps_call_up = False
    restream_overlaps = False
    movable = False          # the page is connected to this process: its calls drain here

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._spawn = spawn
        self._sockets: dict[str, web.WebSocketResponse] = {}

    def opened(self, call_id: str, ws: web.WebSocketResponse) -> None:
        """The page's socket of ``call_id``."""
        self._sockets[call_id] = ws

    def closed(self, call_id: str) -> None:
        """The socket is gone."""
        self._sockets.pop(call_id, None)

    async def _tell(self, call_id: str, frame: dict[str, Any], *, end: bool) -> bool:
        ws = self._sockets.get(call_id)
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError):
            return False
        if end:
            # The page answers with ``stop`` (the media loop ends and the call is recorded,
            # then the route closes the socket); one that does not is closed after a grace.
            self._sockets.pop(call_id, None)
            self._spawn(_close_later(ws, frame["event"]))
        return True

    async def restream(self, call_id: str, parameters: dict[str, str], handoff: str) -> bool:
        """A browser call cannot move: its page is connected to this process (False: it
        stays here and drains as before)."""
        return False

    async def stop_stream(self, call_id: str, stream_id: str) -> bool:
        """Nothing to stop: see :meth:`restream`."""
        return False

    async def hangup(self, call_id: str) -> bool:
        """Tell the page and close its socket (False: it had gone already)."""
        return await self._tell(call_id, {"event": "hangup"}, end=True)

    async def transfer(self, call_id: str, target: str) -> bool:
        """Tell the page where the call would go, and close its socket."""
        return await self._tell(call_id, {"event": "transfer", "to": target}, end=True)

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """Show the page the keys the agent pressed."""
        return await self._tell(call_id, {"event": "dtmf", "digits": digits}, end=False)

    async def start_recording(self, call_id: str, channels: str) -> str:
        """No carrier records a browser call (``recording.local_dir`` does): no id."""
        return ""


__all__ = ["BrowserControl"]
