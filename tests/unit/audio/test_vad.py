"""VADs and the speech segmenter: silence, noise, synthetic voice, real (espeak-ng) speech."""

from __future__ import annotations

import dataclasses
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from patterd.audio.vad import (
    EnergyGate,
    EnergyVad,
    SileroVad,
    SpeechEnd,
    SpeechEvent,
    SpeechSegmenter,
    SpeechStart,
    Vad,
)

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 8000
FRAME = 320  # bytes: 20 ms of s16le at 8 kHz


def load_speech() -> tuple[bytes, list[list[float]]]:
    """Two espeak-ng utterances at 8 kHz (see fixtures/make_speech_fixture.py)."""
    with wave.open(str(FIXTURES / "speech_8k.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        pcm = w.readframes(w.getnframes())
    meta = json.loads((FIXTURES / "speech_8k.json").read_text())
    return pcm, meta["segments"]


def pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def run(
    segmenter: SpeechSegmenter, pcm: bytes, frame: int = FRAME
) -> list[tuple[float, SpeechEvent]]:
    """Feed ``pcm`` in frames; return (stream time when returned, event) pairs, then finish()."""
    out: list[tuple[float, SpeechEvent]] = []
    for i in range(0, len(pcm), frame):
        for event in segmenter.feed(pcm[i : i + frame]):
            out.append((segmenter.position_seconds, event))
    out += [(segmenter.position_seconds, e) for e in segmenter.finish()]
    return out


def voiced(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A vowel-like buzz: 24 harmonics of a wobbling 140 Hz pitch, 4 Hz amplitude modulation."""
    t = np.arange(int(RATE * seconds)) / RATE
    phase = 2 * np.pi * np.cumsum(140 + 15 * np.sin(2 * np.pi * 3 * t)) / RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 25))
    return buzz * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * 3000 + rng.normal(0, 16, len(t))


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad(RATE)


def test_silero_window_sizes() -> None:
    assert SileroVad(8000).window_samples == 256  # 32 ms
    assert SileroVad(16000).window_samples == 512
    with pytest.raises(ValueError, match="8000 or 16000"):
        SileroVad(22050)


def test_vads_satisfy_the_protocol(silero: SileroVad) -> None:
    vads: list[Vad] = [silero, EnergyVad(), EnergyGate(silero)]
    for vad in vads:
        assert vad.sample_rate == RATE
        assert vad.window_samples > 0


def test_silero_probability_checks_window_length(silero: SileroVad) -> None:
    with pytest.raises(ValueError, match="256 samples"):
        silero.probability(bytes(320))


def test_bytes_and_float_paths_agree() -> None:
    pcm, (segment, _) = load_speech()
    a, b = SileroVad(RATE), SileroVad(RATE)
    start = int(segment[0] * RATE) * 2
    windows = [pcm[start + i : start + i + 512] for i in range(0, 512 * 10, 512)]
    from_bytes = [a.probability(w) for w in windows]
    from_float = [b.probability_f32(np.frombuffer(w, "<i2") / np.float32(32768)) for w in windows]
    assert from_bytes == pytest.approx(from_float, abs=1e-6)
    assert max(from_bytes) > 0.9


def test_silero_silence_and_noise_give_no_speech(silero: SileroVad) -> None:
    rng = np.random.default_rng(1)
    n = RATE * 3
    for signal in (np.zeros(n), rng.normal(0, 16, n), rng.normal(0, 1000, n)):  # 1000: -30 dBFS
        assert run(SpeechSegmenter(silero), pcm16(signal)) == []


def test_silero_finds_both_utterances(silero: SileroVad) -> None:
    pcm, truth = load_speech()
    events = run(SpeechSegmenter(silero), pcm)
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    for (start, end), (t_start, ev_start), (t_end, ev_end) in zip(truth, events[::2], events[1::2]):
        assert abs(ev_start.at_seconds - start) <= 0.15
        assert 0 <= ev_end.at_seconds - end <= 0.3  # Silero lets go a little after the last sound
        # returned once confirmed: ~min_speech after the onset, ~min_silence after the end
        assert 0.1 <= t_start - ev_start.at_seconds <= 0.1 + 0.064 + 0.02
        assert 0.5 <= t_end - ev_end.at_seconds <= 0.5 + 0.064 + 0.02


def test_energy_gate_keeps_the_segments_and_skips_quiet_windows() -> None:
    pcm, truth = load_speech()
    gate = EnergyGate(SileroVad(RATE), floor_dbfs=-50.0)
    events = [e for _, e in run(SpeechSegmenter(gate), pcm)]
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    for got, want in zip(events, [t for seg in truth for t in seg]):
        assert abs(got.at_seconds - want) <= 0.3
    assert gate.skipped > 0.3 * (gate.skipped + gate.evaluated)


def test_energy_vad_on_a_synthetic_voice() -> None:
    rng = np.random.default_rng(2)
    quiet = rng.normal(0, 16, RATE)
    signal = np.concatenate([quiet[: RATE // 2], voiced(1.5, rng), quiet])
    events = [e for _, e in run(SpeechSegmenter(EnergyVad()), pcm16(signal))]
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    assert events[0].at_seconds == pytest.approx(0.5, abs=0.03)
    assert events[1].at_seconds == pytest.approx(2.0, abs=0.05)


def test_frame_size_does_not_change_events(silero: SileroVad) -> None:
    pcm, _ = load_speech()
    by_20ms = [e for _, e in run(SpeechSegmenter(silero), pcm)]
    by_odd = [e for _, e in run(SpeechSegmenter(silero), pcm, frame=2 * 37)]
    in_one = [e for _, e in run(SpeechSegmenter(silero), pcm, frame=len(pcm))]
    assert by_20ms == by_odd == in_one


def test_short_pauses_are_bridged_and_long_ones_split() -> None:
    rng = np.random.default_rng(3)
    gap = lambda s: rng.normal(0, 16, int(RATE * s))  # noqa: E731
    for pause, segments in ((0.3, 1), (0.8, 2)):
        parts = [gap(0.4), voiced(0.6, rng), gap(pause), voiced(0.6, rng), gap(0.8)]
        signal = np.concatenate(parts)
        events = [e for _, e in run(SpeechSegmenter(EnergyVad()), pcm16(signal))]
        assert [type(e) for e in events] == [SpeechStart, SpeechEnd] * segments, pause


def test_clicks_shorter_than_min_speech_are_ignored() -> None:
    rng = np.random.default_rng(4)
    quiet = rng.normal(0, 16, RATE)
    signal = np.concatenate([quiet[: RATE // 2], voiced(0.06, rng), quiet])
    assert run(SpeechSegmenter(EnergyVad(), min_speech=0.1), pcm16(signal)) == []
    assert len(run(SpeechSegmenter(EnergyVad(), min_speech=0.02), pcm16(signal))) == 2


def test_finish_closes_an_open_segment() -> None:
    rng = np.random.default_rng(5)
    segmenter = SpeechSegmenter(EnergyVad())
    signal = np.concatenate([rng.normal(0, 16, RATE // 2), voiced(1.0, rng)])
    events = run(segmenter, pcm16(signal))
    assert [type(e) for _, e in events] == [SpeechStart, SpeechEnd]
    assert events[1][1].at_seconds == pytest.approx(1.5, abs=0.01)
    assert not segmenter.in_speech and segmenter.position_seconds == 0.0


def test_events_are_small_frozen_values() -> None:
    start = SpeechStart(1.25)
    assert start == SpeechStart(1.25) and start != SpeechEnd(1.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.at_seconds = 2.0  # type: ignore[misc]


def test_segmenter_rejects_inverted_thresholds_and_odd_frames() -> None:
    with pytest.raises(ValueError, match="end_threshold"):
        SpeechSegmenter(EnergyVad(), threshold=0.5, end_threshold=0.7)
    with pytest.raises(ValueError, match="even number of bytes"):
        SpeechSegmenter(EnergyVad()).feed(b"\x00")


def test_energy_vad_levels() -> None:
    vad = EnergyVad(threshold_dbfs=-40.0, width_db=10.0)
    assert vad.probability(bytes(320)) == 0.0
    loud = pcm16(np.full(160, 0.1 * 32768))  # -20 dBFS
    assert vad.probability(loud) == 1.0
    at_threshold = pcm16(np.full(160, 0.01 * 32768))  # -40 dBFS
    assert vad.probability(at_threshold) == pytest.approx(0.5, abs=0.01)


class CountingVad:
    """A stand-in VAD that records calls and always says 'speech'."""

    sample_rate = RATE
    window_samples = 256

    def __init__(self) -> None:
        self.calls = 0
        self.resets = 0

    def probability(self, window: bytes) -> float:
        return self.probability_f32(np.zeros(self.window_samples, dtype=np.float32))

    def probability_f32(self, window: np.ndarray) -> float:
        self.calls += 1
        return 1.0

    def reset(self) -> None:
        self.resets += 1


def test_energy_gate_skips_quiet_windows_and_resets_after_a_long_silence() -> None:
    inner = CountingVad()
    gate = EnergyGate(inner, floor_dbfs=-50.0, reset_after=1.0)  # 1 s = 31 windows of 32 ms
    quiet = pcm16(np.random.default_rng(6).normal(0, 16, 256))  # about -66 dBFS
    loud = pcm16(np.full(256, 3000.0))  # about -21 dBFS
    assert [gate.probability(quiet) for _ in range(40)] == [0.0] * 40
    assert inner.calls == 0 and inner.resets == 1 and gate.skipped == 40
    assert gate.probability(loud) == 1.0
    assert inner.calls == 1 and gate.evaluated == 1
    for _ in range(10):
        gate.probability(quiet)
    assert inner.resets == 1  # a short pause keeps the recurrent state
