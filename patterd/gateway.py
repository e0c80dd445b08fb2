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
from .ops.cost import COMPONENTS, apply_carrier_price, breakdown
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
    retired: list[Any] = field(default_factory=list)  # backends replaced by a reload
    cluster: Any = None                               # cluster.ClusterNode (PostgreSQL store)

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

    async def release_retired(self, *, force: bool = False) -> None:
        """Close the backends a reload replaced once no live call uses them (all of them
        when ``force``, at shutdown)."""
        in_use = set() if force else {id(s.backends) for s in self.sessions}
        for backends in [b for b in self.retired if id(b) not in in_use]:
            self.retired.remove(backends)
            try:
                await backends.close()
            except Exception as exc:  # noqa: BLE001 - logged; nothing else depends on it
                log.warning("backends_close_failed", error=repr(exc))

    async def first_delivery(self, key: tuple[Any, ...]) -> bool:
        """True the first time a webhook delivery is seen — by this process and, with
        replicas, by any of them (a carrier's retry may land on another replica). When the
        shared store cannot answer, it is processed (twice is better than never)."""
        if not self.deduper.first_time(key):
            return False
        if self.cluster is None:
            return True
        try:
            return bool(await self.cluster.first_delivery("|".join(map(str, key))))
        except Exception as exc:  # noqa: BLE001 - fail open
            log.warning("cluster_dedupe_failed", error=str(exc))
            return True

    def backend_failed(self, layer: str, provider: str, exc: BaseException) -> None:
        """A provider failed (the failover chain moves on): count it and say why."""
        self.metrics.backend_errors.labels(layer, provider).inc()
        log.warning("backend_failed", backend=layer, provider=provider, error=str(exc))

    def record_stream_end(self, session: Any, outcome: str, *, call_over: bool) -> None:
        """A media stream ended: keep its transcript (a call may have several streams) and,
        when the call is over, count it once."""
        rec = self.registry.ensure(session.call_id, session.carrier)
        rec.transcript.extend(line.as_dict() for line in session.transcript)
        rec.turns.extend(session.turn_latencies)
        session.credit_stt()
        rec.usage.add(session.meter.total(session.speaker))
        rec.media_seconds += session.duration
        if call_over:
            self.price_call(rec)
        self.registry.touch(rec)
        if call_over and self.registry.finish(session.call_id, session.carrier, outcome):
            self.metrics.calls_total.labels(rec.direction, outcome).inc()
            self.metrics.call_duration.labels(rec.direction).observe(session.duration)

    def price_call(self, rec: Any) -> None:
        """Final cost of an ended call; counted in patterd_call_cost_usd_total once."""
        if rec.cost is not None:
            return
        cfg = self.config
        rec.cost = breakdown(cfg.pricing, carrier=rec.carrier, direction=rec.direction,
                             seconds=rec.media_seconds, stt=cfg.stt.provider,
                             llm=cfg.llm.provider, tts=cfg.tts.provider, usage=rec.usage)
        if rec.carrier_price is not None:
            rec.cost = apply_carrier_price(rec.cost, rec.carrier_price)
        for component in COMPONENTS:
            if rec.cost[component] > 0:
                self.metrics.call_cost.labels(component).inc(rec.cost[component])

    def carrier_priced(self, rec: Any, price: float) -> None:
        """The carrier reported the call's price: it replaces our estimate. (A counter cannot
        go down, so the metric only ever adds what the estimate missed.)"""
        rec.carrier_price = price
        if rec.cost is None:
            return
        before = rec.cost["carrier"]
        rec.cost = apply_carrier_price(rec.cost, price)
        if rec.cost["carrier"] > before:
            self.metrics.call_cost.labels("carrier").inc(rec.cost["carrier"] - before)
        self.registry.touch(rec)

    def session(self) -> aiohttp.ClientSession:
        """The shared outbound HTTP session (created at start-up)."""
        if self.http is None:
            raise RuntimeError("the HTTP client session is not started")
        return self.http


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
