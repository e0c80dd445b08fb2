"""Writing call records off the media path: coalesced, batched, retried, bounded.

``StoreWriter.submit`` only files the snapshot in memory (the newest per call wins) and wakes
a background task; that task writes batches in one transaction each. While the store is
unreachable it keeps the snapshots and retries with exponential backoff (with jitter, so
replicas don't retry in step), logging each failure and the recovery. Memory stays bounded:
past ``max_queue`` pending calls the oldest snapshot of a call still in progress is dropped
first (its next snapshot will carry everything again); a final one only when all are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from typing import Any

from ..ops.logging import get_logger
from .base import Store, StoreDataError, StoreError

log = get_logger("patterd.store")


class StoreWriter:
    """Background, never-blocking persistence of call snapshots to a ``Store``."""

    def __init__(self, store: Store, *, max_queue: int = 10_000, retry_base: float = 0.5,
                 retry_max: float = 30.0, batch_size: int = 200) -> None:
        self.store = store
        self.max_queue = max(1, int(max_queue))
        self.retry_base = float(retry_base)
        self.retry_max = float(retry_max)
        self.batch_size = max(1, int(batch_size))
        self.written = 0           # snapshots stored
        self.failed_attempts = 0   # write attempts that failed (each is retried)
        self.dropped = 0           # snapshots discarded because the queue was full
        self.rejected = 0          # snapshots the store refused as invalid (never retried)
        self._live: OrderedDict[str, dict[str, Any]] = OrderedDict()    # oldest first
        self._final: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = 0
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None

    @property
    def pending(self) -> int:
        """Snapshots not yet stored (queued or being written)."""
        return len(self._live) + len(self._final) + self._inflight

    def stats(self) -> dict[str, int]:
        """The counters, for metrics and logs."""
        return {"written": self.written, "failed_attempts": self.failed_attempts,
                "dropped": self.dropped, "rejected": self.rejected, "pending": self.pending}

    def submit(self, record: dict[str, Any]) -> None:
        """File a full snapshot of one call (``detail()`` shape plus ``cost``). Never blocks,
        never raises; call it from the event loop's thread."""
        try:
            call_id = record.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                self.rejected += 1
                log.warning("store_record_rejected", reason="no call_id")
                return
            self._live.pop(call_id, None)
            self._final.pop(call_id, None)
            queue = self._final if record.get("ended_at") is not None else self._live
            queue[call_id] = record
            self._trim()
            self._idle.clear()
            self._wake.set()
            self._ensure_task()
        except Exception:   # the media path must never see a store problem
            with contextlib.suppress(Exception):
                log.exception("store_submit_failed")

    def start(self) -> None:
        """Start the background task (``submit`` and ``flush`` also start it)."""
        self._ensure_task()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every pending snapshot to be stored, retrying at
        once (and then every ``retry_base``) if the store was down. True if all landed."""
        self._ensure_task()
        self._flushing += 1
        self._hurry.set()
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def close(self, timeout: float = 5.0) -> bool:
        """Flush (up to ``timeout``), then stop the task; True if nothing was left unwritten."""
        ok = await self.flush(timeout)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not ok:
            log.error("store_unflushed", **self.stats())
        return ok

    # -- internals ---------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # no loop yet: start() or the first submit on the loop will do it
        self._task = loop.create_task(self._run(), name="patterd-store-writer")

    def _trim(self) -> None:
        while len(self._live) + len(self._final) > self.max_queue:
            queue = self._live if self._live else self._final
            call_id, _ = queue.popitem(last=False)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("store_queue_full", call_id=call_id, dropped=self.dropped,
                            max_queue=self.max_queue)

    def _take(self) -> list[tuple[str, dict[str, Any]]]:
        batch: list[tuple[str, dict[str, Any]]] = []
        for queue in (self._final, self._live):   # finished calls first
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popitem(last=False))
        self._inflight = len(batch)
        return batch

    def _requeue(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Put unwritten snapshots back at the front, unless a newer one came meanwhile."""
        for call_id, record in reversed(batch):
            if call_id in self._live or call_id in self._final:
                continue
            queue = self._final if record.get("ended_at") is not None else self._live
            queue[call_id] = record
            queue.move_to_end(call_id, last=False)
        self._trim()

    async def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Store the batch; records the store refuses as invalid are set aside one by one.
        On another error ``batch`` is cut down to the records not yet written."""
        try:
            await self.store.upsert_calls([record for _, record in batch])
            self.written += len(batch)
            return
        except StoreDataError:
            if len(batch) == 1:
                raise
        for i, (call_id, record) in enumerate(batch):
            try:
                await self.store.upsert_call(record)
            except StoreDataError as exc:
                self.rejected += 1
                log.error("store_record_rejected", call_id=call_id, error=str(exc))
            except BaseException:
                del batch[:i]   # the caller puts back only what was not written
                raise
            else:
                self.written += 1

    async def _run(self) -> None:
        failures = 0
        while True:
            if not (self._live or self._final):
                self._inflight = 0
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            try:
                await self._write(batch)
            except StoreDataError as exc:   # a batch of one the store refuses: never retried
                self.rejected += 1
                log.error("store_record_rejected", call_id=batch[0][0], error=str(exc))
            except asyncio.CancelledError:
                self._requeue(batch)
                self._inflight = 0
                raise
            except Exception as exc:
                self._requeue(batch)
                self._inflight = 0
                failures += 1
                self.failed_attempts += 1
                await self._backoff(failures, exc)
                continue
            self._inflight = 0
            if failures:
                log.info("store_recovered", after_attempts=failures, written=self.written,
                         down_seconds=round(time.monotonic() - (self._down_since or 0.0), 3),
                         pending=self.pending)
                failures, self._down_since = 0, None

    async def _backoff(self, failures: int, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 30))
        delay *= random.uniform(0.75, 1.0)
        if self._flushing:
            delay = min(delay, self.retry_base)
        error = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        log.warning("store_write_failed", error=error, attempt=failures,
                    retry_in=round(delay, 3), pending=self.pending, dropped=self.dropped)
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._hurry.wait()

