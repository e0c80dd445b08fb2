"""The agent's side of a call session: starting, running, interrupting and recording its
replies (mixed into :class:`~patterd.call.session.CallSession`, which owns the state).

A barge-in cancels the running reply at once and clears the playout in the background; the
next reply waits for that clear, so the history reads "what the caller heard of the agent",
then the caller's new turn.

Each reply is an :class:`~patterd.call.transcript.AgentLine` in the call's record from its
first audio on; it is settled to what the caller heard once the reply is over and its audio
is done — however it ended (played, barge-in, a key, a goodbye that cut it, the stream's end,
a failure inside the reply).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..backends.llm.base import LLM, Message, user_message
from ..backends.llm.rules import fill
from ..config import Config
from ..ops.logging import get_logger
from ..ops.trace import answered
from .actions import perform
from .context import Meter, llm_context
from .playout import Playout, Utterance
from .registry import CallRecord
from .transcript import AgentLine, Line
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
    record: CallRecord
    outcome: str
    ending: bool
    restart_expected: bool
    handing_off: bool
    _deferred: tuple[str, str | None, str | None, float | None] | None
    last_activity: float
    _reply: asyncio.Task[None] | None
    _reply_begun_at: float
    _reply_keys: str
    _reply_asked: Message | None
    _clearing: asyncio.Task[None] | None
    _speech_end_at: float | None
    _tasks: set[asyncio.Task[Any]]
    _lines: list[AgentLine]
    stream_key: int

    @property
    def duration(self) -> float:
        """Seconds since the stream started (see the session)."""
        raise NotImplementedError

    def credit_stt(self) -> None:
        """Credit the audio sent to the recogniser (see the session)."""
        raise NotImplementedError

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as one of the session's tasks (cancelled when the stream closes; a
        failure is reported with the call id)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.gw.supervisor.report("call", task.exception(), call_id=self.call_id)

    # -- the record ----------------------------------------------------------------------------
    def _touch(self) -> None:
        """The record changed: this stream's usage so far goes with it to the store."""
        self._meter_now()
        self.gw.registry.touch(self.record)

    def _meter_now(self) -> None:
        self.record.streams[self.stream_key] = (self.meter.total(self.speaker), self.duration)

    def refresh_meter(self) -> None:
        """Bring this stream's usage in the record up to now (STT audio credited)."""
        self.credit_stt()
        self._meter_now()

    def _add_line(self, line: Line) -> None:
        """A caller line (words or a key) joins the record now."""
        self.record.transcript.append(line.as_dict())
        self._touch()

    def _open_line(self) -> AgentLine:
        """A new reply begins: its utterances are collected for its line."""
        self.speaker.spoken = []
        line = AgentLine(self.speaker.spoken)
        self._lines.append(line)
        return line

    def _settle(self, line: AgentLine, now: float) -> None:
        """Cut the reply's line to what was heard by ``now``; the model remembers it too.
        Once only: a line may be over for two reasons at once (its audio done and the stream
        ending), and the second must find nothing to do."""
        if line not in self._lines:
            return           # settled already
        self._lines.remove(line)
        line.closed = True
        if line.entry is None:
            return           # nothing of it ever played
        text = line.settle(now)
        if text:
            self.history.append(Message("assistant", text))
        self._touch()

    def _settle_lines(self, *, force: bool = False, now: float | None = None) -> None:
        """Settle the replies that are over and whose audio is done (``force``: all of them,
        the stream has ended)."""
        if not self._lines:
            return
        at = self.loop.time() if now is None else now
        for line in list(self._lines):
            if force or line.done:
                self._settle(line, at)

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
        await self.playout.clear()
        if reply is not None:
            await asyncio.gather(reply, return_exceptions=True)
        self._settle_lines()      # every utterance is heard or cut now
        self.gw.metrics.barge_ins.inc()
        log.info("barge_in", call_id=self.call_id, clear_ms=round((self.loop.time() - began)
                                                                  * 1000, 1))

    def _start_reply(self, *, fixed: str = "", user_text: str | None = None,
                     dtmf: str | None = None, ended_at: float | None = None) -> None:
        if self.handing_off:
            # The call is moving between replicas: the latest turn waits for where it lands.
            self._deferred = (fixed, user_text, dtmf, ended_at)
            return
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._speech_end_at = ended_at
        self._reply_begun_at = self.loop.time()
        self._reply_keys = dtmf if dtmf and not (user_text or fixed) else ""
        self._reply_asked = None
        self._reply = self.loop.create_task(self._run_reply(fixed, user_text, dtmf))

    async def _run_reply(self, fixed: str, user_text: str | None, dtmf: str | None) -> None:
        clearing = self._clearing
        if clearing is not None and not clearing.done():
            # A barge-in first records what was heard of the agent, then this turn begins.
            await asyncio.wait([clearing])
        line = self._open_line()
        try:
            result = await self._compose(fixed, user_text, dtmf)
            total = sum(u.seconds for u in result.utterances)
            await played(result.utterances, timeout=total + 5.0)
            self._settle(line, self.loop.time())
        except Exception as exc:  # noqa: BLE001 - a bug in this reply: the call goes on
            self.gw.supervisor.report("call", exc, call_id=self.call_id)
            with contextlib.suppress(Exception):   # what it had queued still plays
                await played(line.spoken, sum(u.seconds for u in line.spoken) + 5.0)
            return
        finally:
            # Cancelled (a barge-in, a key, the goodbye, the stream's end) or failed: the line
            # is settled once its audio is done, by whoever cut it or by the last mark.
            line.closed = True
            self._settle_lines()
        self.last_activity = self.loop.time()
        for tool in result.tools:
            await self._act(tool)

    async def _compose(self, fixed: str, user_text: str | None, dtmf: str | None
                       ) -> TurnResult:
        """Speak the reply: ``fixed`` text, or the LLM's answer (an apology if every
        provider failed)."""
        asked = user_message(user_text, dtmf)
        if asked is not None:
            self.history.append(asked)
            self._reply_asked = asked
        if fixed:
            fixed = self._fill(fixed)
            return TurnResult(utterances=[await self.speaker.say(fixed)], text=fixed)
        b = self.backends
        try:
            return await run_turn(
                self.llm, self.speaker, self.history, user_text=user_text, dtmf=dtmf,
                metrics=self.gw.metrics, tools=b.tool_specs, runner=b.tools,
                context=llm_context(self.call_id, self.carrier, self.parameters,
                                    self.variables),
                max_rounds=self.config.llm.max_tool_rounds,
                on_usage=lambda used: self.meter.tokens(used, self.llm.name))
        except Exception as exc:  # noqa: BLE001 - every provider failed: apologise
            log.warning("reply_failed", call_id=self.call_id, error=repr(exc))
            return TurnResult(utterances=[await self.speaker.say(FAILURE_APOLOGY)])

    def _utterance_started(self, utt: Utterance) -> None:
        """The playout sent an utterance's first audio: its reply's line is in the record
        from now on (once per utterance, never per frame)."""
        if self._speech_end_at is not None and utt.first_sent_at is not None:
            response = utt.first_sent_at - self._speech_end_at
            self.gw.metrics.turn_latency.labels("response").observe(response)
            self.record.turns.append(answered(response))   # with the turn's stages
            self._speech_end_at = None
        for line in reversed(self._lines):
            if line.owns(utt):
                line.started(self.record.transcript)
                break
        self._touch()

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

    def replay_deferred(self) -> None:
        """Answer the turn that came while the call was moving (see ``handing_off``)."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None and not self.ending:
            fixed, user_text, dtmf, ended_at = deferred
            self._start_reply(fixed=fixed, user_text=user_text, dtmf=dtmf, ended_at=ended_at)

    def say_again(self, text: str) -> None:
        """Say ``text`` (already filled): the part of a reply a hand-off cut."""
        if not self.ending:
            self._start_reply(fixed=text)

    def _fill(self, text: str) -> str:
        return fill(text, self.variables)


__all__ = ["FAILURE_APOLOGY", "Replies"]
