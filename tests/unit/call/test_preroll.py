"""The frames kept for the recogniser before the VAD confirms speech (call/preroll.py)."""

from __future__ import annotations

from patterd.call.preroll import PRE_SPEECH_STT, PREROLL_FRAMES, Preroll


def frames(n: int, size: int = 160) -> Preroll:
    kept = Preroll(8000)
    for i in range(n):
        kept.append(bytes([i % 256]) * size)
    return kept


def test_the_frames_from_before_the_speech_start_to_now_oldest_first() -> None:
    kept = frames(50)                          # 1 s of 20 ms G.711 frames; now = 1.0 s
    got = kept.since(0.6, 1.0)                 # speech began 0.4 s ago, confirmed now
    assert len(got) == round((0.4 + PRE_SPEECH_STT) / 0.02)
    assert [f[0] for f in got] == list(range(50 - len(got), 50))


def test_a_late_confirmation_still_reaches_back_to_the_speech_start() -> None:
    kept = frames(200)                         # 4 s fed; the deque keeps the last 1.5 s
    assert len(kept) == PREROLL_FRAMES
    assert len(kept.since(3.0, 4.0)) == round((1.0 + PRE_SPEECH_STT) / 0.02)
    assert len(kept.since(0.0, 4.0)) == PREROLL_FRAMES      # older than kept: all there is


def test_sizes_in_bytes_per_second_and_nothing_for_a_start_in_the_future() -> None:
    pcm = Preroll(16000)                       # s16 at 8 kHz: 320-byte frames
    for i in range(30):
        pcm.append(bytes([i]) * 320)
    assert len(pcm.since(0.6, 0.6)) == round(PRE_SPEECH_STT / 0.02)
    assert frames(10).since(5.0, 0.2) == []
