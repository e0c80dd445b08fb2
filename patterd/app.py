"""The aiohttp application: routes, the shared HTTP client, start-up and shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from .call.records import snapshot
from .call.recovery import run_recovery
from .carriers.base import Carrier
from .store import StoreWriter, open_store, retention_loop
from .config import Config
from .config.masking import mask_url
from .gateway import GATEWAY, Gateway
from .ops.logging import get_logger
from .startup import starting
from .ops.loop_monitor import watch_loop
from .web import backpressure, health

log = get_logger("patterd.app")


def build_app(config: Config, carrier: Carrier, *, gateway: Gateway | None = None,
              backends: Any = None) -> web.Application:
    """An application serving ``carrier``'s webhooks and media streams and the
    health/metrics routes. ``backends`` (a :class:`~patterd.call.backends.Backends`) replaces
    the providers the config names (tests, benchmarks, embedding)."""
    gw = gateway or Gateway(config=config)
    gw.backends = backends
    # The webhook handlers read bodies themselves with their own limit; this is the backstop.
    from .web.connections import mark_busy
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[mark_busy, _json_errors, backpressure.middleware])
    app[GATEWAY] = gw
    app.add_routes(health.ROUTES)
    gw.carrier_name = carrier.name
    app.add_routes(carrier.routes(gw))
    from .web.admin import admin_routes
    from .web.console_api import console_api_routes
    from .web.events import event_routes
    app.add_routes(admin_routes(gw))
    app.add_routes(event_routes(gw))
    app.add_routes(console_api_routes(gw))
    from .carriers.browser import browser_call_route
    from .web.console import console_routes
    app.add_routes(browser_call_route(gw))
    app.add_routes(console_routes(gw))
    app.cleanup_ctx.append(_lifecycle(carrier))

    async def end_streams(app: web.Application) -> None:   # before open requests are awaited
        gw.bus.close()
    app.on_shutdown.append(end_streams)
    return app


async def _join_cluster(gw: Gateway) -> None:
    """Start this replica's ClusterNode; without it the process still serves its own calls."""
    from .call import remote
    from .cluster import ClusterNode

    async def on_command(call_id: str, carrier: str, kind: str, args: dict) -> dict:  # type: ignore[type-arg]
        return await remote.apply_command(gw, call_id, carrier, kind, args)

    async def on_orphan(call_id: str, carrier: str) -> None:
        await remote.orphaned(gw, call_id, carrier)

    try:
        gw.cluster = await ClusterNode.start(gw.config.store.url, on_command=on_command,
                                             on_orphan=on_orphan, supervisor=gw.supervisor)
    except Exception as exc:  # noqa: BLE001 - degrade to a lone replica, loudly
        log.error("cluster_join_failed", error=str(exc),
                  detail="calls held by other replicas cannot be steered from here")
        return
    log.info("cluster_joined", replica=gw.cluster.replica_id)


def _lifecycle(carrier: Carrier):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY]
        owned = gw.backends is None
        if owned:  # load models first: a failure here stops start-up cleanly
            from .call.backends import Backends
            async with starting("backends"):
                gw.backends = await Backends.from_config(gw.config, on_error=gw.backend_failed,
                                                         supervisor=gw.supervisor)
        elif hasattr(gw.backends, "supervise"):   # given ones: their workers report here too
            gw.backends.supervise(gw.supervisor)
        try:
            async with starting("store", path=mask_url(gw.config.store.url)):
                store = await open_store(gw.config.store.url)
        except BaseException:
            if owned and gw.backends is not None:   # do not leave decoder processes behind
                await gw.backends.close()
            raise
        writer = gw.store_writer = StoreWriter(store, max_queue=gw.config.store.max_pending,
                                               supervisor=gw.supervisor)
        writer.start()
        # Always running (cancelled with the other tasks at shutdown): a reload may turn
        # retention on, off or change its period.
        gw.supervise("retention", lambda: retention_loop(
            store, lambda: (gw.config.store.retention_days, gw.config.agent.max_call_seconds),
            on_swept=gw.registry.forget_ended_before, supervisor=gw.supervisor))
        gw.registry.on_change = lambda rec: writer.submit(
            snapshot(rec, gw.registry.held(rec.call_id)))
        writer.on_settled = gw.registry.settled   # stored ended calls may leave memory
        if store.kind == "postgresql":   # replicas share calls: ownership, commands, reaper
            await _join_cluster(gw)
        gw.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15),
            connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
            headers={"User-Agent": "patterd"})
        monitor = gw.supervisor.start("loop_monitor", lambda: watch_loop(gw.metrics))
        tracer = gw.tracer = _start_tracing(gw.config) if gw.tracer is None else gw.tracer
        gw.ready = True
        gw.spawn(carrier.on_startup(gw), name="carrier-startup")
        # SQLite: this process's heartbeat, and the calls of a process that died (a crash and
        # a restart) hung up and recorded (call/recovery.py).
        gw.supervise("recovery", lambda: run_recovery(gw))
        yield
        gw.ready = False
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
        for session in list(gw.sessions):
            await session.close()
        if gw.cluster is not None:
            await gw.cluster.stop()
            gw.cluster = None
        if owned and gw.backends is not None:
            await gw.backends.close()
        await gw.release_retired(force=True)
        for task in list(gw.tasks):
            task.cancel()
        if gw.tasks:
            await asyncio.gather(*gw.tasks, return_exceptions=True)
        await gw.http.close()
        gw.registry.on_change = None
        writer.on_settled = None
        await writer.close(timeout=5.0)   # what is still pending is written before exit
        await store.close()
        if tracer is not None:            # the last spans go out (the exporter blocks)
            await asyncio.get_running_loop().run_in_executor(None, tracer.shutdown)
            gw.tracer = None

    return ctx


def _start_tracing(config: Config) -> Any:
    """The OpenTelemetry tracer when ``telemetry.otlp_endpoint`` is set (else None); a
    tracer that cannot start leaves the daemon serving without traces, loudly."""
    endpoint = config.telemetry.otlp_endpoint
    if not endpoint:
        return None
    try:
        from .ops.otel import OtelTracer
        tracer = OtelTracer(endpoint, config.telemetry.service_name)
    except Exception as exc:  # noqa: BLE001 - traces are not worth refusing calls
        log.error("tracing_unavailable", error=repr(exc), detail="serving without traces")
        return None
    log.info("tracing", endpoint=tracer.endpoint)
    return tracer


@web.middleware
async def _json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Framework errors (404, 405, 413 from the backstop) answered as JSON with a reason."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        exc.text = json.dumps({"error": exc.reason})
        exc.content_type = "application/json"
        raise
