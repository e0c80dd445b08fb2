"""Tool rounds: built-in tools go to the session, user tools run and feed the next round."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from patterd.backends.llm.base import (LLM, LLMEvent, Message, TextChunk, TokenUsage, ToolCall,
                                       ToolSpec)
from patterd.call.conversation import BUILTIN_RESULT, SPEAK_NOW, converse, tool_specs


class Model(LLM):
    """Answers from a script of rounds; records every request it got."""

    name = "scripted"

    def __init__(self, rounds: list[list[LLMEvent]]) -> None:
        self.rounds = rounds
        self.requests: list[dict[str, Any]] = []

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        self.requests.append({"history": list(history), "user_text": user_text, "dtmf": dtmf,
                              "tools": [t.name for t in tools]})
        for event in self.rounds.pop(0):
            yield event


class Runner:
    def __init__(self) -> None:
        self.calls: list[tuple[ToolCall, Mapping[str, str]]] = []

    def specs(self) -> tuple[ToolSpec, ...]:
        return (ToolSpec("order_status", "Look up an order"),)

    def has(self, name: str) -> bool:
        return name == "order_status"

    async def run(self, call: ToolCall, context: Mapping[str, str]) -> str:
        self.calls.append((call, context))
        return '{"status": "shipped"}'


async def run(model: Model, history: list[Message], runner: Runner | None = None,
              max_rounds: int = 3, **kw: Any) -> tuple[list[Any], list[TokenUsage]]:
    used: list[TokenUsage] = []
    specs = tool_specs({"billing": "+15550001111"}, runner)
    out = [e async for e in converse(model, history, user_text=kw.get("user_text"),
                                     dtmf=kw.get("dtmf"), tools=specs, runner=runner,
                                     context={"call_id": "CA1"}, max_rounds=max_rounds,
                                     on_usage=used.append)]
    return out, used


async def test_user_tool_result_goes_back_to_the_model() -> None:
    model = Model([
        [TextChunk("Let me check."), ToolCall("order_status", {"order": "42"}, "call_a"),
         TokenUsage(100, 10, 0)],
        [TextChunk("It has shipped."), TokenUsage(130, 5, 100)],
    ])
    history = [Message("system", "You help."), Message("user", "where is order 42")]
    runner = Runner()
    events, used = await run(model, history, runner, user_text="where is order 42")
    assert [getattr(e, "text", "<speak now>") for e in events] == [
        "Let me check.", "<speak now>", "It has shipped."]
    assert used == [TokenUsage(100, 10, 0), TokenUsage(130, 5, 100)]
    assert runner.calls == [(ToolCall("order_status", {"order": "42"}, "call_a"),
                             {"call_id": "CA1"})]
    # First request: history without the user message (passed as user_text); second: all.
    assert model.requests[0]["user_text"] == "where is order 42"
    assert model.requests[0]["history"] == history[:1]
    assert "transfer_call" in model.requests[0]["tools"]
    assert "order_status" in model.requests[0]["tools"]
    second = model.requests[1]["history"]
    assert second[-2] == Message("assistant", "", tool_calls=(
        ToolCall("order_status", {"order": "42"}, "call_a"),))
    assert second[-1] == Message("tool", '{"status": "shipped"}', tool_call_id="call_a",
                                 name="order_status")
    assert history == second          # the call's history keeps the completed round


async def test_builtin_tools_go_to_the_session_without_another_round() -> None:
    model = Model([[TextChunk("Transferring you."),
                    ToolCall("transfer_call", {"target": "billing"}, "t1")]])
    history = [Message("user", "billing")]
    events, _ = await run(model, history, user_text="billing")
    assert events == [TextChunk("Transferring you."), SPEAK_NOW,
                      ToolCall("transfer_call", {"target": "billing"}, "t1")]
    assert len(model.requests) == 1
    assert history[-1] == Message("tool", BUILTIN_RESULT, tool_call_id="t1",
                                  name="transfer_call")


async def test_rounds_are_capped_and_unknown_tools_answered() -> None:
    loop_forever = [[ToolCall("order_status", {}, f"c{i}")] for i in range(3)]
    model = Model(loop_forever)
    runner = Runner()
    history = [Message("user", "x")]
    await run(model, history, runner, max_rounds=2, user_text="x")
    assert len(model.requests) == 3 and len(runner.calls) == 2
    assert "too many tool calls" in history[-1].content

    model = Model([[ToolCall("launch_rockets", {})]])
    history = [Message("user", "x")]
    events, _ = await run(model, history, user_text="x")
    assert events == [SPEAK_NOW] and "no tool named 'launch_rockets'" in history[-1].content
    assert history[-2].tool_calls[0].id        # an id is made up when the provider gave none


def test_transfer_tool_names_the_targets() -> None:
    specs = {s.name: s for s in tool_specs({"billing": "+1555", "sales": "sip:a@b"}, None)}
    assert set(specs) == {"transfer_call", "end_call", "send_dtmf"}
    assert "billing, sales" in specs["transfer_call"].description
