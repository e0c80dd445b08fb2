"""The frames kept for the recogniser before the VAD confirms speech (call/preroll.py)."""

from __future__ import annotations

from patterd.call.preroll import MAX_FRAMES, PRE_SPEECH_STT, SLACK, TRIM_EVERY, Preroll


def frames(n: int, size: int = 160, *, unscored: float = 0.0, confirm: float = 0.1) -> Preroll:
    """``n`` 20 ms frames fed as the session feeds them (trimmed every TRIM_EVERY frames, the
    VAD ``unscored`` seconds behind)."""
    kept = Preroll(size * 50, confirm)
    for i in range(n):
        kept.append(bytes([i % 256]) * size)
        if len(kept) >= kept.next_trim:
            kept.trim(unscored)
    return kept


def test_the_frames_from_before_the_speech_start_to_now_oldest_first() -> None:
    kept = frames(50, confirm=0.6, unscored=0.2)      # 1 s of G.711 frames; now = 1.0 s
    got = kept.since(0.4, 1.0)                         # speech began 0.6 s ago, confirmed now
    assert len(got) == round((0.6 + PRE_SPEECH_STT) / 0.02)
    assert [f[0] for f in got] == list(range(50 - len(got), 50))


def test_what_is_kept_follows_how_far_behind_the_vad_is() -> None:
    idle = frames(500)                                 # 10 s fed, the VAD keeping up
    need = 0.1 + PRE_SPEECH_STT + SLACK
    assert need / 0.02 <= len(idle) <= need / 0.02 + TRIM_EVERY
    behind = frames(500, unscored=1.5)                 # the VAD 1.5 s behind: a start it
    assert len(behind) >= (1.5 + need) / 0.02         # confirms later still reaches back
    assert len(behind.since(10.0 - 1.5 - 0.1, 10.0)) == round((1.6 + PRE_SPEECH_STT) / 0.02)
    assert len(frames(1000, unscored=60.0)) == MAX_FRAMES   # never more than the cap


def test_sizes_in_bytes_per_second_and_nothing_for_a_start_in_the_future() -> None:
    pcm = frames(30, 320)                              # s16 at 8 kHz: 320-byte frames
    assert len(pcm.since(0.6, 0.6)) == round(PRE_SPEECH_STT / 0.02)
    assert frames(10).since(5.0, 0.2) == []
