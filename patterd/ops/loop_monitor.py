"""The event loop's own health, exported as metrics: how late it runs a ready callback, and
how many asyncio tasks are alive.

Every call of the process shares one event loop, so a stall (a blocking call, a long garbage
collection, too much work per tick) delays every call's audio. :func:`watch_loop` sleeps
``interval`` seconds at a time and observes how much later than asked it woke up in
``patterd_event_loop_lag_seconds`` (a histogram); at the same pace it sets
``patterd_asyncio_tasks`` to the number of tasks not yet done — a count that must come back to
its idle value once calls are over (a growing one is a leak). It runs supervised
(``supervisor.start("loop-monitor", …)``): costs one timer wake-up per interval.
"""

from __future__ import annotations

import asyncio

from .metrics import Metrics

__all__ = ["INTERVAL", "TASKS_EVERY", "watch_loop"]

INTERVAL = 0.05       # seconds between two wake-ups (20 lag samples a second)
TASKS_EVERY = 1.0     # seconds between two task counts (all_tasks() walks every task)


async def watch_loop(metrics: Metrics, *, interval: float = INTERVAL,
                     tasks_every: float = TASKS_EVERY) -> None:
    """Observe the loop's lag and count its tasks until cancelled."""
    loop = asyncio.get_running_loop()
    lag = metrics.loop_lag
    tasks = metrics.asyncio_tasks
    next_count = loop.time()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        woke = loop.time()
        lag.observe(max(0.0, woke - asked - interval))
        if woke >= next_count:
            next_count = woke + tasks_every
            tasks.set(len(asyncio.all_tasks(loop)))
