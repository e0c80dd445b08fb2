"""The carrier playout model: real-time drain, mark echo timing, clear, underruns."""

from __future__ import annotations

from patterd.simulate.playout import FRAME_BYTES, Playout, is_voiced, rms
from tests.unit.simulate.standin import tone


def test_audio_plays_twenty_ms_per_tick_then_silence() -> None:
    p = Playout()
    audio = tone(0.05)                       # 400 samples = 2.5 ticks
    p.push_audio(audio)
    ticks = [p.tick() for _ in range(4)]
    assert [t.played for t in ticks] == [FRAME_BYTES, FRAME_BYTES, FRAME_BYTES // 2, 0]
    assert b"".join(t.pcm for t in ticks)[: len(audio)] == audio
    assert all(len(t.pcm) == FRAME_BYTES for t in ticks)
    assert ticks[3].pcm == bytes(FRAME_BYTES) and not ticks[3].voiced
    assert ticks[0].voiced


def test_mark_is_echoed_when_the_audio_before_it_has_played() -> None:
    p = Playout()
    p.push_audio(tone(0.06))                 # exactly three 20 ms periods
    assert p.push_mark("m1") == []
    marks = [p.tick().marks for _ in range(4)]
    # the third period ends the audio: the mark is due when it has finished playing
    assert marks == [[], [], [], ["m1"]]


def test_mark_with_nothing_queued_is_echoed_at_once() -> None:
    p = Playout()
    assert p.push_mark("idle") == ["idle"]
    p.push_audio(tone(0.02))
    p.tick()                                 # that frame is playing right now
    assert p.push_mark("after") == []
    assert p.tick().marks == ["after"]


def test_marks_between_chunks_keep_their_order() -> None:
    p = Playout()
    for i in range(3):
        p.push_audio(tone(0.01))
        p.push_mark(f"m{i}")
    echoed = [m for _ in range(5) for m in p.tick().marks]
    assert echoed == ["m0", "m1", "m2"]


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    p = Playout()
    p.push_audio(tone(1.0))
    p.push_mark("a")
    p.push_audio(tone(1.0))
    p.push_mark("b")
    p.tick()
    assert p.clear() == ["a", "b"]
    assert p.buffered_bytes == 0 and p.dropped_bytes == 2 * 16000 - FRAME_BYTES
    assert p.tick().played == 0
    assert p.push_mark("c") == ["c"]


def test_underrun_counts_short_gaps_inside_speech_only() -> None:
    p = Playout()
    p.push_audio(tone(0.04))
    for _ in range(4):
        p.tick()                              # 2 played, 2 dry
    p.push_audio(tone(0.02))
    p.tick()
    assert p.underruns == 1
    for _ in range(30):                       # a long pause: the next reply is no underrun
        p.tick()
    p.push_audio(tone(0.02))
    p.tick()
    assert p.underruns == 1


def test_voicing_threshold() -> None:
    assert rms(bytes(320)) == 0 and not is_voiced(bytes(320))
    assert is_voiced(tone(0.02, amplitude=1000))
    assert not is_voiced(tone(0.02, amplitude=20))
