#!/usr/bin/env python3
"""A local OTLP/HTTP trace receiver for benchmarks: ``POST /v1/traces`` decoded with the
official protobuf definitions (``opentelemetry-proto``), spans counted; ``GET /count`` answers
the count. Listens on 127.0.0.1 only, until SIGTERM/SIGINT.

    python benchmarks/otlp_sink.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)


def main(port: int) -> int:
    counts = {"spans": 0, "requests": 0}

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        counts["requests"] += 1
        counts["spans"] += sum(len(ss.spans) for rs in export.resource_spans
                               for ss in rs.scope_spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def run() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", traces)
        app.router.add_get("/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
