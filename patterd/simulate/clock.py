"""One 20 ms timer for many simulated callers.

Each caller sends a frame and plays 20 ms of audio per tick. With hundreds of concurrent calls a
timer per call costs more than the frames themselves, so :func:`simulate` shares one
:class:`Clock` between its calls; a lone call gets its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Protocol

TICK = 0.020


class Ticking(Protocol):
    """Something driven by the clock (a :class:`~patterd.simulate.caller.Caller`)."""

    counts: Counter[str]

    async def tick(self) -> None: ...


class Clock:
    """Ticks every member every 20 ms on absolute deadlines (no drift); runs while it has
    members. A stalled event loop is caught up frame by frame, like a carrier's jitter buffer
    draining; a stall over a second is skipped and counted (``counts["clock_slips"]`` of each
    member: the simulator itself was overloaded, so its figures are suspect)."""

    yield_when_late = True   # let the daemon's frames be read between late rounds

    def __init__(self, period: float = TICK) -> None:
        self.period = period
        self._members: list[Ticking] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, member: Ticking) -> None:
        """Start ticking ``member`` (from the next tick)."""
        self._members.append(member)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-clock")

    def remove(self, member: Ticking) -> None:
        """Stop ticking ``member``; the clock stops when nobody is left."""
        if member in self._members:
            self._members.remove(member)

    def round_done(self, late: float, busy: float, members: int) -> None:
        """After each round: how late it woke, how long ticking took (a hook for probes)."""

    def slipped(self) -> None:
        """A stall over a second was skipped (a hook for probes)."""

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            while self._members:
                delay = deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    self.slipped()
                    for member in self._members:
                        member.counts["clock_slips"] += 1
                    deadline = loop.time()
                woke = loop.time()
                members = list(self._members)
                for member in members:
                    await member.tick()
                self.round_done(woke - deadline, loop.time() - woke, len(members))
                deadline += self.period
                if self.yield_when_late and deadline <= loop.time():
                    # Catching up: let the daemon's frames be read between late rounds, or its
                    # audio piles up unread and looks like the daemon's lateness.
                    await asyncio.sleep(0)
        finally:
            self._task = None
