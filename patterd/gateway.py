"""The state one daemon process shares between its routes: config, metrics, calls, tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .call.dedupe import Deduper
from .call.registry import CallRegistry
from .config import Config
from .ops.logging import get_logger
from .ops.metrics import Metrics

log = get_logger("patterd.gateway")


@dataclass
class Gateway:
    """Everything a request handler needs; one per aiohttp application."""

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    registry: CallRegistry = field(default_factory=CallRegistry)
    deduper: Deduper = field(default_factory=Deduper)
    http: aiohttp.ClientSession | None = None
    ready: bool = False
    draining: bool = False
    sessions: set[Any] = field(default_factory=set)   # live media sessions of this process
    backends: Any = None                              # call.backends.Backends, at start-up
    control: Any = None                               # the carrier's CallControl
    carrier_name: str = ""
    store_writer: Any = None                          # store.StoreWriter, at start-up
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.registry = CallRegistry(max_call_seconds=self.config.agent.max_call_seconds)

    @property
    def accepting(self) -> bool:
        """Whether a new call may be answered now."""
        return (self.ready and not self.draining
                and self.registry.live_count() < self.config.server.max_calls)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(),
                      error=repr(task.exception()))

    def record_stream_end(self, session: Any, outcome: str, *, call_over: bool) -> None:
        """A media stream ended: keep its transcript (a call may have several streams) and,
        when the call is over, count it once."""
        rec = self.registry.ensure(session.call_id, session.carrier)
        rec.transcript.extend(line.as_dict() for line in session.transcript)
        rec.turns.extend(session.turn_latencies)
        self.registry.touch(rec)
        if call_over and self.registry.finish(session.call_id, session.carrier, outcome):
            self.metrics.calls_total.labels(rec.direction, outcome).inc()
            self.metrics.call_duration.labels(rec.direction).observe(session.duration)

    def session(self) -> aiohttp.ClientSession:
        """The shared outbound HTTP session (created at start-up)."""
        if self.http is None:
            raise RuntimeError("the HTTP client session is not started")
        return self.http


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
