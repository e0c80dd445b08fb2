"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from ..gateway import GATEWAY


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when accepting calls; 503 while starting or draining, while a call-critical
    shared worker cannot serve or the store writer is backed up (``down`` says which), and
    while ``max_calls`` calls are live (new calls would be declined: a load balancer sends
    them elsewhere)."""
    gw = request.app[GATEWAY]
    if gw.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not gw.ready:
        return web.json_response({"status": "starting"}, status=503)
    down = gw.supervisor.down
    if down:   # a call-critical worker (say the VAD) is restarting, or the store is backed up
        return web.json_response({"status": "degraded", "down": down}, status=503)
    calls = gw.registry.live_count()
    if calls >= gw.config.server.max_calls:
        return web.json_response({"status": "at_capacity", "calls": calls}, status=503)
    return web.json_response({"status": "ready", "calls": calls})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    gw = request.app[GATEWAY]
    gw.metrics.calls_active.set(gw.registry.live_count())
    if gw.store_writer is not None:
        gw.metrics.store_pending.set(gw.store_writer.pending)
    body, ctype = gw.metrics.exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = ctype
    return resp


ROUTES = [web.get("/healthz", healthz), web.get("/readyz", readyz),
          web.get("/metrics", metrics)]
