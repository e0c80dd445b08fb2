"""The segmenter with the end-of-turn model: the short silence when the model says the caller
has finished, the long one when not, silence alone when it does not answer in time, today's
behaviour with the model off; and the whole path on real speech with the bundled model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from patterd.audio.batch_turn import TurnBatcher
from patterd.audio.batch_vad import AsyncSegmenter, BatchedVadStream, VadBatcher
from patterd.audio.segmenter import SpeechEnd, SpeechSegmenter, SpeechStart, TurnGate
from patterd.audio.turn_model import SmartTurnModel
from patterd.audio.vad import EnergyVad

from .test_turn_model import clip

FRAME = 160  # 20 ms at 8 kHz, the energy VAD's window
LOUD = (np.sin(np.arange(FRAME) * 0.3) * 8000).astype("<i2").tobytes()
QUIET = bytes(2 * FRAME)


class FakeBatcher:
    """Records the questions; the test answers them."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def submit(self, pcm: bytes, rate: int, deadline: float,
               on_verdict: Callable[[float], None], *, label: str = "") -> Any:
        request = type("Req", (), {"cancelled": False, "pcm": pcm, "rate": rate,
                                   "on_verdict": staticmethod(on_verdict), "label": label})()
        request.cancel = lambda: setattr(request, "cancelled", True)
        self.requests.append(request)
        return request


def gated(batcher: Any, ended: list[SpeechEnd]) -> SpeechSegmenter:
    return SpeechSegmenter(EnergyVad(), min_speech=0.1, min_silence=0.5,
                           turn=TurnGate(batcher, short=0.2, long=1.3),
                           on_turn_end=ended.append, label="CA1")


def feed(seg: SpeechSegmenter, frame: bytes, n: int) -> list[Any]:
    events: list[Any] = []
    for _ in range(n):
        events += seg.feed(frame)
    return events


async def test_a_finished_turn_ends_at_the_short_silence() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, QUIET, 50)                       # 1 s before the caller speaks
    assert feed(seg, LOUD, 100) == [SpeechStart(1.0)]
    assert feed(seg, QUIET, 10) == [] and len(batcher.requests) == 1   # asked at 0.2 s
    asked = batcher.requests[0]
    # the caller's turn with 0.5 s before it, up to the question: 0.5 + 2 + 0.2 s
    assert len(asked.pcm) == 2 * 8000 * 27 // 10 and asked.rate == 8000 and asked.label == "CA1"
    asked.on_verdict(0.9)
    assert ended == [SpeechEnd(3.0)] and not seg.in_speech
    assert feed(seg, QUIET, 100) == []         # nothing more: the turn is over


async def test_an_unfinished_turn_waits_for_the_long_silence() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, LOUD, 100)
    feed(seg, QUIET, 10)
    batcher.requests[0].on_verdict(0.1)
    assert ended == [] and feed(seg, QUIET, 54) == [] and seg.in_speech   # 1.28 s of silence
    assert feed(seg, QUIET, 1) == [SpeechEnd(2.0)] and ended == []        # 1.3 s


async def test_a_pause_then_more_speech_asks_again() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, LOUD, 50)
    feed(seg, QUIET, 15)                       # a 0.3 s pause: asked
    batcher.requests[0].on_verdict(0.2)        # "not finished"
    feed(seg, LOUD, 25)                        # the caller goes on
    assert seg.in_speech and feed(seg, QUIET, 24) == []
    assert len(batcher.requests) == 2 and not batcher.requests[1].cancelled
    # unanswered, the new question ends the turn at min_silence: the old "not finished"
    # (which would hold it to 1.3 s) was forgotten when the caller went on
    assert feed(seg, QUIET, 1) == [SpeechEnd(1.8)] and ended == []


async def test_speech_resuming_cancels_the_question() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, LOUD, 50)
    feed(seg, QUIET, 12)
    feed(seg, LOUD, 1)
    assert batcher.requests[0].cancelled
    batcher.requests[0].on_verdict(0.99)       # answered anyway (in flight): ignored
    assert ended == [] and seg.in_speech


async def test_no_verdict_in_time_falls_back_to_min_silence() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, LOUD, 50)
    assert feed(seg, QUIET, 24) == []
    assert feed(seg, QUIET, 1) == [SpeechEnd(1.0)]    # 0.5 s, as without a model
    assert batcher.requests[0].cancelled and ended == []


async def test_end_now_and_finish_drop_the_question() -> None:
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, LOUD, 50)
    feed(seg, QUIET, 10)
    assert seg.end_now() == SpeechEnd(1.0) and batcher.requests[0].cancelled
    feed(seg, LOUD, 50)
    feed(seg, QUIET, 10)
    assert seg.finish() == (SpeechEnd(2.2),) and batcher.requests[1].cancelled


async def test_the_turn_audio_is_bounded() -> None:
    """At most 8 s of a long turn; between turns about half a second."""
    batcher, ended = FakeBatcher(), []
    seg = gated(batcher, ended)
    feed(seg, QUIET, 500)
    assert len(seg._audio) <= 2 * 8000 * 1.5
    feed(seg, LOUD, 600)                       # 12 s of speech
    assert len(seg._audio) <= 2 * 8000 * 8.5
    feed(seg, QUIET, 10)
    assert len(batcher.requests[0].pcm) == 2 * 8000 * 8


def test_turn_model_off_is_todays_segmenter() -> None:
    """Without a gate: the same events as ever, and no audio kept."""
    rng = np.random.default_rng(3)
    frames = [LOUD if on else QUIET for on in rng.random(3000) < 0.5]
    frames = [f for f in frames for _ in range(int(rng.integers(1, 40)))][:6000]
    plain = SpeechSegmenter(EnergyVad(), min_speech=0.1, min_silence=0.5)
    off = SpeechSegmenter(EnergyVad(), min_speech=0.1, min_silence=0.5, turn=None,
                          on_turn_end=lambda e: pytest.fail("no late events without a model"))
    a = [e for f in frames for e in plain.feed(f)]
    b = [e for f in frames for e in off.feed(f)]
    assert a == b and len(a) > 20 and len(off._audio) == 0


def test_the_silence_bounds_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="short silence"):
        SpeechSegmenter(EnergyVad(), min_silence=0.5,
                        turn=TurnGate(FakeBatcher(), short=0.5, long=1.3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="short silence"):
        SpeechSegmenter(EnergyVad(), min_silence=0.5,
                        turn=TurnGate(FakeBatcher(), short=0.2, long=0.4))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- real speech

async def silence_until_end(seg: AsyncSegmenter, events: list[Any], limit: float) -> float:
    """Feed 20 ms of silence at a time, letting the VAD and the model answer between frames
    (so the outcome depends on audio, not on timing); the silence fed when the turn ended."""
    fed = 0.0
    while not any(isinstance(e, SpeechEnd) for e in events) and fed < limit:
        seg.feed(bytes(2 * FRAME))
        fed += 0.02
        await seg.stream.drain()
        while seg._request is not None:       # a question in flight: wait for the verdict
            await asyncio.sleep(0.005)
    return fed


@pytest.mark.parametrize(("name", "ends_at"), [("complete", (0.2, 0.35)),
                                               ("cut_off", (1.25, 1.45))])
async def test_real_speech_through_vad_and_model(name: str, ends_at: tuple[float, float]
                                                 ) -> None:
    """The bundled model on the fixture clips, through the batched Silero VAD: the finished
    question ends after the short silence, the cut-off phrase waits for the long one."""
    vad = VadBatcher()
    turn = TurnBatcher(SmartTurnModel.get())
    events: list[Any] = []
    seg = AsyncSegmenter(BatchedVadStream(batcher=vad), events.append, min_silence=0.5,
                         turn=TurnGate(turn, short=0.2, long=1.3))
    try:
        pcm = clip(name)[: -2 * 1600]          # the speech without the clip's 0.2 s of silence
        seg.feed(bytes(2 * 4000))              # 0.5 s before the caller speaks
        for i in range(0, len(pcm), 2 * FRAME):
            seg.feed(pcm[i: i + 2 * FRAME])
        await seg.stream.drain()
        fed = await silence_until_end(seg, events, limit=2.0)
        assert isinstance(events[0], SpeechStart) and isinstance(events[-1], SpeechEnd)
        assert ends_at[0] <= fed <= ends_at[1], fed
        assert turn.answered == 1 and turn.late == 0
    finally:
        await vad.aclose()
        await turn.aclose()
