"""Every Prometheus family (README.md, "Metrics"), registered from the start on one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .supervise import COMPONENTS as WORKERS
from .trace import BargeIns, StageLatency

disable_created_metrics()  # the *_created series only double the exposition size

# Telephony latencies: 10 ms … 10 s.
LATENCY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# Event-loop lag: 1 ms … 5 s (a 20 ms audio frame late by 10 ms is already audible jitter).
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
               1.0, 2.0, 5.0)
TURN_STAGES = ("endpointing", "stt", "llm_first_token", "tts_first_byte", "response")


HANDOFF_RESULTS = ("sent", "resumed", "failed", "lost")
HANDOFF_GAP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """The daemon's metric families (one instance per app, so tests stay independent)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls_active = Gauge("patterd_calls_active", "Calls in progress", registry=r)
        self.calls_total = Counter("patterd_calls", "Calls ended, by direction and outcome",
                                   ["direction", "outcome"], registry=r)
        self.webhook_requests = Counter("patterd_webhook_requests", "Carrier webhook requests",
                                        ["carrier", "endpoint", "code"], registry=r)
        self.signature_failures = Counter("patterd_webhook_signature_failures",
                                          "Webhook or media requests with a bad signature",
                                          ["carrier"], registry=r)
        self.media_refused = Counter("patterd_media_streams_refused",
                                     "Media streams closed before serving a call, by reason "
                                     "(token, replay, call_id, unservable, timeout)",
                                     ["carrier", "reason"], registry=r)
        self.connections_open = Gauge("patterd_connections_open",
                                      "Inbound connections open", registry=r)
        self.connections_refused = Counter(
            "patterd_connections_refused", "Inbound connections refused at a limit (none "
            "idle to close for room)", ["limit"], registry=r)
        self.connections_evicted = Counter(
            "patterd_connections_evicted", "Idle inbound connections (no request in "
            "progress) closed to make room for a new one", registry=r)
        self.media_frames = Counter("patterd_media_frames", "Media frames by direction",
                                    ["direction"], registry=r)
        self.media_invalid = Counter("patterd_media_frames_invalid",
                                     "Media frames that were malformed or unknown (ignored)",
                                     registry=r)
        # each observation also lands in the current call's trace (its turn's stages)
        self.turn_latency = StageLatency(Histogram(
            "patterd_turn_latency_seconds", "Per-turn latency by stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r))
        self.barge_ins = BargeIns(Counter("patterd_barge_ins",
                                          "Caller interruptions of the agent", registry=r))
        self.backend_errors = Counter("patterd_backend_errors", "Backend failures",
                                      ["backend", "provider"], registry=r)
        self.call_cost = Counter("patterd_call_cost_usd", "Estimated call cost in USD",
                                 ["component"], registry=r)
        self.call_duration = Histogram("patterd_call_duration_seconds", "Call duration",
                                       ["direction"], buckets=DURATION_BUCKETS, registry=r)
        self.internal_errors = Counter("patterd_internal_errors",
                                       "Failures inside the daemon's own shared workers, by "
                                       "component (each contained: the worker went on)",
                                       ["component"], registry=r)
        self.loop_lag = Histogram("patterd_event_loop_lag_seconds",
                                  "How much later than due the event loop ran a timer "
                                  "(sampled every 50 ms)", buckets=LAG_BUCKETS, registry=r)
        self.asyncio_tasks = Gauge("patterd_asyncio_tasks",
                                   "asyncio tasks alive in the daemon's event loop",
                                   registry=r)
        self.store_pending = Gauge("patterd_store_pending",
                                   "Call snapshots waiting to be written to the store",
                                   registry=r)
        self.store_backpressure = Counter("patterd_store_backpressure",
                                          "Webhooks held back while the store was backed "
                                          "up: delayed (let in after a wait) or refused (503)",
                                          ["outcome"], registry=r)
        for outcome in ("delayed", "refused"):   # zeros from the start
            self.store_backpressure.labels(outcome)
        self.call_handoffs = Counter("patterd_call_handoffs",
                                     "Live calls moved between replicas on drain, by result: "
                                     "sent (this replica moved it), resumed (this replica took "
                                     "it over), failed (it stayed and drained as before), "
                                     "lost (a moved stream with no state to resume)",
                                     ["result"], registry=r)
        for result in HANDOFF_RESULTS:
            self.call_handoffs.labels(result)
        self.handoff_gap = Histogram("patterd_call_handoff_gap_seconds",
                                     "From the old replica asking the carrier to move a call's "
                                     "media to the new replica's stream starting",
                                     buckets=HANDOFF_GAP_BUCKETS, registry=r)
        # Children that always exist, so dashboards see zeros rather than gaps.
        for direction in ("rx", "tx"):
            self.media_frames.labels(direction)
        for component in ("carrier", "stt", "llm", "tts"):
            self.call_cost.labels(component)
        for carrier in ("twilio", "telnyx"):
            self.signature_failures.labels(carrier)
        for worker in WORKERS:
            self.internal_errors.labels(worker)
        for limit in ("max_connections", "max_connections_per_ip"):
            self.connections_refused.labels(limit)
        self.frames_rx = self.media_frames.labels("rx")
        self.frames_tx = self.media_frames.labels("tx")

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
