"""Retention (``store.retention_days``): a background loop that deletes old call records.

Every ``RETENTION_EVERY`` seconds (the first time ``RETENTION_FIRST_DELAY`` seconds after
start-up, so that start-up itself stays quick) the store deletes the calls that *ended* more
than the retention period ago. Live calls are never deleted: a call without an end is only
swept as a crashed replica's leftover once it has not been updated for longer than any call
may last. A sweep that fails (database down, file locked) is logged and tried again at the
next round; the loop only ends when cancelled (at shutdown).

The period is read at every round, so a reload (SIGHUP) changes it without a restart. Both
intervals are module constants read when the loop starts, so tests can shorten them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..ops.logging import get_logger
from ..ops.supervise import Supervisor
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
        await sweep_once(store, keep_seconds, stale_after, every_seconds)
        await asyncio.sleep(every_seconds)


async def sweep_once(store: Store, keep_seconds: float, stale_after: float | None,
                     retry_in: float) -> bool:
    """One sweep; a failure is logged (with when it is tried again), never raised.
    True if it succeeded."""
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
                    retry_in=retry_in)
        return False
    log.info("store_retention_swept", deleted=deleted, keep_seconds=keep_seconds,
             took=round(time.monotonic() - started, 3))
    return True


async def retention_loop(store: Store, settings: Callable[[], tuple[float, float]],
                         on_swept: Callable[[float], object] | None = None, *,
                         supervisor: Supervisor | None = None) -> None:
    """The daemon's sweep for ``store.retention_days``, at the module's intervals.

    ``settings`` returns ``(retention_days, max_call_seconds)`` and is read at every round,
    so a reload (SIGHUP) that changes the period takes effect at the next round; 0 days
    skips the sweep. ``max_call_seconds`` (``agent.max_call_seconds``) keeps the
    abandoned-call sweep clear of any call that may still be live, however long calls are
    allowed to be. One replica sweeps at a time (``Store.exclusive``). ``on_swept(cutoff)``
    is told after each round, so that the records kept in memory (the call registry) forget
    what the store deleted (or another replica's sweep did). A round that fails (the store
    down, a bug) is logged and counted by ``supervisor`` (component ``retention``); the next
    round tries again.
    """
    every, first = RETENTION_EVERY, RETENTION_FIRST_DELAY
    days, _ = settings()
    log.info("store_retention_started", retention_days=days, every_seconds=every,
             first_in=first)
    await asyncio.sleep(first)
    announced = days
    while True:
        try:
            announced = await _retention_round(store, settings, on_swept, announced, every,
                                               supervisor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - this round only
            log.warning("store_retention_failed", error=str(exc) or type(exc).__name__,
                        retry_in=every)
            if supervisor is not None:
                supervisor.report("retention", exc)
        await asyncio.sleep(every)


async def _retention_round(store: Store, settings: Callable[[], tuple[float, float]],
                           on_swept: Callable[[float], object] | None, announced: float,
                           every: float, supervisor: Supervisor | None) -> float:
    """One round of :func:`retention_loop`; returns the period now announced."""
    days, max_call_seconds = settings()
    if days != announced:
        log.info("store_retention_changed", retention_days=days, was=announced)
        announced = days
    if days <= 0:
        return announced
    keep = float(days) * DAY
    stale = max(STALE_AFTER, 2.0 * float(max_call_seconds))
    try:
        async with store.exclusive("retention") as mine:   # one replica sweeps
            if mine and not await sweep_once(store, keep, stale, every):
                if supervisor is not None:
                    supervisor.report("retention", "sweep failed (see store_retention_failed)")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store is down: next round
        log.warning("store_retention_failed", error=str(exc) or type(exc).__name__,
                    retry_in=every)
        if supervisor is not None:
            supervisor.report("retention", exc)
    if on_swept is not None:   # another replica's sweep deleted them as well
        on_swept(time.time() - keep)
    return announced
