"""The process's live event bus: a bounded ring of numbered events, read by cursor.

Producers call :meth:`EventBus.publish` (synchronous, never blocks, no task per event); each
event is encoded once, as the Server-Sent Events lines every subscriber is sent. Readers keep
a cursor (the id of the last event they have) and ask for what came after it
(:meth:`EventBus.since`), waiting with :meth:`EventBus.wait` when there is nothing new — no
queue per subscriber, so a slow reader costs nothing but its cursor. A reader that fell
further behind than the ring holds is told so (``gap``) and must reload its state.

Ids are integers that only grow, also across restarts: the first id of a process is the
boot time in microseconds, so a cursor from an earlier process is always recognised as a gap
(not mistaken for a position in this one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_CAPACITY = 20_000
#: The ring's bound in encoded bytes as well (~4,500 typical events, ~1.6 MiB in memory): it
#: is a replay window for readers that reconnect (a reader further behind reloads /v1/live),
#: and its memory must stop growing soon after start whatever the traffic — bounded by count
#: alone, a daemon's ring grew ~13 MiB over the first half hour of a churn soak.
DEFAULT_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its id, name, call and Server-Sent Events encoding. Only the
    encoding is kept (the fields' Python objects would cost several times its size);
    :attr:`data` decodes it."""

    id: int
    name: str
    call_id: str
    wire: bytes

    @property
    def data(self) -> dict[str, Any]:
        """The event's fields, decoded from its encoding."""
        body = self.wire.split(b"\ndata: ", 1)[1]
        return dict(json.loads(body))


def encode(event_id: int, name: str, data: dict[str, Any]) -> bytes:
    """The SSE lines of one event (JSON escapes newlines, so ``data`` is one line)."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {event_id}\nevent: {name}\ndata: {body}\n\n".encode()


class EventBus:
    """Numbered events in a ring of at most ``capacity`` events and ``max_bytes`` encoded
    bytes (the newest event is always kept); see the module docstring."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, first_id: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._ring: deque[Event] = deque(maxlen=max(1, capacity))
        self.max_bytes = max(1, max_bytes)
        self.bytes = 0          # encoded bytes the ring holds
        self.first_id = time.time_ns() // 1000 if first_id is None else first_id
        self._next = self.first_id
        self._wake: asyncio.Future[None] | None = None
        self.published = 0
        self.closed = False

    @property
    def last_id(self) -> int:
        """The id of the latest event (``first_id - 1`` before any)."""
        return self._next - 1

    def publish(self, name: str, data: dict[str, Any]) -> Event:
        """Add an event and wake the readers waiting for one."""
        call_id = data.get("call_id")
        event = Event(self._next, name, call_id if isinstance(call_id, str) else "",
                      encode(self._next, name, data))
        self._next += 1
        ring = self._ring
        if len(ring) == ring.maxlen:
            self.bytes -= len(ring[0].wire)
        ring.append(event)
        self.bytes += len(event.wire)
        while self.bytes > self.max_bytes and len(ring) > 1:
            self.bytes -= len(ring.popleft().wire)
        self.published += 1
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)
        return event

    def since(self, after: int) -> tuple[list[Event], bool]:
        """The events after id ``after``, oldest first, and whether some were lost to the
        reader (older than the ring holds, or ``after`` is not from this process)."""
        last = self.last_id
        if after >= last:
            return [], after > last        # a cursor from the future: another process's
        if after < self.first_id - 1:
            return list(self._ring), True
        ring = self._ring
        if not ring:
            return [], True
        oldest = ring[0].id
        if after + 1 < oldest:
            return list(ring), True
        start = after + 1 - oldest         # ids are consecutive within the ring
        if start == 0:
            return list(ring), False
        return [ring[i] for i in range(start, len(ring))], False

    def close(self) -> None:
        """The process is stopping: wake every waiting reader (they see ``closed``)."""
        self.closed = True
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until an event after ``after`` exists (True) or ``timeout`` passed or the bus
        closed (False)."""
        if self.last_id > after or self.closed:
            return self.last_id > after
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._wake), timeout)
        except asyncio.TimeoutError:
            pass
        return self.last_id > after


__all__ = ["DEFAULT_CAPACITY", "Event", "EventBus", "encode"]
