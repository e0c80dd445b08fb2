"""The agent's side of a call session: starting, running, interrupting and recording its
replies (mixed into :class:`~patterd.call.session.CallSession`, which owns the state).

A barge-in cancels the running reply at once and clears the playout in the background; the
next reply waits for that clear, so the history reads "what the caller heard of the agent",
then the caller's new turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..backends.llm.base import LLM, Message, user_message
from ..backends.llm.rules import fill
from ..config import Config
from ..ops.logging import get_logger
from ..ops.trace import answered
from .actions import perform
from .context import Meter, llm_context
from .playout import Playout, Utterance
from .transcript import Line, heard_part
from .turns import Speaker, TurnResult, played, run_turn

log = get_logger("patterd.session")

FAILURE_APOLOGY = "Sorry, something went wrong on our side. Please try again in a moment."


class Replies:
    """The reply machinery of :class:`CallSession` (its attributes are set up there)."""

    gw: Any
    config: Config
    backends: Any
    llm: LLM
    control: Any
    call_id: str
    carrier: str
    parameters: dict[str, str]
    variables: dict[str, str]
    loop: asyncio.AbstractEventLoop
    playout: Playout
    speaker: Speaker
    meter: Meter
    history: list[Message]
    transcript: list[Line]
    turn_latencies: list[dict[str, float]]
    outcome: str
    ending: bool
    restart_expected: bool
    last_activity: float
    _reply: asyncio.Task[None] | None
    _reply_keys: str
    _reply_asked: Message | None
    _clearing: asyncio.Task[None] | None
    _speech_end_at: float | None
    _tasks: set[asyncio.Task[Any]]

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as one of the session's tasks (cancelled when the stream closes)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def agent_busy(self) -> bool:
        """The agent is thinking or talking."""
        return (self._reply is not None and not self._reply.done()) or self.playout.speaking

    def _interrupt(self) -> None:
        """Barge-in: stop the reply now; the playout is cleared (and what was heard recorded)
        before any later reply starts."""
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
        if self._clearing is None or self._clearing.done():
            self._clearing = self._spawn(self._clear_playout(reply))

    async def _clear_playout(self, reply: asyncio.Task[None] | None) -> None:
        began = self.loop.time()
        cut = await self.playout.clear()
        if reply is not None:
            await asyncio.gather(reply, return_exceptions=True)
        self._record_agent(cut, interrupted=True)
        self.gw.metrics.barge_ins.inc()
        log.info("barge_in", call_id=self.call_id, clear_ms=round((self.loop.time() - began)
                                                                  * 1000, 1))

    def _start_reply(self, *, fixed: str = "", user_text: str | None = None,
                     dtmf: str | None = None, ended_at: float | None = None) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._speech_end_at = ended_at
        self._reply_keys = dtmf if dtmf and not (user_text or fixed) else ""
        self._reply_asked = None
        self._reply = self.loop.create_task(self._run_reply(fixed, user_text, dtmf))

    async def _run_reply(self, fixed: str, user_text: str | None, dtmf: str | None) -> None:
        clearing = self._clearing
        if clearing is not None and not clearing.done():
            # A barge-in first records what was heard of the agent, then this turn begins.
            await asyncio.wait([clearing])
        self.speaker.spoken = []
        asked = user_message(user_text, dtmf)
        if asked is not None:
            self.history.append(asked)
            self._reply_asked = asked
        if fixed:
            fixed = self._fill(fixed)
            result = TurnResult(utterances=[await self.speaker.say(fixed)], text=fixed)
        else:
            b = self.backends
            try:
                result = await run_turn(
                    self.llm, self.speaker, self.history, user_text=user_text, dtmf=dtmf,
                    metrics=self.gw.metrics, tools=b.tool_specs, runner=b.tools,
                    context=llm_context(self.call_id, self.carrier, self.parameters,
                                        self.variables),
                    max_rounds=self.config.llm.max_tool_rounds,
                    on_usage=lambda used: self.meter.tokens(used, self.llm.name))
            except Exception as exc:  # noqa: BLE001 - every provider failed: apologise
                log.warning("reply_failed", call_id=self.call_id, error=repr(exc))
                result = TurnResult(utterances=[await self.speaker.say(FAILURE_APOLOGY)])
        total = sum(u.seconds for u in result.utterances)
        await played(result.utterances, timeout=total + 5.0)
        self._record_agent(self.speaker.spoken, interrupted=False)
        self.last_activity = self.loop.time()
        for tool in result.tools:
            await self._act(tool)

    def _utterance_started(self, utt: Utterance) -> None:
        if self._speech_end_at is not None and utt.first_sent_at is not None:
            response = utt.first_sent_at - self._speech_end_at
            self.gw.metrics.turn_latency.labels("response").observe(response)
            self.turn_latencies.append(answered(response))   # with the turn's stages
            self._speech_end_at = None

    def _record_agent(self, utterances: list[Utterance], *, interrupted: bool) -> None:
        parts = []
        cut = False
        for utt in utterances:
            if utt.cleared_at is not None:
                cut = True
                parts.append(heard_part(utt.text, utt.heard_seconds, utt.seconds))
            else:
                parts.append(utt.text)
        text = " ".join(p for p in parts if p)
        if utterances:
            self.transcript.append(Line("agent", text, interrupted=interrupted and cut))
            if text:  # the model remembers what the caller actually heard
                self.history.append(Message("assistant", text))
        utterances.clear()

    async def _act(self, tool: Any) -> None:
        if tool.name == "send_dtmf" and self.control.dtmf_ends_stream:
            self.restart_expected = True
        event = await perform(tool, self.control, self.call_id,
                              self.config.agent.transfer_targets, self.parameters)
        self.gw.registry.add_event(self.call_id, self.carrier, event.pop("type"), **event)
        if not event.get("ok"):
            self.restart_expected = False
            return
        if tool.name == "transfer_call":
            self.outcome, self.ending = "transferred", True
        elif tool.name == "end_call":
            self.outcome, self.ending = "completed", True

    def _fill(self, text: str) -> str:
        return fill(text, self.variables)


__all__ = ["FAILURE_APOLOGY", "Replies"]
