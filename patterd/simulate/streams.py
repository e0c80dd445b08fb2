"""The call's media streams as the caller's side of the carrier sees them: which streams are up,
what each one plays, and what the caller notices when the call's media moves between streams.

A call may have several streams at once (Telnyx ``streaming_start`` on a live call): the
carrier forks the caller's audio to every stream that is up and plays what each bidirectional
stream sends, each with its own playout buffer, marks and ``clear`` (the caller hears the mix).
The oldest stream up is the call's current one (:attr:`Streams.current`).

What a move costs the caller is measured here, where the caller's frames are sent:

- :attr:`Streams.gaps`: per move from one stream to another, the seconds during which no stream
  carried the caller's audio — 0.0 when the new stream was up before the old one stopped, else
  from the old stream's ``stop`` (or its loss) to the new stream's ``start``;
- :attr:`Streams.unsent_frames`: the caller's 20 ms frames no stream carried between one stream
  carrying audio and another carrying it again (frames before the first stream and after the
  call started ending are not counted: no move was under way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .playout import FRAME_BYTES, SILENCE, Playout, Tick, is_voiced


class Leg(Protocol):
    """A live media stream the caller's audio goes into (one per carrier WebSocket)."""

    @property
    def started(self) -> bool: ...
    async def send_audio(self, pcm: bytes) -> bool: ...
    async def send_dtmf(self, digit: str) -> None: ...
    async def send_mark(self, name: str) -> None: ...


class Streams:
    """The live streams of one call (oldest first), their playout buffers and the move figures."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.live: list[Leg] = []                   # attached streams, oldest first
        self._playouts: dict[Leg, Playout] = {}
        self.gaps: list[float] = []
        self.unsent_frames = 0
        self.ending = False         # the call is being torn down: streams stopping now are no move
        self._gap_from: float | None = None         # when the last stream went, the call going on
        self._uncarried = 0                         # frames no stream carried since then
        self._carried = False                       # some stream has carried the caller's audio
        self._retired_underruns = 0
        self._retired_dropped = 0

    @property
    def current(self) -> Leg | None:
        """The call's current stream (the oldest one up), or None."""
        return self.live[0] if self.live else None

    def playout(self, leg: Leg | None = None) -> Playout | None:
        """``leg``'s playout buffer (None: the current stream's); None when it is not up."""
        if leg is None:
            leg = self.current
        return self._playouts.get(leg) if leg is not None else None

    # ------------------------------------------------------------------ streams come and go
    def attach(self, leg: Leg) -> None:
        """``leg`` is up (its ``start`` was sent): the caller's audio goes into it from now."""
        if leg in self._playouts:
            return
        self._playouts[leg] = Playout()
        self.live.append(leg)
        if self._gap_from is not None and not self.ending:
            self.gaps.append(max(0.0, self._now() - self._gap_from))
        self._gap_from = None

    def detach(self, leg: Leg) -> None:
        """``leg`` is gone (stopped, closed or lost): its queued audio and marks with it."""
        playout = self._playouts.pop(leg, None)
        if playout is None:
            return
        self._retired_underruns += playout.underruns
        self._retired_dropped += playout.dropped_bytes
        playout.drop()
        newer = self.live.index(leg) < len(self.live) - 1
        self.live.remove(leg)
        if self.ending:
            return
        if newer:                       # a stream started after this one carries the call on
            self.gaps.append(0.0)
        elif not self.live:
            self._gap_from = self._now()

    # ------------------------------------------------------------------ every 20 ms
    async def send(self, frame: bytes) -> None:
        """Send one frame of the caller's audio into every stream that is up."""
        if len(self.live) == 1:         # the usual case, on the hot path of every call
            leg = self.live[0]
            carried = leg.started and await leg.send_audio(frame)
        else:
            carried = False
            for leg in list(self.live):
                if leg.started and await leg.send_audio(frame):
                    carried = True
        if carried:
            self.unsent_frames += self._uncarried
            self._uncarried, self._carried = 0, True
        elif self._carried and not self.ending:
            self._uncarried += 1

    async def send_dtmf(self, digit: str) -> bool:
        """A key press into every stream that is up; False when none was."""
        sent = False
        for leg in list(self.live):
            if leg.started:
                await leg.send_dtmf(digit)
                sent = True
        return sent

    def play(self) -> tuple[Tick, list[tuple[Leg, str]]]:
        """Play 20 ms of every stream's buffer: the mix heard, and the marks reached (per
        stream, to echo on the stream that sent them)."""
        if len(self._playouts) == 1:
            ((leg, playout),) = self._playouts.items()
            tick = playout.tick()
            return tick, [(leg, name) for name in tick.marks]
        ticks = [(leg, playout.tick()) for leg, playout in list(self._playouts.items())]
        marks = [(leg, name) for leg, tick in ticks for name in tick.marks]
        playing = [tick for _, tick in ticks if tick.played]
        if len(playing) <= 1:
            tick = playing[0] if playing else Tick(SILENCE, 0, False, [])
            return tick, marks
        mix = np.zeros(FRAME_BYTES // 2, dtype=np.int32)
        for tick in playing:
            mix += np.frombuffer(tick.pcm, dtype="<i2")
        pcm = np.clip(mix, -32768, 32767).astype("<i2").tobytes()
        return Tick(pcm, max(t.played for t in playing), is_voiced(pcm), []), marks

    # ------------------------------------------------------------------ figures
    @property
    def underruns(self) -> int:
        """Playout underruns over every stream the call had."""
        return self._retired_underruns + sum(p.underruns for p in self._playouts.values())

    @property
    def cleared_bytes(self) -> int:
        """PCM bytes ``clear`` discarded, over every stream the call had."""
        return self._retired_dropped + sum(p.dropped_bytes for p in self._playouts.values())
