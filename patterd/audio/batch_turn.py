"""The end-of-turn model for many calls: requests batched in one worker thread, within a budget.

A call's segmenter asks (:meth:`TurnBatcher.submit`) once the caller has been silent for the
short bound; the verdict comes back on the event loop through the request's callback. Each
request carries a deadline — the moment the segmenter would end the turn on silence alone — and
one that could not be answered by then is dropped (``late``): the call simply falls back to
silence-only turn-taking for that turn.

The model costs ~80 ms of CPU per request (any turn length), so it must not take the core the
calls' media needs: the worker spends at most ``cpu_share`` of one core, measured with the
worker thread's own CPU clock (a token bucket of CPU-seconds). Beyond that, requests wait and
expire — more calls mean more turns decided by silence, never a slower media path.

Supervised (component ``turn``, critical): a failed batch is reported with its call ids, its
requests answer nothing (silence decides), and the loop goes on; a loop that dies is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import numpy as np

from patterd.audio.turn_model import SmartTurnModel
from patterd.ops.supervise import RESTART_FIRST, Supervisor

__all__ = ["TurnBatcher", "TurnRequest"]

COMPONENT: Final = "turn"  # the supervisor's name for the batcher
BURST_SECONDS: Final = 0.5  # CPU-seconds the worker may spend at once after being idle


class TurnRequest:
    """One question to the model: ``pcm`` (s16le at ``rate``) ends at the candidate end point;
    ``on_verdict(probability)`` is called on the loop, unless :meth:`cancel` came first."""

    __slots__ = ("pcm", "rate", "deadline", "on_verdict", "label", "cancelled", "asked")

    def __init__(self, pcm: bytes, rate: int, deadline: float,
                 on_verdict: Callable[[float], None], label: str, asked: float) -> None:
        self.pcm, self.rate, self.deadline, self.label = pcm, rate, deadline, label
        self.on_verdict, self.asked = on_verdict, asked
        self.cancelled = False

    def cancel(self) -> None:
        """The answer is no longer wanted (the caller spoke again, the turn ended, the call
        ended): it is dropped if still queued, ignored if in flight."""
        self.cancelled = True
        self.pcm = b""


class TurnBatcher:
    """Answer :class:`TurnRequest` s with :class:`SmartTurnModel` in a worker thread, batching
    up to ``max_batch`` of them, spending at most ``cpu_share`` of a core."""

    def __init__(self, model: SmartTurnModel | None = None, *, max_batch: int = 4,
                 cpu_share: float = 0.5, supervisor: Supervisor | None = None,
                 restart_delay: float = RESTART_FIRST) -> None:
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError("cpu_share must be in (0, 1]")
        self.model = model or SmartTurnModel.get()
        self.supervisor = supervisor or Supervisor()
        self.restart_delay = restart_delay
        self.max_batch, self.cpu_share = max_batch, cpu_share
        self._queue: deque[TurnRequest] = deque()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, "turn-model")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._tokens = BURST_SECONDS        # CPU-seconds the worker may spend now
        self._refilled = time.monotonic()
        # counters (for metrics and benchmarks)
        self.answered = self.late = self.failed = 0
        self.cpu_seconds = 0.0

    def submit(self, pcm: bytes, rate: int, deadline: float,
               on_verdict: Callable[[float], None], *, label: str = "") -> TurnRequest:
        """Queue one request (called on the loop); ``deadline`` is in loop time."""
        loop = asyncio.get_running_loop()
        request = TurnRequest(pcm, rate, deadline, on_verdict, label, loop.time())
        self._queue.append(request)
        self._wake.set()
        if (self._task is None or self._task.done()) and not self._closed:
            self._task = self.supervisor.start(COMPONENT, self._loop, critical=True,
                                               first_delay=self.restart_delay)
        return request

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(BURST_SECONDS, self._tokens + (now - self._refilled) * self.cpu_share)
        self._refilled = now

    def _take(self, now: float) -> list[TurnRequest]:
        """Up to ``max_batch`` live requests, oldest first; expired ones are counted late."""
        batch: list[TurnRequest] = []
        while self._queue and len(batch) < self.max_batch:
            request = self._queue.popleft()
            if request.cancelled:
                continue
            if request.deadline <= now:
                self.late += 1
                request.cancel()
                continue
            batch.append(request)
        return batch

    def _predict(self, clips: list[tuple[bytes, int]]) -> tuple[np.ndarray, float]:
        """In the worker thread: the probabilities and the CPU time they took."""
        start = time.thread_time()
        probs = self.model.predict(clips)
        return probs, time.thread_time() - start

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            self._refill()
            if self._tokens <= 0.0:   # over budget: wait for the bucket, requests may expire
                await asyncio.sleep(-self._tokens / self.cpu_share + 0.001)
                self._refill()
            batch = self._take(loop.time())
            if not batch:
                continue
            clips = [(r.pcm, r.rate) for r in batch]
            try:
                probs, cpu = await loop.run_in_executor(self._pool, self._predict, clips)
                if np.shape(probs) != (len(batch),):
                    raise ValueError(f"the model answered shape {np.shape(probs)} for "
                                     f"{len(batch)} requests")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this batch only: silence decides
                self.failed += len(batch)
                labels = [r.label for r in batch if r.label]
                self.supervisor.report(COMPONENT, exc,
                                       call_id=labels[0] if len(labels) == 1 else "",
                                       detail="model run", requests=len(batch),
                                       **({"call_ids": labels[:10]} if len(labels) > 1 else {}))
                continue
            self._tokens -= cpu
            self.cpu_seconds += cpu
            for request, p in zip(batch, probs.tolist()):
                if request.cancelled:   # the caller spoke again, or silence decided meanwhile
                    continue
                self.answered += 1
                try:
                    request.on_verdict(p)
                except Exception as exc:  # noqa: BLE001 - that call's callback only
                    self.supervisor.report(COMPONENT, exc, call_id=request.label,
                                           detail="verdict callback")

    async def aclose(self) -> None:
        """Stop the task and the worker thread; queued requests stay unanswered."""
        self._closed = True
        for request in self._queue:
            request.cancel()
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)
