"""OpenTelemetry traces over OTLP/HTTP (the optional ``otel`` extra).

:class:`OtelTracer` is the :class:`~patterd.ops.trace.Tracer` behind a call's trace when
``telemetry.otlp_endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) is set: spans are made with
the OpenTelemetry SDK and exported in batches by its own thread (nothing on the event loop
waits for the receiver) to ``<endpoint>/v1/traces`` as protobuf. The SDK's other
``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout, compression) apply as usual.

Span tree of a call (names; attributes in the project's README):
``call`` → ``turn`` → ``endpointing``, ``stt``, ``llm`` (one per round; ``tool`` spans under the
turn), ``tts`` (one per synthesis), ``barge_in``; ``carrier.<action>`` (hang-up, transfer,
DTMF…) under the turn or the call. No span carries a secret or an unmasked number.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..ops.logging import get_logger

log = get_logger("patterd.otel")

TRACES_PATH = "/v1/traces"


class OtelTracer:
    """Spans of the OpenTelemetry SDK, batched to one OTLP/HTTP receiver."""

    def __init__(self, endpoint: str, service_name: str = "patterd", *,
                 schedule_delay_ms: int = 1000, max_queue: int = 16384) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.endpoint = endpoint.rstrip("/") + TRACES_PATH
        self._provider = TracerProvider(resource=Resource.create({
            "service.name": service_name, "service.version": __version__}))
        # A queue for ~30 s of 500 calls' spans: a receiver that is slow or away drops spans
        # (the SDK says so), never holds a call up.
        self._provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=self.endpoint), schedule_delay_millis=schedule_delay_ms,
            max_queue_size=max_queue))
        self._tracer = self._provider.get_tracer("patterd", __version__)
        self._set_parent = trace.set_span_in_context
        self._root = Context()            # a call span is a root: no ambient parent
        self._server = SpanKind.SERVER
        self._internal = SpanKind.INTERNAL
        self._error = lambda why: Status(StatusCode.ERROR, why)

    def start(self, name: str, parent: Any, start_ns: int, attributes: dict[str, Any]) -> Any:
        """A span starting at ``start_ns`` (Unix ns), child of ``parent`` (None: a root)."""
        if parent is None:
            return self._tracer.start_span(name, context=self._root, kind=self._server,
                                           attributes=attributes, start_time=start_ns)
        return self._tracer.start_span(name, context=self._set_parent(parent),
                                       kind=self._internal, attributes=attributes,
                                       start_time=start_ns)

    def end(self, span: Any, end_ns: int, attributes: dict[str, Any], error: str) -> None:
        """End ``span`` at ``end_ns`` with more attributes; ``error`` marks it failed."""
        if attributes:
            span.set_attributes(attributes)
        if error:
            span.set_status(self._error(error))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter thread (blocking: run it off the
        event loop)."""
        try:
            self._provider.shutdown()
        except Exception as exc:  # noqa: BLE001 - the receiver is away: spans are lost
            log.warning("otel_shutdown_failed", error=repr(exc))


__all__ = ["OtelTracer", "TRACES_PATH"]
