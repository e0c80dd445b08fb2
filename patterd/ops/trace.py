"""Per-call timing: each turn's stages for the call record, and spans when tracing is on.

A :class:`CallTrace` lives as long as one media stream. The media socket makes it the
*current* trace of everything the call does (a context variable, inherited by the tasks the
session starts and handed to the shared VAD's callbacks), so the code that measures a stage
needs no reference to the call:

- every ``patterd_turn_latency_seconds`` observation (``endpointing``, ``stt``,
  ``llm_first_token``, ``tts_first_byte``, ``response``) and every barge-in also lands in the
  current trace (:class:`StageLatency` wraps the histogram);
- LLM rounds, tool calls, speech synthesis and carrier REST actions open spans with
  :func:`begin` / :meth:`Span.end`.

A turn begins when the caller stops speaking (the ``endpointing`` stage) or when the agent
starts an answer with no turn open (to keys; :func:`reply_started`), and is answered at its
``response`` (the first agent audio sent); :meth:`CallTrace.answered` is then the record's
entry for the turn: each stage's duration in seconds, ``at`` (wall-clock start of the turn)
and ``offsets`` (each stage's start, in seconds after ``at``) for a waterfall.

Spans are made only when a :class:`Tracer` is configured (``telemetry.otlp_endpoint``, see
:mod:`.otel`); without one a trace keeps only the turn figures — a few dictionary writes per
turn, nothing per media frame.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

STAGES = ("endpointing", "stt", "llm_first_token", "tts_first_byte", "response")
# Stages that are spans of their own; the LLM's first token and the TTS's first byte are
# attributes of the ``llm`` and ``tts`` spans, the response one of the ``turn`` span.
STAGE_SPANS = frozenset({"endpointing", "stt"})

CURRENT: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar(
    "patterd_call_trace", default=None)


class Tracer(Protocol):
    """Where spans go (an OpenTelemetry tracer behind :mod:`.otel`)."""

    def start(self, name: str, parent: Any, start_ns: int, attributes: dict[str, Any]) -> Any:
        """A started span (``parent``: a span this one is a child of, or None)."""
        ...

    def end(self, span: Any, end_ns: int, attributes: dict[str, Any], error: str) -> None:
        """End ``span`` with more attributes (``error``: why it failed, or "")."""
        ...


def current() -> CallTrace | None:
    """The trace of the call this code runs for, if any."""
    return CURRENT.get()


@contextmanager
def within(trace: CallTrace | None) -> Iterator[None]:
    """Run a block (and the tasks it starts) as part of ``trace``'s call."""
    token = CURRENT.set(trace)
    try:
        yield
    finally:
        CURRENT.reset(token)


def in_call_of(callback: Any) -> Any:
    """``callback`` run as part of the current call wherever it is called from (a shared
    worker's loop calling back into one call). Returned as is outside a call."""
    trace = CURRENT.get()
    if trace is None:
        return callback

    def run(*args: Any) -> Any:
        token = CURRENT.set(trace)
        try:
            return callback(*args)
        finally:
            CURRENT.reset(token)
    run.__self__ = getattr(callback, "__self__", None)   # type: ignore[attr-defined]
    return run


def _now_ns() -> int:
    return time.time_ns()


class Span:
    """A span being measured (a no-op without a tracer); end it once."""

    __slots__ = ("_trace", "_span", "turn")

    def __init__(self, trace: CallTrace, span: Any, turn: _Turn | None) -> None:
        self._trace, self._span, self.turn = trace, span, turn

    def end(self, error: str = "", **attributes: Any) -> None:
        """The work is done (``error``: why it failed)."""
        if self._span is not None:
            self._trace._end(self._span, attributes, error)
            self._span = None


class _NoSpan(Span):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None, None, None)  # type: ignore[arg-type]

    def end(self, error: str = "", **attributes: Any) -> None:
        return


NO_SPAN: Span = _NoSpan()


def begin(name: str, **attributes: Any) -> Span:
    """A span of the current call (a child of its open turn, else of the call)."""
    trace = CURRENT.get()
    if trace is None or trace.tracer is None:
        return NO_SPAN
    return trace.begin(name, **attributes)


class _Turn:
    """One turn being measured."""

    __slots__ = ("index", "start", "stages", "offsets", "span", "trigger")

    def __init__(self, index: int, start: float, trigger: str) -> None:
        self.index, self.start, self.trigger = index, start, trigger
        self.stages: dict[str, float] = {}
        self.offsets: dict[str, float] = {}
        self.span: Any = None


class CallTrace:
    """One media stream's turns and spans (see the module docstring)."""

    def __init__(self, call_id: str, carrier: str, tracer: Tracer | None = None,
                 attributes: dict[str, Any] | None = None) -> None:
        self.call_id, self.carrier, self.tracer = call_id, carrier, tracer
        self._turn: _Turn | None = None
        self._turns = 0
        self.last_answered: dict[str, Any] | None = None
        self.barge_ins = 0
        self.span: Any = None
        if tracer is not None:
            self.span = tracer.start("call", None, _now_ns(), {
                "patterd.call.id": call_id, "patterd.carrier": carrier, **(attributes or {})})

    # -- stages (from the latency histogram) ---------------------------------------------------
    def stage(self, name: str, seconds: float) -> None:
        """A stage of the current turn took ``seconds``, ending now."""
        now = time.time()
        began = now - max(0.0, seconds)
        turn = self._turn
        if name == "endpointing":
            if turn is not None:
                self._close(turn, now, answered=False)
            turn = self._open(began, "speech")
        elif turn is None:
            # outside a turn (the greeting, the later sentences of an answered reply): only
            # a span of the call
            if self.tracer is not None and self.span is not None and name in STAGE_SPANS:
                self._stage_span(name, self.span, began, now, seconds)
            return
        if name == "response":
            turn.start = min(turn.start, began)
        if name not in turn.stages:           # the first utterance's figure is the turn's
            turn.stages[name] = round(seconds, 4)
            turn.offsets[name] = round(max(0.0, began - turn.start), 4)
        if self.tracer is not None and turn.span is not None and name in STAGE_SPANS:
            self._stage_span(name, turn.span, began, now, seconds)
        if name == "response":
            self._close(turn, now, answered=True)

    def _stage_span(self, name: str, parent: Any, began: float, now: float,
                    seconds: float) -> None:
        assert self.tracer is not None
        span = self.tracer.start(name, parent, int(began * 1e9),
                                 {"patterd.latency_s": round(seconds, 4)})
        self.tracer.end(span, int(now * 1e9), {}, "")

    def reply_started(self, trigger: str) -> None:
        """The agent starts answering (``trigger``: ``speech``, ``keys``): the turn the
        caller's speech opened, or a new one (an answer to keys ends a turn of speech that
        got none)."""
        turn = self._turn
        if turn is not None and turn.trigger != trigger:
            self._close(turn, time.time(), answered=False)
            turn = None
        if turn is None:
            self._open(time.time(), trigger)

    def barge_in(self) -> None:
        """The caller interrupted the agent."""
        self.barge_ins += 1
        if self.tracer is not None:
            now = _now_ns()
            parent = self._turn.span if self._turn is not None else self.span
            self.tracer.end(self.tracer.start("barge_in", parent, now, {}), now, {}, "")

    def answered(self, response: float) -> dict[str, Any]:
        """The record's entry for the turn just answered in ``response`` seconds."""
        done, self.last_answered = self.last_answered, None
        if done is None or done.get("response") != round(response, 4):
            return {"response": round(response, 4)}
        return done

    def _open(self, start: float, trigger: str) -> _Turn:
        turn = self._turn = _Turn(self._turns, start, trigger)
        self._turns += 1
        if self.tracer is not None:
            turn.span = self.tracer.start("turn", self.span, int(start * 1e9), {
                "patterd.turn.index": turn.index, "patterd.turn.trigger": trigger})
        return turn

    def _close(self, turn: _Turn, now: float, *, answered: bool) -> None:
        self._turn = None
        if answered:
            entry: dict[str, Any] = dict(turn.stages)
            entry["at"] = round(turn.start, 3)
            entry["offsets"] = dict(turn.offsets)
            self.last_answered = entry
        if self.tracer is not None and turn.span is not None:
            attrs: dict[str, Any] = {"patterd.turn.answered": answered}
            attrs.update({f"patterd.latency.{k}_s": v for k, v in turn.stages.items()})
            self.tracer.end(turn.span, int(now * 1e9), attrs, "")

    # -- spans ---------------------------------------------------------------------------------
    def begin(self, name: str, **attributes: Any) -> Span:
        """A span from now, a child of the open turn (else of the call)."""
        if self.tracer is None:
            return NO_SPAN
        turn = self._turn
        parent = turn.span if turn is not None else self.span
        return Span(self, self.tracer.start(name, parent, _now_ns(), _clean(attributes)), turn)

    def _end(self, span: Any, attributes: dict[str, Any], error: str) -> None:
        assert self.tracer is not None
        self.tracer.end(span, _now_ns(), _clean(attributes), error)

    def close(self, **attributes: Any) -> None:
        """The stream ended: the open turn (unanswered) and the call span end."""
        now = time.time()
        if self._turn is not None:
            self._close(self._turn, now, answered=False)
        if self.tracer is not None and self.span is not None:
            attributes["patterd.barge_ins"] = self.barge_ins
            self.tracer.end(self.span, int(now * 1e9), _clean(attributes), "")
            self.span = None


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attribute values: str, bool, int, float (others as text; None dropped)."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


class StageLatency:
    """``patterd_turn_latency_seconds`` as the session uses it (``labels(stage).observe``),
    each observation also a stage of the current call's trace."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self._children: dict[str, _StageChild] = {}

    def labels(self, stage: str) -> _StageChild:
        """The stage's series."""
        child = self._children.get(stage)
        if child is None:
            child = self._children[stage] = _StageChild(stage, self.histogram.labels(stage))
        return child

    def __getattr__(self, name: str) -> Any:     # collect(), describe(), … for the registry
        return getattr(self.histogram, name)


class _StageChild:
    __slots__ = ("stage", "series")

    def __init__(self, stage: str, series: Any) -> None:
        self.stage, self.series = stage, series

    def observe(self, seconds: float) -> None:
        self.series.observe(seconds)
        trace = CURRENT.get()
        if trace is not None:
            trace.stage(self.stage, seconds)


class BargeIns:
    """``patterd_barge_ins_total`` as the session uses it (``inc()``), each one also noted
    in the current call's trace."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def inc(self, amount: float = 1.0) -> None:
        """One more."""
        self.counter.inc(amount)
        trace = CURRENT.get()
        if trace is not None:
            trace.barge_in()

    def __getattr__(self, name: str) -> Any:     # _value, collect(), … as the counter's
        return getattr(self.counter, name)


def reply_started(user_text: str | None, dtmf: str | None) -> None:
    """The current call's agent starts answering the caller's words or keys."""
    trace = CURRENT.get()
    if trace is not None:
        trace.reply_started("keys" if dtmf and not user_text else "speech")


def answered(response: float) -> dict[str, Any]:
    """The current call's record entry for the turn answered in ``response`` seconds (the
    stages measured for it), or just ``{"response": …}`` outside a traced call."""
    trace = CURRENT.get()
    if trace is None:
        return {"response": round(response, 4)}
    return trace.answered(response)


__all__ = ["CURRENT", "NO_SPAN", "STAGES", "BargeIns", "CallTrace", "Span", "StageLatency",
           "Tracer", "answered", "begin", "current", "in_call_of", "reply_started", "within"]
