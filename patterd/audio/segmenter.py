"""Speech start/end segmentation on top of any voice-activity detector.

:class:`SpeechSegmenter` takes s16le frames of any size, cuts them into the VAD's windows in a
preallocated buffer, and applies thresholds with hysteresis and minimum durations. The
detectors themselves live in :mod:`patterd.audio.vad`; :class:`Vad` is the interface they share.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from patterd.audio.codecs import BytesLike

if TYPE_CHECKING:
    from patterd.audio.batch_turn import TurnBatcher, TurnRequest

__all__ = ["SpeechEnd", "SpeechEvent", "SpeechSegmenter", "SpeechStart", "TurnGate", "Vad"]

_SCALE: Final = np.float32(1.0 / 32768.0)


class Vad(Protocol):
    """What the segmenter needs from a voice-activity detector."""

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the detector expects."""
        ...

    @property
    def window_samples(self) -> int:
        """Exact number of samples per :meth:`probability` call."""
        ...

    def probability(self, window: BytesLike) -> float:
        """Speech probability in [0, 1] for one window of s16le PCM."""
        ...

    def probability_f32(self, window: np.ndarray) -> float:
        """Same, for ``window_samples`` float32 samples in [-1, 1). Does not modify it."""
        ...

    def reset(self) -> None:
        """Forget all state (start of an unrelated stream)."""
        ...


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech began ``at_seconds`` into the stream (start of its first voiced window)."""

    at_seconds: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """Speech stopped ``at_seconds`` into the stream (start of the first silent window)."""

    at_seconds: float


SpeechEvent = SpeechStart | SpeechEnd
_NO_EVENTS: Final[tuple[SpeechEvent, ...]] = ()
PRE_SPEECH: Final = 0.5     # seconds of audio before the speech the turn model also hears
TURN_SECONDS: Final = 8.0   # the most audio it hears (the end of a longer turn)


@dataclass(frozen=True, slots=True)
class TurnGate:
    """Semantic end of turn, shared by every call's segmenter: once the caller has been silent
    for ``short`` seconds, ``batcher`` (the end-of-turn model) is asked whether the turn sounds
    finished (probability ≥ ``threshold``). Yes: the turn ends there. No: it ends after
    ``long`` seconds of silence. No answer by the segmenter's ``min_silence`` (model busy or
    failing): it ends there, as without a model."""

    batcher: TurnBatcher
    short: float = 0.2
    long: float = 1.3
    threshold: float = 0.5


_PENDING: Final = -1.0   # verdict states besides a probability
_NONE: Final = -2.0


class SpeechSegmenter:
    """Turn a stream of s16le frames into speech start/end events.

    Feed frames of any length (normally 20 ms = 160 samples at 8 kHz) with :meth:`feed`; they
    are collected into the VAD's window size in a preallocated buffer. A start is reported once
    ``min_speech`` seconds of consecutive windows score ≥ ``threshold``; an end once
    ``min_silence`` seconds score < ``end_threshold`` (default ``threshold - 0.15``, hysteresis).

    Events carry the stream time the speech really started/stopped; they are *returned* later,
    when confirmed -- ``min_speech`` (rounded up to whole windows) after a start and
    ``min_silence`` after an end, plus up to one window of buffering.

    With a :class:`TurnGate` the end of speech depends on the end-of-turn model's verdict
    (see there); the segmenter keeps the audio of the current turn (from ``PRE_SPEECH``
    before its start, at most ``TURN_SECONDS``) for it, and an end the verdict allows is
    handed to ``on_turn_end`` when the verdict arrives (on the event loop).
    """

    __slots__ = (
        "_vad", "_rate", "_window", "_buf", "_fill", "_windows", "_threshold", "_end_threshold",
        "_need_speech", "_need_silence", "_in_speech", "_run", "_run_start", "last_probability",
        "_gate", "_need_short", "_need_long", "_audio", "_request", "_verdict", "on_turn_end",
        "label", "_pending",
    )  # fmt: skip

    def __init__(
        self,
        vad: Vad,
        threshold: float = 0.5,
        min_speech: float = 0.1,
        min_silence: float = 0.5,
        *,
        end_threshold: float | None = None,
        turn: TurnGate | None = None,
        on_turn_end: Callable[[SpeechEvent], Any] | None = None,
        label: str = "",
    ) -> None:
        self._vad = vad
        self._rate = vad.sample_rate
        self._window = vad.window_samples
        self._buf = np.zeros(self._window, dtype=np.float32)
        self._threshold = threshold
        if end_threshold is None:
            end_threshold = max(threshold - 0.15, 0.01)
        self._end_threshold = end_threshold
        if end_threshold > threshold:
            raise ValueError("end_threshold must not exceed threshold")
        self._need_speech = self._windows_for(min_speech)
        self._need_silence = self._windows_for(min_silence)
        self._gate = turn
        self._need_short = self._windows_for(turn.short) if turn else 0
        self._need_long = self._windows_for(turn.long) if turn else 0
        if turn is not None and not self._need_short < self._need_silence <= self._need_long:
            raise ValueError("the turn model's short silence must be below min_silence, and "
                             "min_silence at most its long silence")
        self._audio = bytearray()   # the turn's audio (s16le), for the end-of-turn model
        self._pending = bytearray()   # s16le not yet a whole VAD window
        self._request: TurnRequest | None = None
        self._verdict = _NONE
        self.on_turn_end = on_turn_end or (lambda event: None)
        self.label = label
        self.last_probability = 0.0
        self.reset()

    def _windows_for(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self._rate / self._window - 1e-9))

    def reset(self) -> None:
        """Forget everything (new stream); also resets the VAD."""
        self._fill = 0
        self._pending.clear()
        self._windows = 0  # windows evaluated so far
        self._in_speech = False
        self._run = 0  # consecutive windows voting to change state
        self._run_start = 0  # window index where that run began
        self._drop_request()
        self._audio.clear()
        self._vad.reset()

    @property
    def in_speech(self) -> bool:
        """Whether the segmenter currently considers the caller to be speaking."""
        return self._in_speech

    @property
    def position_seconds(self) -> float:
        """Stream time of all audio fed so far."""
        return (self._windows * self._window + self._fill) / self._rate

    @property
    def unscored_seconds(self) -> float:
        """Audio fed but not scored by the VAD yet (a speech start in it is not known yet)."""
        return self._fill / self._rate

    @property
    def confirm_seconds(self) -> float:
        """Speech the VAD must hear before it confirms a start (``min_speech``, whole windows)."""
        return self._need_speech * self._window / self._rate

    def feed(self, pcm: BytesLike) -> tuple[SpeechEvent, ...]:
        """Feed s16le PCM (any length); return the events confirmed by it, usually none.

        Frames collect as bytes; numpy runs once per full window (every 32 ms for Silero at
        8 kHz), never per 20 ms frame."""
        if len(pcm) & 1:
            raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
        if self._gate is not None:
            self._keep(pcm)
        pending = self._pending
        pending += pcm
        window = self._window
        self._fill = len(pending) >> 1
        if self._fill < window:
            return _NO_EVENTS
        events = _NO_EVENTS
        full = self._fill // window
        samples = np.frombuffer(pending, dtype="<i2", count=full * window)
        buf = self._buf
        for k in range(full):
            np.multiply(samples[k * window : (k + 1) * window], _SCALE, out=buf)
            self._fill -= window
            event = self._window_ready(buf)
            if event is not None:
                events = (*events, event)
        del samples   # release the bytearray's buffer before resizing it
        del pending[: 2 * full * window]
        return events

    def _window_ready(self, window: np.ndarray) -> SpeechEvent | None:
        """One full window: score it now (a batched subclass queues it instead)."""
        return self._step(self._vad.probability_f32(window))

    def _step(self, p: float) -> SpeechEvent | None:
        self.last_probability = p
        index = self._windows
        self._windows = index + 1
        voting = p < self._end_threshold if self._in_speech else p >= self._threshold
        if not voting:
            if self._run and self._verdict != _NONE:   # the caller goes on: a new question
                self._drop_request()
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = index
        self._run += 1
        if self._in_speech:
            if self._run < self._silence_needed():
                if self._run == self._need_short and self._gate is not None:
                    self._ask()
                return None
            return self._end()
        if self._run < self._need_speech:
            return None
        self._in_speech = True
        self._run = 0
        at = self._run_start * self._window / self._rate
        if self._gate is not None:   # keep PRE_SPEECH of audio before the speech, no more
            keep = 2 * round((self.position_seconds - at + PRE_SPEECH) * self._rate)
            if len(self._audio) > keep:
                del self._audio[: len(self._audio) - keep]
        return SpeechStart(at)

    def _silence_needed(self) -> int:
        """Windows of silence that end the current speech, as the turn model has it now."""
        verdict = self._verdict
        if self._gate is None or verdict == _NONE or verdict == _PENDING:
            return self._need_silence
        return self._need_short if verdict >= self._gate.threshold else self._need_long

    def _end(self) -> SpeechEnd:
        self._in_speech = False
        self._run = 0
        self._drop_request()
        return SpeechEnd(self._run_start * self._window / self._rate)

    # -- the end-of-turn model ---------------------------------------------------------------
    def _keep(self, pcm: BytesLike) -> None:
        """Hold the frame for the turn model: the current turn (at most TURN_SECONDS), or
        between turns about PRE_SPEECH (trimmed in steps, not per frame)."""
        audio = self._audio
        audio += pcm
        second = 2 * self._rate
        limit = TURN_SECONDS * second if self._in_speech else 2 * PRE_SPEECH * second
        if len(audio) > limit + second // 2:
            del audio[: len(audio) - int(limit)]

    def _ask(self) -> None:
        gate = self._gate
        assert gate is not None
        self._drop_request()
        pcm = bytes(self._audio[-int(TURN_SECONDS * 2 * self._rate):])
        wait = (self._need_silence - self._need_short) * self._window / self._rate
        deadline = asyncio.get_running_loop().time() + wait   # loop time, like the batcher
        self._verdict = _PENDING
        self._request = gate.batcher.submit(pcm, self._rate, deadline, self._on_verdict,
                                            label=self.label)

    def _on_verdict(self, p: float) -> None:
        """The model answered (on the loop): a yes ends the turn now if the caller is still
        silent (past the short bound); a no makes it wait for the long bound."""
        self._request = None
        self._verdict = p
        if self._in_speech and self._run and self._run >= self._silence_needed():
            self.on_turn_end(self._end())

    def _drop_request(self) -> None:
        if self._request is not None:
            self._request.cancel()
            self._request = None
        self._verdict = _NONE

    def end_now(self) -> SpeechEnd | None:
        """End the current speech segment early when the VAD already hears silence (another
        endpointer, e.g. the STT provider's, has decided): the SpeechEnd at the silence's
        start, or None if not in speech or the caller is still audible. The VAD's state is
        kept, so speech that resumes starts a new segment as usual."""
        if not self._in_speech or self._run == 0:
            return None
        return self._end()

    def finish(self) -> tuple[SpeechEvent, ...]:
        """End of stream: close an open speech segment, if any, and reset."""
        events: tuple[SpeechEvent, ...] = _NO_EVENTS
        if self._in_speech:
            if self._run:  # already in a (too short) silence: speech ended where it began
                at = self._run_start * self._window / self._rate
            else:
                at = self.position_seconds
            events = (SpeechEnd(at),)
        self.reset()
        return events
