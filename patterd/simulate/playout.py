"""The carrier's playout buffer: what the daemon sends is queued and played to the caller at
exactly 8000 samples per second, with marks echoed when the audio queued before them has played.

Twilio and Telnyx both buffer whatever the daemon sends; a ``clear`` drops the queued audio and
returns every pending mark at once. This model is driven by a 20 ms tick (the caller's clock) and
works on decoded s16le PCM, so it does not care which codec the stream uses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2   # 320 bytes of s16le = 160 samples
SILENCE = bytes(FRAME_BYTES)
UNDERRUN_TICKS = 10  # audio resuming within 200 ms of running dry = an underrun, not a new reply
VOICED_RMS = 64.0   # ≈ −54 dBFS: anything above is audible agent speech, digital silence is 0


def rms(pcm: bytes) -> float:
    """Root-mean-square level of s16le PCM (0 for empty input)."""
    if len(pcm) < 2:
        return 0.0
    samples = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples)))


def is_voiced(pcm: bytes, threshold: float = VOICED_RMS) -> bool:
    """True when ``pcm`` holds audible sound rather than (near-)digital silence."""
    return rms(pcm) >= threshold


@dataclass(slots=True)
class Tick:
    """What one 20 ms tick of playout produced."""

    pcm: bytes              # exactly FRAME_BYTES: the audio the caller heard in this period
    played: int            # bytes of it that came from the daemon (the rest is silence)
    voiced: bool           # the period held audible agent speech
    marks: list[str]       # marks whose preceding audio has now finished playing


class Playout:
    """FIFO of audio chunks and mark names, drained ``FRAME_BYTES`` per tick."""

    __slots__ = ("_queue", "_buffered", "_due", "_busy", "underruns", "_dry",
                 "dropped_bytes")

    def __init__(self) -> None:
        self._queue: deque[bytes | str] = deque()   # bytes = PCM, str = mark name
        self._buffered = 0
        self._due: list[str] = []       # marks reached inside the period being played
        self._busy = False              # the current period is playing daemon audio
        self._dry = UNDERRUN_TICKS + 1  # ticks since daemon audio last played
        self.underruns = 0              # times the buffer ran dry in the middle of speech
        self.dropped_bytes = 0          # PCM bytes discarded by ``clear``

    @property
    def buffered_bytes(self) -> int:
        """PCM bytes queued and not yet played."""
        return self._buffered

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio queued and not yet played."""
        return self._buffered / (2 * SAMPLE_RATE)

    @property
    def busy(self) -> bool:
        """Audio is queued or the current period is still playing some."""
        return self._busy or self._buffered > 0

    def push_audio(self, pcm: bytes) -> None:
        """Queue decoded daemon audio."""
        if pcm:
            self._queue.append(bytes(pcm))
            self._buffered += len(pcm)

    def push_mark(self, name: str) -> list[str]:
        """Queue a mark; returns it at once (to echo now) when nothing is left to play."""
        if not self._queue and not self._busy:
            return [name]
        self._queue.append(name)
        return []

    def clear(self) -> list[str]:
        """Drop all queued audio; returns every pending mark, in order, to echo immediately."""
        marks = list(self._due)
        self._due.clear()
        for item in self._queue:
            if isinstance(item, str):
                marks.append(item)
        self.dropped_bytes += self._buffered
        self._queue.clear()
        self._buffered = 0
        self._busy = False
        self._dry = UNDERRUN_TICKS + 1
        return marks

    def drop(self) -> None:
        """Forget everything (the stream ended): no marks are echoed any more."""
        self._queue.clear()
        self._due.clear()
        self._buffered = 0
        self._busy = False
        self._dry = UNDERRUN_TICKS + 1

    def tick(self) -> Tick:
        """Play one 20 ms period."""
        marks, self._due = self._due, []
        while self._queue and isinstance(self._queue[0], str):
            marks.append(self._queue.popleft())  # type: ignore[arg-type]
        out = bytearray()
        while self._queue and len(out) < FRAME_BYTES:
            head = self._queue[0]
            if isinstance(head, str):
                # audio before this mark finishes playing inside this period: echo next tick
                self._due.append(head)
                self._queue.popleft()
                continue
            take = FRAME_BYTES - len(out)
            if len(head) <= take:
                out += head
                self._queue.popleft()
            else:
                out += head[:take]
                self._queue[0] = head[take:]
            self._buffered -= min(take, len(head))
        while self._queue and isinstance(self._queue[0], str) and len(out) == FRAME_BYTES:
            self._due.append(self._queue.popleft())  # type: ignore[arg-type]
        played = len(out)
        if played:
            if 0 < self._dry <= UNDERRUN_TICKS:
                self.underruns += 1     # a gap of a few ticks inside a reply: audible glitch
            self._dry = 0
        else:
            self._dry += 1
        self._busy = played > 0
        if played < FRAME_BYTES:
            out += bytes(FRAME_BYTES - played)
        pcm = bytes(out)
        return Tick(pcm, played, played > 0 and is_voiced(pcm), marks)
