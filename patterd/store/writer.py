"""Writing call records off the media path: coalesced, batched, retried, never dropped.

``StoreWriter.submit`` only files the snapshot in memory (the newest per call wins) and wakes
a background task; that task writes batches in one transaction each. While the store is
unreachable it keeps the snapshots and retries with exponential backoff (with jitter, so
replicas don't retry in step), logging each failure and the recovery.

No snapshot is ever discarded. Memory stays bounded because the queue holds one snapshot per
call (pending ≤ calls changed since their last write) and because, once ``max_queue``
snapshots are pending, the writer is *backed up*: the webhook door
(:mod:`patterd.web.backpressure`) then holds back requests that would add another call's
record until the queue is down to ``resume_at`` again, and ``/readyz`` answers 503. Live
calls' own snapshots are always taken (at most one per live call).

Once a call's latest snapshot is stored (none newer waits), ``on_settled(call_id)`` is told
(the call registry's :meth:`~patterd.call.registry.CallRegistry.settled`: an ended call may
then leave memory).

The task runs under the process's :class:`~patterd.ops.supervise.Supervisor` (component
``store``): a bug while writing (any exception that is not a ``StoreError``) is reported and
contained to the record that causes it, which is set aside and retried on its own schedule;
a task that dies or is cancelled is started again with every snapshot still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ops.logging import get_logger
from ..ops.supervise import Supervisor
from .base import Store, StoreDataError, StoreError

log = get_logger("patterd.store")

COMPONENT = "store"     # the supervisor's name for this worker (metrics, /readyz)

Batch = list[tuple[str, dict[str, Any]]]


@dataclass(slots=True)
class _SetAside:
    """A snapshot whose write raised a bug (not an outage): retried alone, later."""

    record: dict[str, Any]
    failures: int
    retry_at: float


class StoreWriter:
    """Background, never-blocking persistence of call snapshots to a ``Store``."""

    def __init__(self, store: Store, *, max_queue: int = 10_000, resume_at: int | None = None,
                 supervisor: Supervisor | None = None, retry_base: float = 0.5,
                 retry_max: float = 30.0, batch_size: int = 200) -> None:
        self.store = store
        self.max_queue = max(1, int(max_queue))   # high watermark: backed up from here
        low = self.max_queue * 4 // 5 if resume_at is None else int(resume_at)
        self.resume_at = min(max(0, low), self.max_queue - 1)   # ... until down to here
        self.supervisor = supervisor or Supervisor()
        self.retry_base = float(retry_base)
        self.retry_max = float(retry_max)
        self.batch_size = max(1, int(batch_size))
        self.written = 0           # snapshots stored
        self.failed_attempts = 0   # write attempts that failed (each is retried)
        self.rejected = 0          # snapshots the store refused as invalid (never retried)
        self.set_aside = 0         # snapshots whose write raised a bug (each is retried)
        self.waiting = 0           # callers waiting in ``room``
        self.reserved = 0          # webhooks let in that have not finished (``reserve``)
        self._live: OrderedDict[str, dict[str, Any]] = OrderedDict()    # oldest first
        self._final: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._aside: dict[str, _SetAside] = {}
        self._inflight = 0
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()   # set while not backed up
        self._room.set()
        self._backed_up = False
        self._rate = 0.0               # snapshots per second while writing (moving average)
        self._flushing = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        # Told of each call whose latest snapshot was stored (none newer waits); never raises.
        self.on_settled: Callable[[str], None] | None = None

    @property
    def pending(self) -> int:
        """Snapshots not yet stored (queued, set aside or being written)."""
        return len(self._live) + len(self._final) + len(self._aside) + self._inflight

    @property
    def backed_up(self) -> bool:
        """True from ``max_queue`` pending snapshots (reservations included) until they are
        down to ``resume_at``."""
        return self._backed_up

    def reserve(self) -> None:
        """A request that may add a call's snapshot was let in: it counts as one pending
        until ``release`` (so that requests let in together cannot overshoot the mark)."""
        self.reserved += 1
        self._pressure(reserving=True)

    def release(self) -> None:
        """The request of a ``reserve`` has finished (its snapshot, if any, is queued)."""
        self.reserved = max(0, self.reserved - 1)
        self._pressure()

    def holds(self, call_id: str) -> bool:
        """Whether a snapshot of ``call_id`` waits here (a newer one would replace it)."""
        return call_id in self._final or call_id in self._live or call_id in self._aside

    def stats(self) -> dict[str, int]:
        """The counters, for metrics and logs."""
        return {"written": self.written, "failed_attempts": self.failed_attempts,
                "rejected": self.rejected, "set_aside": self.set_aside,
                "pending": self.pending}

    def submit(self, record: dict[str, Any]) -> None:
        """File a full snapshot of one call (``detail()`` shape plus ``cost``). Never blocks,
        never raises, never refuses; call it from the event loop's thread."""
        try:
            call_id = record.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                self.rejected += 1
                log.warning("store_record_rejected", reason="no call_id")
                return
            self._live.pop(call_id, None)
            self._final.pop(call_id, None)
            self._aside.pop(call_id, None)   # the newer snapshot gets a fresh try
            queue = self._final if record.get("ended_at") is not None else self._live
            queue[call_id] = record
            self._pressure()
            self._idle.clear()
            self._wake.set()
            self._ensure_task()
        except Exception:   # the media path must never see a store problem
            with contextlib.suppress(Exception):
                log.exception("store_submit_failed")

    async def room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the writer is not backed up; True if so."""
        if not self._backed_up:
            return True
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while self._backed_up:
                    await self._room.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1

    def drain_eta(self) -> float | None:
        """Seconds until the backlog is down to ``resume_at`` at the recent write rate;
        None when no rate is known yet (say the store has been down since start)."""
        if self._rate <= 0:
            return None
        return max(0, self.pending - self.resume_at) / self._rate

    def start(self) -> None:
        """Start the background task (``submit`` and ``flush`` also start it)."""
        self._closing = False
        self._ensure_task()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every pending snapshot to be stored, retrying at
        once (and then every ``retry_base``) if the store was down. True if all landed.
        Snapshots set aside after a bug are tried once more; if they fail again, False."""
        self._ensure_task()
        self._flushing += 1
        self._hurry.set()
        now = time.monotonic()
        for entry in self._aside.values():
            entry.retry_at = min(entry.retry_at, now)
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
                    if self.pending and not (self._live or self._final or self._inflight) \
                            and not self._due_aside():
                        return False    # only records that failed again on a bug
            return True
        except TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def close(self, timeout: float = 5.0) -> bool:
        """Flush (up to ``timeout``), then stop the task; True if nothing was left unwritten."""
        ok = await self.flush(timeout)
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._backed_up:
            self._backed_up = False
            self._room.set()
            self.supervisor.mark_up(COMPONENT)
        if not ok:
            log.error("store_unflushed", **self.stats())
        return ok

    # -- internals ---------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._closing or (self._task is not None and not self._task.done()):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return   # no loop yet: start() or the first submit on the loop will do it
        self._task = self.supervisor.start(COMPONENT, self._run)
        self._task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The supervisor restarts a loop that raised; one that was cancelled from outside
        (not by ``close``) is started again here, so queued snapshots are not stranded."""
        if self._closing or task is not self._task or not task.cancelled():
            return
        self._task = None
        if self.pending:   # (with nothing queued, the next submit starts it)
            self.supervisor.report(COMPONENT, "writer task cancelled; restarting",
                                   pending=self.pending)
            self._ensure_task()

    def _pressure(self, *, reserving: bool = False) -> None:
        """Enter or leave the backed-up state (with hysteresis: max_queue → resume_at).
        Reservations count when one is taken and when leaving; not when a snapshot comes
        in (a request that holds a place files its snapshot before it gives the place back,
        and would count twice)."""
        pending = self.pending + self.reserved
        entering = pending if reserving else self.pending
        if not self._backed_up and entering >= self.max_queue:
            self._backed_up = True
            self._room.clear()
            log.warning("store_backed_up", pending=pending, max_pending=self.max_queue,
                        resume_at=self.resume_at)
            self.supervisor.mark_down(COMPONENT, f"{pending} records waiting for the store")
        elif self._backed_up and pending <= self.resume_at:
            self._backed_up = False
            self._room.set()
            log.info("store_caught_up", pending=pending, written=self.written)
            self.supervisor.mark_up(COMPONENT)

    def _due_aside(self) -> list[str]:
        now = time.monotonic()
        return [call_id for call_id, entry in self._aside.items() if entry.retry_at <= now]

    def _take(self) -> tuple[Batch, dict[str, int]]:
        """The next batch, and how often each set-aside record in it failed before."""
        batch: Batch = []
        for queue in (self._final, self._live):   # finished calls first
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popitem(last=False))
        failed_before: dict[str, int] = {}
        if not batch:   # set-aside records go one at a time: each may raise again
            for call_id in self._due_aside()[:1]:
                entry = self._aside.pop(call_id)
                batch.append((call_id, entry.record))
                failed_before[call_id] = entry.failures
        self._inflight = len(batch)
        return batch, failed_before

    def _requeue(self, batch: Batch) -> None:
        """Put unwritten snapshots back at the front, unless a newer one came meanwhile."""
        for call_id, record in reversed(batch):
            if self.holds(call_id):
                continue
            queue = self._final if record.get("ended_at") is not None else self._live
            queue[call_id] = record
            queue.move_to_end(call_id, last=False)
        batch.clear()

    def _put_aside(self, call_id: str, record: dict[str, Any], exc: Exception,
                   failures: int) -> None:
        """A bug (not an outage) while writing this record: report it with its call id and
        retry it alone after a back-off, unless a newer snapshot has come meanwhile."""
        self.set_aside += 1
        delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 30))
        self.supervisor.report(COMPONENT, exc, call_id=call_id, attempt=failures,
                               retry_in=round(delay, 3))
        if not self.holds(call_id):
            self._aside[call_id] = _SetAside(record, failures, time.monotonic() + delay)

    async def _write(self, batch: Batch, failed_before: dict[str, int]) -> None:
        """Store the batch. A record the store refuses as invalid is rejected; one whose
        write raises a bug is set aside (the others are written one by one). On a store
        error ``batch`` is cut down to the records not yet written and the error raised
        (the caller keeps them and retries)."""
        try:
            await self.store.upsert_calls([record for _, record in batch])
        except StoreDataError as exc:
            failure: Exception = exc
        except StoreError:
            raise              # an outage: retried as a whole
        except Exception as exc:  # noqa: BLE001 - a bug: contained to the record causing it
            failure = exc
        else:
            self.written += len(batch)
            for call_id, _ in batch:
                self._settled(call_id)
            batch.clear()
            return
        if len(batch) == 1:
            call_id, record = batch.pop()
            self._failed(call_id, record, failure, failed_before)
            return
        size, culprits = len(batch), 0
        while batch:
            call_id, record = batch[0]
            try:
                await self.store.upsert_call(record)
            except StoreDataError as exc:
                self._failed(call_id, record, exc, failed_before)
            except StoreError:
                raise          # the store went away meanwhile: the rest is retried
            except Exception as exc:  # noqa: BLE001 - contained to this record
                culprits += 1
                self._failed(call_id, record, exc, failed_before)
            else:
                self.written += 1
                self._settled(call_id)
            del batch[0]
        if not isinstance(failure, StoreDataError) and not culprits:
            # No single record raises it (a bug in batching itself?): reported once.
            self.supervisor.report(COMPONENT, failure, batch=size,
                                   detail="batch write failed; its records written one by one")

    def _settled(self, call_id: str) -> None:
        """Tell ``on_settled`` that ``call_id``'s snapshot just stored is its latest."""
        if self.on_settled is None or self.holds(call_id):
            return
        try:
            self.on_settled(call_id)
        except Exception as exc:  # noqa: BLE001 - the writer goes on whatever the hook does
            self.supervisor.report(COMPONENT, exc, call_id=call_id, detail="on_settled")

    def _failed(self, call_id: str, record: dict[str, Any], exc: Exception,
                failed_before: dict[str, int]) -> None:
        if isinstance(exc, StoreDataError):   # the database refuses this value: never retried
            self.rejected += 1
            log.error("store_record_rejected", call_id=call_id, error=str(exc))
        else:
            self._put_aside(call_id, record, exc, failed_before.get(call_id, 0) + 1)

    async def _run(self) -> None:
        failures = 0
        while True:
            batch, failed_before = self._take()
            if not batch:
                self._inflight = 0
                self._pressure()
                self._idle.set()
                self._wake.clear()
                await self._sleep_until_work()
                continue
            began = time.monotonic()
            try:
                await self._write(batch, failed_before)
            except StoreError as exc:   # the store is away: keep everything, back off
                self._requeue(batch)
                self._inflight = 0
                failures += 1
                self.failed_attempts += 1
                self._pressure()
                await self._backoff(failures, exc)
                continue
            except BaseException:       # cancelled, or a bug here: nothing is lost
                self._requeue(batch)
                self._inflight = 0
                raise
            self._note_rate(self._inflight, time.monotonic() - began)
            self._inflight = 0
            self._pressure()
            if failures:
                log.info("store_recovered", after_attempts=failures, written=self.written,
                         down_seconds=round(time.monotonic() - (self._down_since or 0.0), 3),
                         pending=self.pending)
                failures, self._down_since = 0, None

    async def _sleep_until_work(self) -> None:
        """Until a submit or flush wakes the loop, or a set-aside record is due."""
        timeout = None
        if self._aside:
            soonest = min(entry.retry_at for entry in self._aside.values())
            timeout = max(0.0, soonest - time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _note_rate(self, count: int, seconds: float) -> None:
        if count <= 0:
            return
        rate = count / max(seconds, 1e-3)
        self._rate = rate if self._rate <= 0 else 0.7 * self._rate + 0.3 * rate

    async def _backoff(self, failures: int, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 30))
        delay *= random.uniform(0.75, 1.0)
        if self._flushing:
            delay = min(delay, self.retry_base)
        log.warning("store_write_failed", error=str(exc), attempt=failures,
                    retry_in=round(delay, 3), pending=self.pending)
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._hurry.wait()
