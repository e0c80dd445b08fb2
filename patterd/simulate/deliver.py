"""Webhook delivery for outbound calls: in order by default, like a carrier on a quiet day —
or, on demand, out of order and duplicated, as carriers do deliver them (so the daemon's
ordering by ``SequenceNumber`` / ``occurred_at`` and its de-duplication can be tested).

A carrier sends its callbacks asynchronously: the call goes on while they are in flight, so
:meth:`Deliveries.post` only queues; one worker sends them one after another.

``shuffle``: each pair of consecutive callbacks is delivered newest first (the first is held
back until the second exists; a lone last one goes when the call is over), so every callback
but possibly the last arrives after a later one. ``duplicate``: each callback is delivered a
second time right after the first (``attempt`` 2: same Twilio idempotency token and fields,
same Telnyx event id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Send = Callable[[int], Awaitable[None]]     # attempt number → deliver once


@dataclass(slots=True)
class Delivery:
    """One callback to deliver: ``send(attempt)`` posts it (and records the answer)."""

    kind: str
    send: Send
    reorder: bool = True        # may be shuffled (status callbacks); False: keep its place


class Deliveries:
    """A call's outgoing callbacks (see the module docstring)."""

    def __init__(self, *, shuffle: bool = False, duplicate: bool = False) -> None:
        self.shuffle, self.duplicate = shuffle, duplicate
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._held: Delivery | None = None
        self._worker: asyncio.Task[None] | None = None
        self.order: list[str] = []          # kinds in the order they were delivered

    def post(self, item: Delivery) -> None:
        """Queue a callback (returns at once)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="sim-callbacks")
        if self.shuffle and item.reorder:
            if self._held is None:
                self._held = item
                return
            held, self._held = self._held, None
            self._queue.put_nowait(item)
            self._queue.put_nowait(held)
            return
        self._queue.put_nowait(item)

    async def drain(self, timeout: float = 30.0) -> None:
        """Deliver what is held back and wait until every callback has been sent."""
        if self._held is not None:
            self._queue.put_nowait(self._held)
            self._held = None
        if self._worker is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except asyncio.TimeoutError:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            self.order.append(item.kind)
            await item.send(1)
            if self.duplicate:
                await item.send(2)
