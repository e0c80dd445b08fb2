"""Audio layer of the per-call media path.

- :mod:`patterd.audio.codecs` -- G.711 μ-law / A-law and L16 ⇄ 16-bit little-endian PCM.
- :mod:`patterd.audio.resample` -- stateful streaming resampler (soxr) for 8 kHz ⇄ 16/22.05/24 kHz.
- :mod:`patterd.audio.vad` -- voice-activity detection (Silero, energy) and a speech segmenter.

Everything here is synchronous, allocation-light and holds no sockets or tasks: the call session
owns one codec/resampler/segmenter per direction and feeds it 20 ms frames.
"""

from patterd.audio.codecs import Codec, get_codec

__all__ = ["Codec", "get_codec"]
