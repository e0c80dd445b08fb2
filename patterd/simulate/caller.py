"""The simulated caller: a script of steps, a mouth that streams 20 ms frames in real time and
an ear (the carrier's playout buffer) recording everything the daemon played.

The caller is carrier-neutral: a carrier module's media legs (:class:`Leg`) attach themselves
when their stream is up and forward the daemon's ``media``/``mark``/``clear`` frames to
:meth:`Caller.on_media`, :meth:`Caller.on_mark` and :meth:`Caller.on_clear`; a call may have
several streams at once (:mod:`.streams`). A clock ticks every 20 ms: it sends the caller's next
frame (speech or silence — carriers stream continuously) into every stream that is up and
plays 20 ms of queued daemon audio. Many calls may share one :class:`~patterd.simulate.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque

from .clock import TICK, Clock
from .playout import FRAME_BYTES, SILENCE, is_voiced
from .results import BargeIn, Line, Turn
from .steps import Drop, Dtmf, Say, Step, Then, Wait, WaitForAgent, WaitForAgentSpeech
from .streams import Leg, Streams

__all__ = ["Caller", "Drop", "Dtmf", "Leg", "Say", "Step", "Then", "Wait", "WaitForAgent",
           "WaitForAgentSpeech"]

BURST_GAP = 0.3          # a pause this long in the daemon's audio starts a new reply
AUDIBLE_WINDOW = 0.25    # the agent counts as speaking this long after its last voiced frame
SEGMENT_GAP = 0.7        # agent silence that splits two agent lines


class _Utterance:
    __slots__ = ("pcm", "offset", "text", "done", "start")

    def __init__(self, pcm: bytes, text: str, done: asyncio.Future[float]) -> None:
        self.pcm, self.offset, self.text, self.done = pcm, 0, text, done
        self.start = 0.0


class Caller:
    """One caller: runs the script and the 20 ms clock; collects what it heard and measured."""

    def __init__(self, *, keep_audio: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.streams = Streams(self.now)    # the call's media streams (see :mod:`.streams`)
        self.keep_audio = keep_audio
        self.heard = bytearray()
        self.lines: list[Line] = []
        self.turns: list[Turn] = []
        self.barge_ins: list[BargeIn] = []
        self.errors: list[str] = []
        self.counts: Counter[str] = Counter()
        self.rx_frames: list[tuple[float, float]] = []    # (arrival, seconds of audio)
        # agent speech heard: [start, end, seconds of it voiced] (a gap up to SEGMENT_GAP
        # joins two stretches: a daemon falling behind leaves such gaps in one line)
        self.segments: list[list[float]] = []
        self.clears: list[float] = []                     # when ``clear`` frames arrived
        self.hung_up = asyncio.Event()      # the call is over: stop the script and the clock
        self.dropped = False                # the script ended with Drop: reset, no ``stop``
        self._mouth: list[_Utterance] = []
        self._last_heard_voiced = -math.inf
        self._voiced_ticks = 0
        self._burst_start = -math.inf
        self._burst_last = -math.inf
        self._cleared = False
        self._heard_start: float | None = None

    def now(self) -> float:
        """Seconds since the call started."""
        return self.loop.time() - self.t0

    @property
    def leg(self) -> Leg | None:
        """The call's current media stream (the oldest one up), or None."""
        return self.streams.current

    def attach(self, leg: Leg) -> None:
        """A media stream is up: the caller's audio is sent into it (with any others up)."""
        self.streams.attach(leg)

    def detach(self, leg: Leg) -> None:
        """A media stream is gone: its queued audio and marks are lost with it."""
        self.streams.detach(leg)

    # ------------------------------------------------------------------ the clock
    async def run_clock(self) -> None:
        """Tick on a clock of its own until the call is over (see :class:`Clock`)."""
        clock = Clock()
        clock.add(self)
        try:
            await self.hung_up.wait()
        finally:
            clock.remove(self)

    async def tick(self) -> None:
        """One 20 ms period: send the caller's next frame, play 20 ms of the daemon's audio."""
        if self.hung_up.is_set():
            return
        t = self.now()
        frame = self._next_frame(t)
        await self.streams.send(frame)
        played, marks = self.streams.play()
        if self._heard_start is None:
            self._heard_start = t
        if self.keep_audio:
            self.heard += played.pcm
        if played.voiced:
            self._voiced_ticks += 1
            self._last_heard_voiced = t
            # a clear ends the line it cut: audio after it is the agent's next line
            if self.segments and t - self.segments[-1][1] <= SEGMENT_GAP \
                    and not (self.clears and self.clears[-1] >= self.segments[-1][0]):
                self.segments[-1][1] = t + TICK
                self.segments[-1][2] += TICK
            else:
                self.segments.append([t, t + TICK, TICK])
        for leg, name in marks:
            await self._echo(name, leg)

    def _next_frame(self, t: float) -> bytes:
        if not self._mouth:
            return SILENCE
        utt = self._mouth[0]
        if utt.offset == 0:
            utt.start = t
            if t - self._last_heard_voiced < AUDIBLE_WINDOW:
                self.barge_ins.append(BargeIn(start=t))
        chunk = utt.pcm[utt.offset:utt.offset + FRAME_BYTES]
        utt.offset += FRAME_BYTES
        if utt.offset >= len(utt.pcm):
            self._mouth.pop(0)
            if not utt.done.done():
                utt.done.set_result(t)
        if len(chunk) < FRAME_BYTES:
            chunk += bytes(FRAME_BYTES - len(chunk))
        return chunk

    # ------------------------------------------------------------------ from the daemon
    def on_media(self, pcm: bytes, leg: Leg | None = None) -> None:
        """Audio from the daemon arrived on ``leg`` (None: the current stream), decoded: queue
        it for playout, time the reply. Audio of a stream no longer up is lost."""
        playout = self.streams.playout(leg)
        if playout is None:
            return
        t = self.now()
        self.counts["rx_media"] += 1
        self.rx_frames.append((t, len(pcm) / 16000.0))
        playout.push_audio(pcm)
        if not is_voiced(pcm):
            return
        if t - self._burst_last > BURST_GAP or self._cleared:
            self._burst_start, self._cleared = t, False
            pending = [turn for turn in self.turns if turn.latency is None and turn.end <= t]
            if pending:
                pending[-1].latency = t - pending[-1].end
        self._burst_last = t

    async def on_mark(self, name: str, leg: Leg | None = None) -> None:
        """The daemon sent a mark on ``leg``: echo it there when the audio queued before it on
        that stream has played."""
        playout = self.streams.playout(leg)
        if playout is None:
            return
        self.counts["rx_marks"] += 1
        for ready in playout.push_mark(name):
            await self._echo(ready, leg)

    async def on_clear(self, leg: Leg | None = None) -> None:
        """The daemon sent ``clear`` on ``leg``: drop that stream's queued audio, echo its
        pending marks at once."""
        playout = self.streams.playout(leg)
        if playout is None:
            return
        t = self.now()
        self.counts["rx_clears"] += 1
        self.clears.append(t)
        self._cleared = True
        pending = playout.clear()
        for b in reversed(self.barge_ins):
            if b.clear_latency is None and b.start <= t:
                b.clear_latency = t - b.start
                break
        for name in pending:
            await self._echo(name, leg)

    async def _echo(self, name: str, leg: Leg | None) -> None:
        leg = leg if leg is not None else self.leg
        if leg is not None and self.streams.playout(leg) is not None:
            self.counts["tx_marks"] += 1
            await leg.send_mark(name)

    # ------------------------------------------------------------------ the script
    async def run_script(self, steps: list[Step]) -> None:
        """Run the steps in order; returns early when the call ends (or at a ``Drop``)."""
        pending = deque(steps)
        while pending:
            step = pending.popleft()
            if self.hung_up.is_set():
                return
            if isinstance(step, Then):
                pending.extendleft(reversed(step.plan(self.now())))
                continue
            if isinstance(step, Drop):
                self.dropped = True
                return
            if isinstance(step, Say):
                await self._say(step)
            elif isinstance(step, Dtmf):
                await self._press(step)
            elif isinstance(step, WaitForAgent):
                await self._wait_for_agent(step)
            elif isinstance(step, WaitForAgentSpeech):
                await self._wait_for_speech(step)
            elif isinstance(step, Wait):
                await self._sleep(step.seconds)
            else:
                raise TypeError(f"unknown step {step!r}")

    async def _say(self, step: Say) -> None:
        if not step.pcm:
            return
        done: asyncio.Future[float] = self.loop.create_future()
        utt = _Utterance(step.pcm, step.text, done)
        self._mouth.append(utt)
        end = await self._until(done)
        if end is None:
            return
        self.counts["utterances"] += 1
        self.lines.append(Line("caller", utt.start, end, step.text))
        self._open_turn(Turn("speech", step.text, utt.start, end))

    async def _press(self, step: Dtmf) -> None:
        start = self.now()
        for i, digit in enumerate(step.digits):
            if self.hung_up.is_set():
                return
            if await self.streams.send_dtmf(digit):
                self.counts["tx_dtmf"] += 1
            if i < len(step.digits) - 1:
                await self._sleep(step.gap)
        end = self.now()
        self.lines.append(Line("caller", start, end, f"[DTMF {step.digits}]"))
        self._open_turn(Turn("dtmf", step.digits, start, end))

    def _open_turn(self, turn: Turn) -> None:
        # the agent may already be answering (it replied while the caller was finishing)
        if turn.start <= self._burst_start and turn.end - self._burst_last < BURST_GAP:
            turn.latency = self._burst_start - turn.end
        self.turns.append(turn)

    async def _wait_for_agent(self, step: WaitForAgent) -> None:
        start = self.now()
        spoke = start - self._last_heard_voiced < step.silence
        seen = self._voiced_ticks
        while not self.hung_up.is_set():
            now = self.now()
            spoke = spoke or self._voiced_ticks > seen
            if spoke and now - self._last_heard_voiced >= step.silence:
                return
            if not spoke and now - start >= step.timeout:
                if step.required:
                    self.errors.append(f"the agent said nothing within {step.timeout:g} s "
                                       f"(at {start:.2f} s into the call)")
                return
            await asyncio.sleep(TICK)

    async def _wait_for_speech(self, step: WaitForAgentSpeech) -> None:
        start = self.now()
        while not self.hung_up.is_set():
            if self.now() - self._last_heard_voiced < TICK * 2:
                await self._sleep(step.delay)
                return
            if self.now() - start >= step.timeout:
                self.errors.append(f"the agent did not start speaking within {step.timeout:g} s")
                return
            await asyncio.sleep(TICK)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.hung_up.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            pass

    async def _until(self, fut: asyncio.Future[float]) -> float | None:
        """``fut``'s result, or None when the call ends first."""
        ended = asyncio.ensure_future(self.hung_up.wait())
        try:
            await asyncio.wait({fut, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        return fut.result() if fut.done() else None

    # ------------------------------------------------------------------ results
    def agent_lines(self) -> list[Line]:
        """The agent's utterances as heard (text filled in later by transcription)."""
        lines = []
        for i, (s, e, v) in enumerate(self.segments):
            # cut: a clear came while it played or in the silence after it, before the next
            until = min(e + SEGMENT_GAP, self.segments[i + 1][0] if i + 1 < len(self.segments)
                        else math.inf)
            lines.append(Line("agent", s, e, interrupted=any(s <= c <= until
                                                             for c in self.clears),
                              voiced=round(v, 3)))
        return lines

    @property
    def heard_start(self) -> float:
        """Call time (s) of the first sample of :attr:`heard`."""
        return self._heard_start if self._heard_start is not None else 0.0
