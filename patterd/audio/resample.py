"""Stateful streaming resampler for s16le mono PCM, backed by libsoxr (``soxr`` on PyPI).

One :class:`Resampler` per call and direction, fed 20 ms frames. Filter state is kept between
calls, so a stream resampled frame by frame equals the same stream resampled in one piece.

Latency -- read this before putting a resampler on a latency-critical path: libsoxr filters in
FFT blocks and releases output a block at a time. With the default ``"HQ"`` quality and 20 ms
input frames, measured on soxr 1.1 / libsoxr 0.1.3:

==================  ===================  ============================  ===============
conversion          first output after   then blocks of                worst lag
==================  ===================  ============================  ===============
8 kHz → 16 kHz      6 frames             ~1660 samples (~104 ms)       ~115 ms
16 kHz → 8 kHz      6 frames             ~830 samples (~104 ms)        ~115 ms
24 kHz → 8 kHz      4 frames             ~490 samples (~61 ms)         ~73 ms
22.05 kHz → 8 kHz   5 frames             ~540 samples (~68 ms)         ~80 ms
8 kHz → 24 kHz      4 frames             ~1468 samples (~61 ms)        ~73 ms
==================  ===================  ============================  ===============

So :meth:`Resampler.process` often returns ``b""`` and sometimes several frames at once; the
caller must not assume one frame in → one frame out, and must call :meth:`Resampler.flush` at
the end of each continuous segment (e.g. the end of one TTS utterance) to get the tail out.
Internally samples go through libsoxr as float32 (int16 in and out at this API): with int16 I/O
libsoxr adds TPDF dither whose noise sequence depends on how the input was chunked (±2 LSB
differences), whereas the float path is bit-exact whatever the chunking, for +0.6 µs a frame.

``"LQ"`` halves the block size but rolls off the passband from ~3 kHz (−8 dB at 3.4 kHz when
going to 8 kHz), which cuts into the telephone band, so it is not the default.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import soxr

from patterd.audio.codecs import BytesLike

__all__ = ["Quality", "Resampler"]

Quality = Literal["LQ", "MQ", "HQ", "VHQ"]

_EMPTY_IN: Final = np.zeros((0, 1), dtype=np.float32)
_EMPTY_IN.flags.writeable = False


class Resampler:
    """Convert a stream of s16le mono PCM from ``in_rate`` to ``out_rate``.

    Args:
        in_rate: input sample rate in Hz.
        out_rate: output sample rate in Hz.
        quality: libsoxr quality preset; ``"HQ"`` (default) is flat to 0.91 × Nyquist with
            stop-band rejection far below the 16-bit noise floor.

    Same-rate resamplers are pass-throughs: :meth:`process` returns its argument unchanged
    (no copy) and :meth:`flush` returns ``b""``.
    """

    __slots__ = ("_in_rate", "_out_rate", "_quality", "_stream", "_scratch")

    def __init__(self, in_rate: int, out_rate: int, *, quality: Quality = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        # Reused float32 input buffer, (n, 1) as libsoxr wants; grows only for larger chunks.
        self._scratch = np.empty((in_rate // 25, 1), dtype=np.float32)  # 40 ms
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality
            )

    def __repr__(self) -> str:
        return f"<Resampler {self._in_rate} → {self._out_rate} Hz {self._quality}>"

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._out_rate

    @property
    def passthrough(self) -> bool:
        """True when both rates are equal and no resampling happens."""
        return self._stream is None

    def process(self, pcm: BytesLike) -> bytes:
        """Feed s16le PCM, get whatever resampled output is ready (possibly ``b""``).

        Raises:
            ValueError: odd byte count (not 16-bit PCM).
        """
        stream = self._stream
        if stream is None:
            return pcm  # type: ignore[return-value]  # pass-through: the caller's own object
        if len(pcm) & 1:
            raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
        if not pcm:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2")
        n = len(samples)
        if n > len(self._scratch):
            self._scratch = np.empty((n, 1), dtype=np.float32)
        scratch = self._scratch[:n]
        np.copyto(scratch[:, 0], samples)  # int16 → float32 on the int16 scale
        return _to_s16le(stream.resample_chunk(scratch))

    def flush(self) -> bytes:
        """End the current segment: return the output still held in the filter.

        The resampler is then reset and ready for a new, unrelated segment (the next
        utterance); it does not need to be recreated.
        """
        stream = self._stream
        if stream is None:
            return b""
        tail = _to_s16le(stream.resample_chunk(_EMPTY_IN, last=True))
        stream.clear()
        return tail

    def reset(self) -> None:
        """Drop all buffered audio and filter state without producing output (e.g. barge-in)."""
        if self._stream is not None:
            self._stream.clear()

    def output_bytes_for(self, n_input_bytes: int) -> int:
        """Nominal output size for ``n_input_bytes`` of input (ignoring buffering)."""
        return round(n_input_bytes // 2 * self._out_rate / self._in_rate) * 2


def _to_s16le(y: np.ndarray) -> bytes:
    """Round and saturate libsoxr's float32 output (int16 scale) to s16le bytes, in place."""
    if not len(y):
        return b""
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    return y.astype("<i2").tobytes()
