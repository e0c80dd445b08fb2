"""The state one daemon process shares between its routes: config, metrics, calls, tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .call.dedupe import Deduper
from .call.evicted import recall
from .call.live import CallEvents
from .call.stream_gate import DialRefs
from .call.registry import TERMINAL, CallRecord, CallRegistry
from .config import Config
from .ops.cost import COMPONENTS, apply_carrier_price, breakdown
from .ops.events import EventBus
from .ops.logging import get_logger
from .ops.metrics import Metrics
from .ops.supervise import Supervisor

log = get_logger("patterd.gateway")

# A carrier said a call ended while its media stream was open here: the stream's close
# settles the outcome; if that never comes (a stuck session), the call is settled anyway.
SETTLE_GRACE = 30.0
# A webhook asks the replicas' shared store (is this delivery new? did another replica hold
# the call?) for at most this long, then goes ahead on its own; after a failure the store is
# not asked again for SHARED_CHECK_PAUSE seconds, so that a store that hangs (a partition, not
# a refused connection) delays at most one webhook, never every new call.
SHARED_CHECK_TIMEOUT = 1.0
SHARED_CHECK_PAUSE = 5.0


class LiveSessions(set[Any]):
    """This process's live media sessions. Adding one holds its call in the registry until
    the session's end is recorded (:meth:`Gateway.record_stream_end`), so that a carrier's
    "call ended" racing the stream's close waits for the session's own outcome."""

    def __init__(self, registry: CallRegistry) -> None:
        super().__init__()
        self.registry = registry

    def add(self, session: Any) -> None:
        """Track ``session`` and hold its call."""
        if session not in self:
            self.registry.hold(session.call_id)
        super().add(session)


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
    supervisor: Supervisor = field(default_factory=Supervisor)  # the shared workers' keeper
    shared_store_skip_until: float = 0.0   # monotonic time: until then, don't ask the store
    bus: EventBus = field(default_factory=EventBus)   # live events (GET /v1/events)
    events: Any = None                                # call.live.CallEvents, on the registry
    tracer: Any = None                                # ops.otel.OtelTracer when tracing
    dials: DialRefs = field(default_factory=DialRefs)  # which call each dial of ours became
    connections: Any = None                           # web.connections.ConnectionGuard (serve)

    def __post_init__(self) -> None:
        self.registry = CallRegistry(max_call_seconds=self.config.agent.max_call_seconds)
        self.sessions = LiveSessions(self.registry)
        errors = self.metrics.internal_errors
        self.supervisor = Supervisor(on_error=lambda component: errors.labels(component).inc())
        self.events = CallEvents(self.bus,
                                 on_error=lambda exc: self.supervisor.report("events", exc))
        self.registry.watchers.append(self.events)

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

    def supervise(self, component: str, run: Callable[[], Coroutine[Any, Any, Any]], *,
                  critical: bool = False) -> asyncio.Task[Any]:
        """Run a process-wide loop under the supervisor: ``run()`` is started again (with
        back-off) whenever it raises, and the task is cancelled with the others at shutdown.
        ``critical``: ``/readyz`` answers 503 while it waits to restart."""
        task = self.supervisor.start(component, run, critical=critical)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(),
                      error=repr(task.exception()))
            # a one-off task's bug (a loop's is the supervisor's to restart): counted too
            self.metrics.internal_errors.labels("background").inc()

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

    async def first_delivery(self, key: tuple[Any, ...], *, durable_for: float = 0.0) -> bool:
        """True the first time a webhook delivery is seen — by this process and, with
        replicas, by any of them (a carrier's retry may land on another replica). With
        ``durable_for`` (seconds) a single process remembers it in its store too, so that a
        replay after a restart is still refused (a Telnyx event within its signature window,
        a spent stream token). When the shared store cannot answer, it is processed (twice
        is better than never)."""
        if not self.deduper.first_time(key):
            return False
        if self.cluster is None:
            if durable_for <= 0 or self.store_writer is None or self._shared_store_paused():
                return True
            try:
                return bool(await _bounded(self.store_writer.store.first_seen(
                    "|".join(map(str, key)), durable_for)))
            except Exception as exc:  # noqa: BLE001 - fail open
                self._pause_shared_store()
                log.warning("store_dedupe_failed", error=str(exc) or type(exc).__name__)
                return True
        if self._shared_store_paused():
            return True
        try:
            return bool(await _bounded(self.cluster.first_delivery("|".join(map(str, key)))))
        except Exception as exc:  # noqa: BLE001 - fail open
            self._pause_shared_store()
            log.warning("cluster_dedupe_failed", error=str(exc) or type(exc).__name__)
            return True

    async def recall(self, call_id: str) -> CallRecord | None:
        """This process's record of ``call_id``, read back from the store if it was evicted
        from memory after its end (a late callback then merges into the stored record and
        the call stays over); None when unknown here. See :mod:`patterd.call.evicted`."""
        return await recall(self, call_id, _bounded)

    def _shared_store_paused(self) -> bool:
        return time.monotonic() < self.shared_store_skip_until

    def _pause_shared_store(self) -> None:
        self.shared_store_skip_until = time.monotonic() + SHARED_CHECK_PAUSE

    def backend_failed(self, layer: str, provider: str, exc: BaseException) -> None:
        """A provider failed (the failover chain moves on): count it and say why."""
        self.metrics.backend_errors.labels(layer, provider).inc()
        log.warning("backend_failed", backend=layer, provider=provider, error=str(exc))

    def carrier_error(self, provider: str) -> Callable[[Exception], None]:
        """The ``on_error`` hook of a carrier's REST client: each failed carrier action is
        counted once in ``patterd_backend_errors_total{backend="carrier"}``."""
        # The child is made at the first failure: no zero series for a carrier not in use.
        return lambda exc: self.metrics.backend_errors.labels("carrier", provider).inc()

    def record_stream_end(self, session: Any, outcome: str, *, call_over: bool) -> None:
        """A media stream ended. Its lines are in the call's record already (written as they
        happened, so a call of several streams has each line once); its usage and media time
        join the call's. When the call is over, it ends with the most specific outcome known
        — ``outcome`` (the session's own), else what the gateway expected or the carrier
        reported while the stream was closing — counted once, its media time observed once."""
        rec = self.registry.ensure(session.call_id, session.carrier)
        if rec is not session.record:   # the record was forgotten meanwhile: keep the lines
            rec.transcript.extend(session.record.transcript)
            rec.turns.extend(session.record.turns)
        session.credit_stt()
        session.record.streams.pop(session.stream_key, None)
        rec.usage.add(session.meter.total(session.speaker))
        rec.media_seconds += session.duration
        self.registry.release(session.call_id)
        if call_over:
            self.price_call(rec)
        self.registry.touch(rec)
        if call_over:
            self.finish_call(session.call_id, session.carrier, outcome,
                             duration=session.duration)

    def finish_call(self, call_id: str, carrier: str, outcome: str, *,
                    duration: float | None = None) -> bool:
        """End the call on the gateway's word (rejected, failed, voicemail, a session's
        end, …) with the most specific outcome known; counted in ``patterd_calls_total``
        the first time only (True then). ``duration`` is observed once per call."""
        rec = self.registry.ensure(call_id, carrier)
        ended = self.registry.finish(call_id, carrier, outcome)
        if ended:
            self.count_call(rec)
        self._observe(rec, duration)
        return ended

    def count_call(self, rec: CallRecord) -> None:
        """Count the ended call in ``patterd_calls_total`` by its outcome, once."""
        if not rec.counted:
            rec.counted = True
            self.metrics.calls_total.labels(rec.direction or "inbound", rec.outcome).inc()

    def expect_outcome(self, call_id: str, carrier: str, outcome: str) -> None:
        """The gateway is about to end the call through the carrier with ``outcome`` (say
        ``voicemail``): a carrier report of the hang-up that beats the REST answer keeps it.
        ``""`` takes it back (the REST request failed)."""
        self.registry.ensure(call_id, carrier).expected = outcome

    def carrier_status(self, call_id: str, carrier: str, status: str,
                       sequence: int | None = None, *, outcome: str = "",
                       seconds: float | None = None, count: bool = True,
                       **detail: Any) -> bool:
        """A carrier's status for the call (``detail`` goes to its history). A terminal one
        ends the call with ``outcome`` (default: the status), counted once, the carrier's
        ``seconds`` observed — unless a media stream of the call is open here: then it is
        only remembered, and the stream's end settles the call. True when it ended now.
        ``count=False`` (another replica held the call's stream, see :meth:`served_elsewhere`):
        the call ends in this record only; that replica counts, times and prices it."""
        rec = self.registry.ensure(call_id, carrier)
        was_live = rec.ended_at is None
        changed = self.registry.apply_status(call_id, carrier, status, sequence,
                                             outcome=outcome, **detail)
        if not (changed and was_live and status in TERMINAL):
            return False
        if rec.ended_at is None:
            # Held by a stream: the socket closing after this is the end of the call, not a
            # drop to clean up after (no hang-up, no "failed").
            for session in self.sessions:
                if session.call_id == call_id:
                    session.stream_stopped = True
            self.spawn(self._settle_later(call_id, carrier), name="settle-call")
            return False
        if not count:
            return False
        self.count_call(rec)
        self._observe(rec, seconds)
        return True

    async def served_elsewhere(self, call_id: str, carrier: str) -> bool:
        """Whether another replica held this call's media stream while this one saw none of
        it (a status callback that the load balancer sent here): then that replica counts
        and prices the call, not this one. False without replicas, or when the shared
        store cannot tell (counted twice rather than never)."""
        if self.cluster is None or any(s.call_id == call_id for s in self.sessions):
            return False
        rec = self.registry.get(call_id)
        if rec is not None and rec.media_seconds > 0 and not rec.billed_from_carrier:
            return False
        if self._shared_store_paused():
            return False
        try:
            return bool(await _bounded(self.cluster.stream_seen(call_id, carrier)))
        except Exception as exc:  # noqa: BLE001 - the database is away: decide here
            self._pause_shared_store()
            log.warning("cluster_stream_lookup_failed", call_id=call_id,
                        error=str(exc) or type(exc).__name__)
            return False

    async def _settle_later(self, call_id: str, carrier: str) -> None:
        await asyncio.sleep(SETTLE_GRACE)
        rec = self.registry.get(call_id)
        if rec is None or rec.ended_at is not None:
            return
        own = [s.outcome for s in self.sessions if s.call_id == call_id and s.outcome]
        log.warning("call_settled_without_stream_end", call_id=call_id,
                    outcome=own[0] if own else rec.carrier_outcome)
        while self.registry.held(call_id):
            self.registry.release(call_id)
        self.finish_call(call_id, carrier, own[0] if own else rec.carrier_outcome)

    def _observe(self, rec: CallRecord, duration: float | None) -> None:
        if duration is not None and not rec.timed:
            rec.timed = True
            self.metrics.call_duration.labels(rec.direction or "inbound").observe(duration)

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
            if rec.ended_at is not None and self.store_writer is not None:
                # Ended here without being priced (another replica served it): the price
                # joins the stored record as its own part.
                self.spawn(self._store_price(rec.call_id, price), name="carrier-price")
            return   # a live call: price_call applies it at the end
        before = rec.cost["carrier"]
        rec.cost = apply_carrier_price(rec.cost, price)
        if rec.cost["carrier"] > before:
            self.metrics.call_cost.labels("carrier").inc(rec.cost["carrier"] - before)
        self.registry.touch(rec)

    async def _store_price(self, call_id: str, price: float) -> None:
        await self.store_writer.flush(10)      # the record itself first
        for delay in (0.0, 1.0, 5.0, 30.0):   # the serving replica's write may still come
            await asyncio.sleep(delay)
            try:
                if await self.store_writer.store.add_carrier_price(call_id, price):
                    return
            except Exception as exc:  # noqa: BLE001 - the store is away: try again
                log.warning("carrier_price_store_failed", call_id=call_id, error=str(exc))
        log.warning("carrier_price_not_stored", call_id=call_id, price=price)

    def session(self) -> aiohttp.ClientSession:
        """The shared outbound HTTP session (created at start-up)."""
        if self.http is None:
            raise RuntimeError("the HTTP client session is not started")
        return self.http


async def _bounded(coro: Coroutine[Any, Any, Any]) -> Any:
    """``await coro`` for at most ``SHARED_CHECK_TIMEOUT`` s (``TimeoutError`` after). Unlike
    ``wait_for``, a late one is cancelled without waiting: a database driver's cancellation
    may itself wait on the unreachable server."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=SHARED_CHECK_TIMEOUT)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        raise TimeoutError(f"no answer within {SHARED_CHECK_TIMEOUT:g} s")
    return task.result()


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
