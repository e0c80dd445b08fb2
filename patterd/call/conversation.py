"""One caller turn as the model sees it: rounds of LLM answers and tool calls.

The model may answer with text, call tools, or both. Built-in tools (transfer, hang-up, DTMF)
are handed to the session, which runs them once the reply has been spoken; the model is told
they are under way. User tools (``llm.tools``) run at once through the :class:`ToolRunner`
and their results go back to the model for another round, at most ``max_rounds`` times.

Each completed round (the assistant message with its tool calls plus one result per call) is
appended to the call's history in one step, so a barge-in between rounds never leaves a tool
call without its result — providers refuse such a history.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..backends.llm.base import (BUILTIN_TOOLS, LLM, TOOL_NAMES, TRANSFER_CALL, Message,
                                 StartOver, TextChunk, TokenUsage, ToolCall, ToolSpec, Truncated)
from ..ops import trace as tracing

if TYPE_CHECKING:
    from ..backends.llm.tools import ToolRunner

BUILTIN_RESULT = '{"status": "will be done once your reply has been spoken"}'


class SpeakNow:
    """Marker: a round ended; speak the text so far before tools run (the caller hears
    "let me check" while the tool works), even if it ends without punctuation."""


SPEAK_NOW = SpeakNow()


def tool_specs(targets: Mapping[str, str], runner: "ToolRunner | None") -> tuple[ToolSpec, ...]:
    """The tools offered to the model: the built-in ones (the transfer tool naming the
    configured targets) and the user's."""
    specs = []
    for spec in BUILTIN_TOOLS:
        if spec.name == TRANSFER_CALL and targets:
            spec = ToolSpec(spec.name, spec.description + " Transfer targets: "
                            + ", ".join(targets) + ".", spec.parameters)
        specs.append(spec)
    if runner is not None:
        specs.extend(runner.specs())
    return tuple(specs)


async def converse(llm: LLM, history: list[Message], *, user_text: str | None,
                   dtmf: str | None, tools: Sequence[ToolSpec], runner: "ToolRunner | None",
                   context: Mapping[str, str], max_rounds: int,
                   on_usage: Callable[[TokenUsage], None]
                   ) -> AsyncIterator[TextChunk | ToolCall | SpeakNow | StartOver | Truncated]:
    """Stream the agent's text, and the built-in tool calls for the session to run.

    ``history`` is the call's history *including* this turn's user message (if any); rounds
    are appended to it as they complete. The first request passes ``user_text``/``dtmf`` with
    the history before that message (as :meth:`LLM.respond` expects); later rounds pass the
    whole history, which then ends with tool results.
    """
    first_history = history[:-1] if (user_text or dtmf) else list(history)
    for round_no in range(max_rounds + 1):
        text: list[str] = []
        calls: list[ToolCall] = []
        if round_no == 0:
            stream = llm.respond(first_history, user_text, dtmf, tools=tools, context=context)
        else:
            stream = llm.respond(list(history), tools=tools, context=context)
        span = tracing.begin("llm", **{"patterd.llm.round": round_no})
        began, first = time.monotonic(), None
        used: dict[str, Any] = {}
        error = ""
        try:
            async for event in stream:
                if isinstance(event, TextChunk):
                    if first is None:
                        first = time.monotonic() - began
                    text.append(event.text)
                    yield event
                elif isinstance(event, StartOver):
                    text.clear()
                    calls.clear()
                    yield event
                elif isinstance(event, Truncated):   # cut at the length cap: the text ends
                    yield event
                elif isinstance(event, ToolCall):
                    calls.append(event)
                elif isinstance(event, TokenUsage):
                    on_usage(event)
                    _count(used, event)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            await stream.aclose()
            span.end(error, **{"patterd.llm.provider": used.get("provider") or llm.name or None,
                               "patterd.llm.first_token_s": first,
                               "patterd.llm.tool_calls": len(calls),
                               "gen_ai.usage.input_tokens": used.get("input"),
                               "gen_ai.usage.output_tokens": used.get("output")})
        if not calls:
            return
        yield SPEAK_NOW
        ids = [c if c.id else ToolCall(c.name, c.arguments, f"call_{round_no}_{i}")
               for i, c in enumerate(calls)]
        results: list[Message] = []
        runs_user_tool = False
        for call in ids:
            if call.name in TOOL_NAMES:
                yield call
                result = BUILTIN_RESULT
            elif runner is not None and runner.has(call.name) and round_no < max_rounds:
                runs_user_tool = True
                tool_span = tracing.begin("tool", **{"patterd.tool.name": call.name})
                try:
                    result = await runner.run(call, context)
                finally:
                    tool_span.end()
            elif runner is not None and runner.has(call.name):
                result = '{"error": "too many tool calls in this turn; answer the caller now"}'
            else:
                result = f'{{"error": "there is no tool named {call.name!r}"}}'
            results.append(Message("tool", result, tool_call_id=call.id, name=call.name))
        # Text of this round is kept with the final answer (what the caller heard); the
        # round itself records only the calls and their results.
        history.append(Message("assistant", "", tool_calls=tuple(ids)))
        history.extend(results)
        if not runs_user_tool:
            return


def _count(used: dict[str, Any], usage: TokenUsage) -> None:
    """Add one report of tokens to a round's count (for its span)."""
    used["input"] = used.get("input", 0) + usage.input_tokens
    used["output"] = used.get("output", 0) + usage.output_tokens
    if usage.provider:
        used["provider"] = usage.provider


__all__ = ["BUILTIN_RESULT", "SPEAK_NOW", "SpeakNow", "converse", "tool_specs"]
