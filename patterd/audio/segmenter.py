"""Speech start/end segmentation on top of any voice-activity detector.

:class:`SpeechSegmenter` takes s16le frames of any size, cuts them into the VAD's windows in a
preallocated buffer, and applies thresholds with hysteresis and minimum durations. The
detectors themselves live in :mod:`patterd.audio.vad`; :class:`Vad` is the interface they share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from patterd.audio.codecs import BytesLike

__all__ = ["SpeechEnd", "SpeechEvent", "SpeechSegmenter", "SpeechStart", "Vad"]

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


class SpeechSegmenter:
    """Turn a stream of s16le frames into speech start/end events.

    Feed frames of any length (normally 20 ms = 160 samples at 8 kHz) with :meth:`feed`; they
    are collected into the VAD's window size in a preallocated buffer. A start is reported once
    ``min_speech`` seconds of consecutive windows score ≥ ``threshold``; an end once
    ``min_silence`` seconds score < ``end_threshold`` (default ``threshold - 0.15``, hysteresis).

    Events carry the stream time the speech really started/stopped; they are *returned* later,
    when confirmed -- ``min_speech`` (rounded up to whole windows) after a start and
    ``min_silence`` after an end, plus up to one window of buffering.
    """

    __slots__ = (
        "_vad", "_rate", "_window", "_buf", "_fill", "_windows", "_threshold", "_end_threshold",
        "_need_speech", "_need_silence", "_in_speech", "_run", "_run_start", "last_probability",
    )  # fmt: skip

    def __init__(
        self,
        vad: Vad,
        threshold: float = 0.5,
        min_speech: float = 0.1,
        min_silence: float = 0.5,
        *,
        end_threshold: float | None = None,
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
        self.last_probability = 0.0
        self.reset()

    def _windows_for(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self._rate / self._window - 1e-9))

    def reset(self) -> None:
        """Forget everything (new stream); also resets the VAD."""
        self._fill = 0
        self._windows = 0  # windows evaluated so far
        self._in_speech = False
        self._run = 0  # consecutive windows voting to change state
        self._run_start = 0  # window index where that run began
        self._vad.reset()

    @property
    def in_speech(self) -> bool:
        """Whether the segmenter currently considers the caller to be speaking."""
        return self._in_speech

    @property
    def position_seconds(self) -> float:
        """Stream time of all audio fed so far."""
        return (self._windows * self._window + self._fill) / self._rate

    def feed(self, pcm: BytesLike) -> tuple[SpeechEvent, ...]:
        """Feed s16le PCM (any length); return the events confirmed by it, usually none."""
        if len(pcm) & 1:
            raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
        samples = np.frombuffer(pcm, dtype="<i2")
        n = len(samples)
        buf, window = self._buf, self._window
        events = _NO_EVENTS
        i = 0
        while i < n:
            take = min(window - self._fill, n - i)
            np.multiply(samples[i : i + take], _SCALE, out=buf[self._fill : self._fill + take])
            self._fill += take
            i += take
            if self._fill == window:
                self._fill = 0
                event = self._window_ready(buf)
                if event is not None:
                    events = (*events, event)
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
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = index
        self._run += 1
        if self._in_speech:
            if self._run < self._need_silence:
                return None
            self._in_speech = False
            self._run = 0
            return SpeechEnd(self._run_start * self._window / self._rate)
        if self._run < self._need_speech:
            return None
        self._in_speech = True
        self._run = 0
        return SpeechStart(self._run_start * self._window / self._rate)

    def end_now(self) -> SpeechEnd | None:
        """End the current speech segment early when the VAD already hears silence (another
        endpointer, e.g. the STT provider's, has decided): the SpeechEnd at the silence's
        start, or None if not in speech or the caller is still audible. The VAD's state is
        kept, so speech that resumes starts a new segment as usual."""
        if not self._in_speech or self._run == 0:
            return None
        self._in_speech = False
        at = self._run_start * self._window / self._rate
        self._run = 0
        return SpeechEnd(at)

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
