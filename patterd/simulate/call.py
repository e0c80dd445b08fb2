"""What both simulated carriers share: the caller, its clock and script tasks, the call's event
queue (REST commands from the daemon, the script ending, the time limit) and the result."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

from ..config import Config
from .api import CarrierApi
from .caller import Caller, Step
from .clock import Clock
from .media import MediaLeg
from .results import COMPLETED, ERROR, Action, CallResult, interarrival_jitter

Event = tuple[str, Any]


class SimulatedCall:
    """One inbound call placed by a simulated carrier; subclasses implement :meth:`_run`."""

    carrier = ""

    def __init__(self, config: Config, url: str, steps: list[Step], *,
                 session: aiohttp.ClientSession, api: CarrierApi | None = None,
                 keep_audio: bool = True, timeout: float = 300.0,
                 from_number: str = "", clock: Clock | None = None) -> None:
        self.config = config
        self.url = url.rstrip("/")
        self.steps = list(steps)
        self.session = session
        self.api = api
        self.keep_audio = keep_audio
        self.clock = clock
        self.timeout = timeout
        self.from_number = from_number or "+1202555" + f"{secrets.randbelow(10000):04d}"
        self.call_id = self.new_call_id()
        self.result = CallResult(self.carrier, self.call_id)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.caller: Caller | None = None
        self.answered_at: float | None = None
        self.ended = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def new_call_id(self) -> str:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError

    async def on_rest(self, action: str, fields: dict[str, Any]) -> web.Response:
        """A REST request from the daemon for this call (see :class:`CarrierApi`)."""
        raise NotImplementedError

    async def _after_end(self) -> None:
        """Carrier work once the call is over (final status callbacks/webhooks)."""

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> CallResult:
        """Place the call, run the caller's script, and return what was observed."""
        self.caller = Caller(keep_audio=self.keep_audio)
        self.result.started_at = time.time()
        if self.api is not None:
            self.api.calls[self.call_id] = self
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout, self.events.put_nowait, ("timeout", None))
        try:
            await self._run()
        except Exception as exc:  # a bug or an unexpected daemon answer: report, never hang
            self.fail(f"simulator error: {type(exc).__name__}: {exc}")
        finally:
            await self._finish()
        return self.result

    def fail(self, message: str) -> None:
        """The call failed: outcome ``error`` unless another outcome was already decided."""
        self.result.errors.append(message)
        if not self.ended:
            self.end(ERROR, message)

    def end(self, outcome: str, detail: str = "") -> None:
        """Decide how the call ended (the first decision wins)."""
        if not self.ended:
            self.ended = True
            if self.caller is not None:     # streams stopping from now on are no move
                self.caller.streams.ending = True
            if outcome == COMPLETED and self.caller is not None and self.caller.dropped:
                detail = "the media connection dropped (no stop frame), then the caller hung up"
            self.result.outcome, self.result.detail = outcome, detail

    def answered(self) -> None:
        """The call is answered and the first stream is up: the caller starts talking."""
        if self.answered_at is not None:
            return
        assert self.caller is not None
        self.answered_at = self.caller.now()
        if self.clock is not None:
            self.clock.add(self.caller)
        else:
            self._tasks.append(asyncio.create_task(self.caller.run_clock(), name="sim-clock"))
        self._tasks.append(asyncio.create_task(self._script(), name="sim-script"))

    async def _script(self) -> None:
        assert self.caller is not None
        try:
            await self.caller.run_script(self.steps)
        except Exception as exc:
            self.result.errors.append(f"caller script failed: {type(exc).__name__}: {exc}")
        finally:
            self.events.put_nowait(("script_done", None))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` alongside the call (cancelled when the call is over)."""
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    def action(self, name: str, fields: dict[str, Any]) -> None:
        """Record a REST command of the daemon."""
        at = self.caller.now() if self.caller is not None else 0.0
        self.result.actions.append(Action(at, name, dict(fields)))

    async def next_event(self, leg_task: asyncio.Task[Any] | Iterable[asyncio.Task[Any]] | None
                         ) -> Event:
        """The next call event, or ``("leg_closed", task)`` when a media socket's task (one of
        ``leg_task``) ended: the daemon closed it."""
        if not self.events.empty():
            return self.events.get_nowait()
        legs = [] if leg_task is None else [leg_task] if isinstance(leg_task, asyncio.Task) \
            else list(leg_task)
        getter = asyncio.ensure_future(self.events.get())
        waiting: set[asyncio.Future[Any]] = {getter, *legs}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return "leg_closed", next(task for task in legs if task.done())

    async def end_leg(self, leg: MediaLeg, leg_task: asyncio.Task[Any], *, stop: bool) -> None:
        """Tear a media stream down (``stop`` + close when the carrier ends it; a reset with
        neither when the caller's script ended with :class:`~.steps.Drop`)."""
        if stop and self.caller is not None and self.caller.dropped:
            await leg.drop()
        elif stop:
            await leg.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(leg_task), 5.0)
        if not leg_task.done():
            leg_task.cancel()
        if self.caller is not None:
            self.caller.detach(leg)

    async def _finish(self) -> None:
        caller = self.caller
        assert caller is not None
        caller.hung_up.set()
        if self.clock is not None:
            self.clock.remove(caller)
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ended_at = caller.now()
        try:
            await self._after_end()
        except Exception as exc:
            self.result.warnings.append(f"after the call: {type(exc).__name__}: {exc}")
        if self.api is not None:
            self.api.calls.pop(self.call_id, None)
            self.api.ended.add(self.call_id)
        r = self.result
        r.duration = ended_at - self.answered_at if self.answered_at is not None else 0.0
        r.ended_at = ended_at
        r.errors.extend(e for e in caller.errors if e not in r.errors)
        r.lines = [*caller.lines, *caller.agent_lines()]
        r.turns, r.barge_ins = caller.turns, caller.barge_ins
        r.agent_audio = bytes(caller.heard)
        r.audio_start = caller.heard_start
        frames = dict(caller.counts)
        frames["playout_underruns"] = caller.streams.underruns
        frames["cleared_bytes"] = caller.streams.cleared_bytes
        r.frames = frames
        r.stream_gaps = list(caller.streams.gaps)
        r.unsent_frames = caller.streams.unsent_frames
        r.jitter = interarrival_jitter(caller.rx_frames)
