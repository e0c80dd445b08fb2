"""A local OTLP/HTTP trace receiver on 127.0.0.1: decodes what it is sent with the official
protobuf definitions (the ``opentelemetry-proto`` package) into plain span dicts."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class ReceivedSpan:
    """One span as received."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    kind: int
    children: list["ReceivedSpan"] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """``POST /v1/traces`` (protobuf, optionally gzip) → :attr:`spans`."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests: list[dict[str, str]] = []
        self._server: TestServer | None = None

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()

    @property
    def url(self) -> str:
        """The base URL (the exporter appends ``/v1/traces``)."""
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append(dict(request.headers))
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(ReceivedSpan(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                        s.start_time_unix_nano, s.end_time_unix_nano,
                        {a.key: _value(a.value) for a in s.attributes}, resource,
                        s.status.code, s.kind))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.spans):
            if loop.time() > deadline:
                raise AssertionError(f"spans: {[s.name for s in self.spans]}")
            await asyncio.sleep(0.05)
        return self.spans


def tree(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The root spans, each with its ``children`` (recursively), children by start time."""
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        s.children = []
    roots = []
    for s in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(s.parent_id)
        (parent.children if parent is not None else roots).append(s)
    return roots
