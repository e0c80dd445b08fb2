"""A call's trace: turns from the stages the latency histogram reports, the record's entry for
an answered turn, and the spans a tracer is given (a recording stand-in for OpenTelemetry)."""

from __future__ import annotations

import asyncio
from typing import Any

from patterd.ops import trace as tracing
from patterd.ops.metrics import Metrics


class Spans:
    """A Tracer that keeps what it is told."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    def start(self, name: str, parent: Any, start_ns: int, attributes: dict[str, Any]) -> Any:
        span = {"name": name, "parent": parent, "start": start_ns, "end": None,
                "attributes": dict(attributes), "error": ""}
        self.spans.append(span)
        return span

    def end(self, span: Any, end_ns: int, attributes: dict[str, Any], error: str) -> None:
        assert span["end"] is None, f"{span['name']} ended twice"
        span["end"] = end_ns
        span["attributes"].update(attributes)
        span["error"] = error

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


def test_turns_from_stages_and_the_record_entry_of_an_answered_one() -> None:
    spans = Spans()
    metrics = Metrics()
    trace = tracing.CallTrace("CA1", "twilio", spans, {"patterd.direction": "inbound"})
    stage = metrics.turn_latency.labels
    with tracing.within(trace):
        stage("tts_first_byte").observe(0.05)          # the greeting: no turn
        stage("endpointing").observe(0.5)
        stage("stt").observe(0.1)
        tracing.reply_started("hello", None)           # the speech's turn goes on
        llm = tracing.begin("llm", **{"patterd.llm.round": 0})
        stage("llm_first_token").observe(0.2)
        llm.end(**{"gen_ai.usage.input_tokens": 12})
        stage("tts_first_byte").observe(0.03)
        stage("tts_first_byte").observe(0.09)          # a later sentence: the first counts
        stage("response").observe(0.9)
        entry = tracing.answered(0.9)
        stage("endpointing").observe(0.4)              # spoke, but nothing was heard
        tracing.reply_started(None, "5")               # then a key, answered
        stage("response").observe(0.3)
        keys = tracing.answered(0.3)
    trace.close(**{"patterd.call.outcome": "completed", "none": None})
    assert entry["response"] == 0.9 and entry["endpointing"] == 0.5 and entry["stt"] == 0.1
    assert entry["llm_first_token"] == 0.2 and entry["tts_first_byte"] == 0.03
    offsets = entry["offsets"]
    assert offsets["endpointing"] == 0 and offsets["response"] == 0
    # each stage began when it was reported less its length (here all at once: 0.5 − 0.1)
    assert 0.39 <= offsets["stt"] <= 0.42
    assert set(keys) == {"response", "at", "offsets"}
    (call,) = spans.named("call")
    assert call["parent"] is None and call["attributes"]["patterd.call.outcome"] == "completed"
    assert "none" not in call["attributes"] and call["attributes"]["patterd.barge_ins"] == 0
    turns = spans.named("turn")
    assert [t["attributes"]["patterd.turn.trigger"] for t in turns] == ["speech", "speech",
                                                                        "keys"]
    assert [t["attributes"]["patterd.turn.answered"] for t in turns] == [True, False, True]
    assert turns[0]["attributes"]["patterd.latency.response_s"] == 0.9
    assert all(t["parent"] is call for t in turns)
    assert [s["parent"] is turns[0] for s in spans.named("endpointing")][0]
    assert spans.named("stt")[0]["parent"] is turns[0]
    assert spans.named("llm")[0]["parent"] is turns[0]
    assert spans.named("llm")[0]["attributes"] == {"patterd.llm.round": 0,
                                                   "gen_ai.usage.input_tokens": 12}
    assert not spans.named("response") and not spans.named("tts_first_byte")
    assert all(s["end"] is not None and s["end"] >= s["start"] for s in spans.spans)


def test_without_a_tracer_only_the_figures_and_nothing_outside_a_call() -> None:
    trace = tracing.CallTrace("CA2", "telnyx")
    metrics = Metrics()
    with tracing.within(trace):
        assert tracing.begin("llm") is tracing.NO_SPAN
        metrics.turn_latency.labels("endpointing").observe(0.5)
        metrics.turn_latency.labels("response").observe(0.7)
        assert tracing.answered(0.7)["endpointing"] == 0.5
        metrics.barge_ins.inc()
    assert trace.barge_ins == 1 and trace.span is None
    trace.close()
    assert tracing.current() is None
    assert tracing.answered(0.25) == {"response": 0.25}           # outside any call
    metrics.turn_latency.labels("stt").observe(0.1)               # nothing to tell
    assert metrics.barge_ins._value.get() == 1                   # the counter as before
    text = metrics.exposition()[0].decode()
    assert 'patterd_turn_latency_seconds_count{stage="stt"} 1.0' in text


async def test_callbacks_from_shared_workers_run_in_the_call_they_belong_to() -> None:
    trace = tracing.CallTrace("CA3", "twilio")
    seen: list[Any] = []

    class Session:
        call_id = "CA3"

        def on_event(self, ev: Any) -> None:
            seen.append((ev, tracing.current()))
            asyncio.get_running_loop().create_task(later())

    async def later() -> None:
        seen.append(("task", tracing.current()))

    session = Session()
    assert tracing.in_call_of(session.on_event) == session.on_event   # outside a call: as is
    with tracing.within(trace):
        callback = tracing.in_call_of(session.on_event)
    assert callback.__self__ is session                       # still names its session
    callback("speech end")                                    # as the VAD's loop calls it
    await asyncio.sleep(0)
    assert seen == [("speech end", trace), ("task", trace)]
    assert tracing.current() is None


async def test_an_llm_round_per_request_and_a_span_per_user_tool() -> None:
    from patterd.backends.llm.base import LLM, Message, TextChunk, TokenUsage, ToolCall
    from patterd.call.conversation import converse

    class Model(LLM):
        name = "openai"

        async def respond(self, history, user_text=None, dtmf=None, *, tools=(),  # type: ignore[no-untyped-def,override]
                          context=None):
            if history and history[-1].role == "tool":
                yield TextChunk("It is sunny.")
                yield TokenUsage(50, 5)
            else:
                yield ToolCall("weather", {"city": "Paris"}, "call_1")
                yield TokenUsage(40, 8)

    class Runner:
        def has(self, name: str) -> bool:
            return name == "weather"

        async def run(self, call: ToolCall, context: Any) -> str:
            return '{"sky": "sunny"}'

    spans = Spans()
    trace = tracing.CallTrace("CA4", "twilio", spans)
    history = [Message("user", "weather?")]
    with tracing.within(trace):
        Metrics().turn_latency.labels("endpointing").observe(0.4)
        said = [e async for e in converse(Model(), history, user_text="weather?", dtmf=None,
                                          tools=(), runner=Runner(), context={}, max_rounds=3,
                                          on_usage=lambda u: None)]
    trace.close()
    assert [getattr(e, "text", None) for e in said if isinstance(e, TextChunk)] == ["It is sunny."]
    (turn,) = spans.named("turn")
    rounds = spans.named("llm")
    assert [r["attributes"]["patterd.llm.round"] for r in rounds] == [0, 1]
    assert all(r["parent"] is turn for r in rounds)
    assert rounds[0]["attributes"]["patterd.llm.tool_calls"] == 1
    assert rounds[0]["attributes"]["gen_ai.usage.input_tokens"] == 40
    assert rounds[1]["attributes"]["gen_ai.usage.output_tokens"] == 5
    assert rounds[1]["attributes"]["patterd.llm.provider"] == "openai"
    assert rounds[1]["attributes"]["patterd.llm.first_token_s"] >= 0
    (tool,) = spans.named("tool")
    assert tool["parent"] is turn and tool["attributes"] == {"patterd.tool.name": "weather"}
    assert rounds[0]["end"] <= tool["start"] <= tool["end"] <= rounds[1]["start"]
