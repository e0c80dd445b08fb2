"""Outbound audio for one call, paced at about real time, with marks.

Carriers buffer whatever they are sent, so dumping a whole reply would make ``clear`` lag and
hide how much the caller actually heard. The playout keeps at most ``lead`` seconds of audio
ahead of the carrier's playback clock, sends ``chunk`` seconds per frame, and puts a mark after
each utterance; the mark echo (or, on a barge-in, the playback clock) tells the session what
was heard.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..carriers.base import MediaProtocol

BYTES_PER_SECOND = 8000  # G.711 at 8 kHz: one byte per sample
_ids = itertools.count(1)


@dataclass(slots=True)
class Utterance:
    """One stretch of agent speech and how far its playback got."""

    text: str
    mark: str = field(default_factory=lambda: f"u{next(_ids)}")
    queued: int = 0            # bytes handed to the playout
    sent: int = 0              # bytes sent to the carrier
    play_start: float | None = None  # loop time the carrier began playing it
    first_sent_at: float | None = None  # loop time its first frame left
    finished: bool = False     # no more audio will be queued
    played: bool = False       # the mark came back: all of it was heard
    cleared_at: float | None = None
    heard_seconds: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seconds(self) -> float:
        """Length of the audio queued so far."""
        return self.queued / BYTES_PER_SECOND


class PlayoutTap(Protocol):
    """Sees the agent's audio as it leaves (e.g. the local recorder)."""

    def tx(self, payload: bytes) -> None:
        """A frame of codec bytes is being sent to the carrier."""

    def cleared(self) -> None:
        """The carrier is told to drop the audio it has not played."""


class Playout:
    """The paced sender of one media stream."""

    def __init__(self, proto: MediaProtocol, send: Callable[[str], Awaitable[None]], *,
                 chunk: float = 0.04, lead: float = 0.12,
                 on_frame: Callable[[int], None] | None = None,
                 on_start: Callable[[Utterance], None] | None = None) -> None:
        self._proto = proto
        self._send = send
        self._chunk = int(chunk * BYTES_PER_SECOND)
        self._lead = lead
        self._on_frame = on_frame
        self._on_start = on_start
        self._buffer = bytearray()
        self._pending: list[Utterance] = []      # utterances with audio in _buffer or unsent
        self._awaiting_mark: list[Utterance] = []
        self._wake = asyncio.Event()
        self._play_end = 0.0                      # when the carrier will have played all sent
        self._task: asyncio.Task[None] | None = None
        self.frames_sent = 0
        self.first_frame_at: float | None = None  # loop time of the latest reply's first frame
        self.tap: PlayoutTap | None = None

    # -- producer side ---------------------------------------------------------------------
    def begin(self, text: str = "") -> Utterance:
        """Start an utterance; its audio follows with :meth:`feed`."""
        utt = Utterance(text)
        self._pending.append(utt)
        return utt

    def feed(self, utt: Utterance, payload: bytes) -> None:
        """Queue codec bytes (carrier format) for ``utt``."""
        if utt.cleared_at is not None or not payload:
            return
        self._buffer += payload
        utt.queued += len(payload)
        self._kick()

    def finish(self, utt: Utterance) -> None:
        """No more audio for ``utt``: a mark follows its last byte."""
        utt.finished = True
        if utt.queued == 0 and utt in self._pending:
            self._pending.remove(utt)
            utt.played = True
            utt.done.set()
        self._kick()

    # -- state -------------------------------------------------------------------------------
    @property
    def speaking(self) -> bool:
        """True while the caller is (or is about to be) hearing agent audio."""
        loop_now = asyncio.get_running_loop().time()
        return bool(self._buffer) or self._play_end > loop_now or any(
            not u.finished for u in self._pending)

    async def clear(self) -> list[Utterance]:
        """Drop everything queued here and at the carrier (a barge-in). Returns the
        utterances that were cut, each with ``heard_seconds`` set."""
        now = asyncio.get_running_loop().time()
        cut: list[Utterance] = []
        for utt in self._awaiting_mark + self._pending:
            if utt.cleared_at is not None or utt.played:
                continue
            utt.cleared_at = now
            started = utt.play_start
            utt.heard_seconds = 0.0 if started is None else min(
                max(0.0, now - started), utt.sent / BYTES_PER_SECOND)
            utt.done.set()
            cut.append(utt)
        self._buffer.clear()
        self._pending.clear()
        self._awaiting_mark.clear()
        self._play_end = now
        if self.tap is not None:
            self.tap.cleared()
        await self._send(self._proto.clear())
        return cut

    def on_mark(self, name: str) -> Utterance | None:
        """A mark came back; returns its utterance if it was still awaited."""
        for i, utt in enumerate(self._awaiting_mark):
            if utt.mark == name:
                del self._awaiting_mark[i]
                utt.played = True
                utt.heard_seconds = utt.sent / BYTES_PER_SECOND
                utt.done.set()
                return utt
        return None

    async def close(self) -> None:
        """Stop sending."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for utt in self._pending + self._awaiting_mark:
            utt.done.set()

    # -- the sender --------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                await self._flush_marks()
                self._wake.clear()
                if not self._buffer:
                    await self._wake.wait()
                continue
            now = loop.time()
            if self._play_end < now:
                self._play_end = now          # the carrier ran dry: playback restarts now
            ahead = self._play_end - now
            if ahead >= self._lead:
                await asyncio.sleep(ahead - self._lead + self._chunk / BYTES_PER_SECOND / 2)
                continue
            await self._send_chunk(now)

    async def _send_chunk(self, now: float) -> None:
        utt = self._pending[0] if self._pending else None
        size = self._chunk
        if utt is not None:  # never straddle two utterances: marks sit between them
            size = min(size, utt.queued - utt.sent)
        size = min(size, len(self._buffer))
        if size <= 0:  # the head utterance waits for more audio
            self._wake.clear()
            await self._wake.wait()
            return
        payload = bytes(self._buffer[:size])
        del self._buffer[:size]
        if utt is not None:
            if utt.play_start is None:
                utt.play_start = self._play_end
                utt.first_sent_at = now
                self.first_frame_at = now
                if self._on_start is not None:
                    self._on_start(utt)
            utt.sent += size
        self._play_end += size / BYTES_PER_SECOND
        self.frames_sent += 1
        if self._on_frame is not None:
            self._on_frame(size)
        if self.tap is not None:
            self.tap.tx(payload)
        await self._send(self._proto.audio(payload))
        await self._flush_marks()

    async def _flush_marks(self) -> None:
        while self._pending:
            utt = self._pending[0]
            if not utt.finished or utt.sent < utt.queued:
                return
            self._pending.pop(0)
            self._awaiting_mark.append(utt)
            await self._send(self._proto.mark(utt.mark))
