"""Streaming resampler: chunk invariance, lengths, tone fidelity, anti-aliasing, lifecycle."""

from __future__ import annotations

import numpy as np
import pytest

from patterd.audio.resample import Resampler

PAIRS = [(8000, 16000), (16000, 8000), (24000, 8000), (22050, 8000), (8000, 24000), (8000, 22050)]


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")


def noise(rate: int, seconds: float = 1.0) -> bytes:
    rng = np.random.default_rng(rate)
    return np.clip(rng.normal(0, 4000, int(rate * seconds)), -32768, 32767).astype("<i2").tobytes()


def in_frames(resampler: Resampler, pcm: bytes, ms: int = 20) -> bytes:
    step = resampler.in_rate * ms // 1000 * 2
    out = b"".join(resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step))
    return out + resampler.flush()


def as_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def band_energy(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    windowed = x * np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(windowed)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_twenty_ms_chunks_equal_one_piece(in_rate: int, out_rate: int) -> None:
    pcm = noise(in_rate)
    chunked = in_frames(Resampler(in_rate, out_rate), pcm)
    whole = Resampler(in_rate, out_rate)
    assert chunked == whole.process(pcm) + whole.flush()


def test_odd_sized_chunks_equal_one_piece() -> None:
    pcm = noise(8000)
    r = Resampler(8000, 16000)
    sizes = [2, 318, 160, 1000, 42, 6]
    out, i = [], 0
    while i < len(pcm):
        size = sizes[len(out) % len(sizes)]
        out.append(r.process(pcm[i : i + size]))
        i += size
    whole = Resampler(8000, 16000)
    assert b"".join(out) + r.flush() == whole.process(pcm) + whole.flush()


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_output_length_follows_the_ratio(in_rate: int, out_rate: int) -> None:
    pcm = noise(in_rate, 1.5)
    out = in_frames(Resampler(in_rate, out_rate), pcm)
    expected = len(pcm) // 2 * out_rate / in_rate
    assert abs(len(out) // 2 - expected) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_streaming_lag_is_bounded(in_rate: int, out_rate: int) -> None:
    """libsoxr releases output in FFT blocks; the session relies on the lag staying < 150 ms."""
    r = Resampler(in_rate, out_rate)
    frame = noise(in_rate, 0.02)
    produced = 0
    for n in range(1, 150):
        produced += len(r.process(frame)) // 2
        lag = n * 0.02 - produced / out_rate
        assert -0.001 < lag < 0.15, (n, lag)  # never ahead of the input, never far behind


def test_tone_survives_up_and_down() -> None:
    x = tone(1000, 8000, 2.0)
    up = Resampler(8000, 16000)
    down = Resampler(16000, 8000)
    y = as_float(in_frames(down, in_frames(up, x.tobytes())))
    assert len(y) == len(x)
    core = slice(800, len(x) - 800)  # ignore the filters' edge transients
    err = y[core] - x[core]
    snr = 10 * np.log10(np.sum(x[core].astype(float) ** 2) / max(np.sum(err**2), 1e-9))
    assert snr > 50, snr  # in practice the 2:1 half-band pair gives the input back exactly


def test_five_khz_does_not_alias_into_the_phone_band() -> None:
    x = tone(5000, 16000, 1.0, amplitude=0.9)
    y = as_float(in_frames(Resampler(16000, 8000), x.tobytes()))
    xin = x.astype(np.float64)[4000:12000]
    reference = band_energy(xin, 16000, 0, 8000)
    residual = band_energy(y[2000:6000], 8000, 0, 4000)  # an alias would land at 3 kHz
    attenuation_db = 10 * np.log10(reference / max(residual, 1e-12))
    assert attenuation_db >= 40, attenuation_db


def test_telephone_band_is_flat_when_downsampling() -> None:
    for freq in (300, 1000, 3000, 3400):
        x = tone(freq, 16000, 1.0)
        y = as_float(in_frames(Resampler(16000, 8000), x.tobytes()))[2000:6000]
        gain_db = 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x.astype(float) ** 2)))
        assert abs(gain_db) < 0.5, (freq, gain_db)


def test_same_rate_is_a_zero_copy_passthrough() -> None:
    r = Resampler(8000, 8000)
    frame = noise(8000, 0.02)
    assert r.passthrough
    assert r.process(frame) is frame
    assert r.flush() == b""


def test_flush_readies_the_resampler_for_a_new_segment() -> None:
    first, second = noise(24000, 0.5), tone(440, 24000, 0.5).tobytes()
    r = Resampler(24000, 8000)
    in_frames(r, first)
    assert in_frames(r, second) == in_frames(Resampler(24000, 8000), second)


def test_reset_drops_pending_audio() -> None:
    r = Resampler(8000, 16000)
    r.process(noise(8000, 0.06))  # less than one soxr block: nothing out yet
    r.reset()
    pcm = tone(300, 8000, 0.5).tobytes()
    assert in_frames(r, pcm) == in_frames(Resampler(8000, 16000), pcm)


def test_saturates_instead_of_wrapping() -> None:
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)], 200).astype("<i2")
    y = np.frombuffer(in_frames(Resampler(8000, 16000), square.tobytes()), dtype="<i2")
    assert y.max() == 32767 and y.min() == -32768  # Gibbs overshoot clipped, not wrapped
    assert np.all(np.abs(np.diff(y.astype(np.int64))) < 40000)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 8000)
    r = Resampler(8000, 16000)
    with pytest.raises(ValueError, match="even number of bytes"):
        r.process(b"\x00\x00\x00")
    assert r.process(b"") == b""


def test_nominal_output_size() -> None:
    assert Resampler(8000, 16000).output_bytes_for(320) == 640
    assert Resampler(24000, 8000).output_bytes_for(960) == 320
    assert Resampler(22050, 8000).output_bytes_for(882) == 320
