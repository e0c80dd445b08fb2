"""A media stream's :class:`~patterd.ops.trace.CallTrace`: what its call span says about the
call at the start (carrier, direction, masked numbers, providers and models) and at the end
(outcome, media seconds, turns, cost)."""

from __future__ import annotations

from typing import Any

from ..carriers.base import StreamStarted
from ..ops.logging import mask_phone
from ..ops.trace import CallTrace
from .context import stream_context


def start_trace(gw: Any, start: StreamStarted, carrier: str) -> CallTrace:
    """The trace of the stream ``start`` opens (spans only with ``gw.tracer``)."""
    attributes: dict[str, Any] = {}
    if gw.tracer is not None:
        params = stream_context(start.parameters)
        cfg = gw.config
        attributes = {
            "patterd.direction": params.get("direction") or "inbound",
            "patterd.call.from": mask_phone(params.get("from", "")),
            "patterd.call.to": mask_phone(params.get("to", "")),
            "patterd.stream.resumed": params.get("resumed") == "1",
            "patterd.stream.codec": start.rx_codec,
        }
        for layer in ("stt", "llm", "tts"):
            backend = getattr(cfg, layer)
            attributes[f"patterd.{layer}.provider"] = backend.provider
            if backend.model:
                attributes[f"patterd.{layer}.model"] = backend.model
    return CallTrace(start.call_id, carrier, gw.tracer, attributes)


def end_trace(trace: CallTrace, gw: Any, session: Any) -> None:
    """The stream has been recorded: end the call span with how it went. Never raises."""
    try:
        _end(trace, gw, session)
    except Exception as exc:  # noqa: BLE001 - a tracing bug never troubles the call
        gw.supervisor.report("telemetry", exc, call_id=session.call_id)


def _end(trace: CallTrace, gw: Any, session: Any) -> None:
    if trace.tracer is None:
        trace.close()
        return
    rec = gw.registry.get(session.call_id)
    attributes: dict[str, Any] = {
        "patterd.call.outcome": (rec.outcome if rec is not None else "") or session.outcome
        or "",
        "patterd.media_seconds": round(session.duration, 3),
        "patterd.turns": len(session.record.turns),
    }
    cost = rec.cost if rec is not None else None
    if isinstance(cost, dict):
        for key in ("carrier", "stt", "llm", "tts", "total"):
            if isinstance(cost.get(key), (int, float)):
                attributes[f"patterd.cost.{key}_usd"] = float(cost[key])
    trace.close(**attributes)


__all__ = ["end_trace", "start_trace"]
