"""Retention (``store.retention_days``): a background loop that deletes old call records.

Every ``RETENTION_EVERY`` seconds (the first time ``RETENTION_FIRST_DELAY`` seconds after
start-up, so that start-up itself stays quick) the store deletes the calls that *ended* more
than the retention period ago. Live calls are never deleted: a call without an end is only
swept as a crashed replica's leftover once it has not been updated for longer than any call
may last. A sweep that fails (database down, file locked) is logged and tried again at the
next round; the loop only ends when cancelled (at shutdown).

Both intervals are module constants read when the loop starts, so tests can shorten them.
"""

from __future__ import annotations

import asyncio
import time

from ..ops.logging import get_logger
from .base import STALE_AFTER, Store

log = get_logger("patterd.store")

DAY = 86_400.0
#: Seconds between two sweeps.
RETENTION_EVERY = 3600.0
#: Seconds from start-up to the first sweep.
RETENTION_FIRST_DELAY = 60.0


async def run_retention(store: Store, keep_seconds: float, every_seconds: float, *,
                        first_delay: float = 0.0, stale_after: float | None = None) -> None:
    """Sweep calls ended more than ``keep_seconds`` ago after ``first_delay``, then every
    ``every_seconds``, until cancelled; a failed sweep is logged and tried again at the next
    round. ``stale_after``: how long a never-ended call must go without an update before it
    counts as abandoned (see ``Store.sweep``; default: the store's own, a day)."""
    if first_delay > 0:
        await asyncio.sleep(first_delay)
    while True:
        started = time.monotonic()
        try:
            if stale_after is None:
                deleted = await store.sweep(keep_seconds)
            else:
                deleted = await store.sweep(keep_seconds, stale_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # noqa: BLE001 - the loop outlives any store outage
            log.warning("store_retention_failed", error=str(exc) or type(exc).__name__,
                        retry_in=every_seconds)
        else:
            log.info("store_retention_swept", deleted=deleted, keep_seconds=keep_seconds,
                     took=round(time.monotonic() - started, 3))
        await asyncio.sleep(every_seconds)


async def retention_loop(store: Store, retention_days: float, *,
                         max_call_seconds: float = 3600.0) -> None:
    """The daemon's sweep for ``store.retention_days`` (> 0), at the module's intervals.

    ``max_call_seconds`` (``agent.max_call_seconds``) keeps the abandoned-call sweep clear of
    any call that may still be live, however long calls are allowed to be.
    """
    keep = float(retention_days) * DAY
    every, first = RETENTION_EVERY, RETENTION_FIRST_DELAY
    log.info("store_retention_started", retention_days=retention_days, every_seconds=every,
             first_in=first)
    await run_retention(store, keep, every, first_delay=first,
                        stale_after=max(STALE_AFTER, 2.0 * float(max_call_seconds)))
