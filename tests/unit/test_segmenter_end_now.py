"""SpeechSegmenter.end_now: another endpointer may end a segment early, only in silence."""

from __future__ import annotations

import numpy as np

from patterd.audio.segmenter import SpeechEnd, SpeechSegmenter, SpeechStart
from patterd.audio.vad import EnergyVad


def tone(seconds: float, amp: float = 8000.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return (amp * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 8000) * 2)


def test_end_now_only_in_silence_and_speech_resumes_as_a_new_segment() -> None:
    seg = SpeechSegmenter(EnergyVad(), threshold=0.5, min_speech=0.1, min_silence=0.5)
    events = seg.feed(tone(0.5))
    assert any(isinstance(e, SpeechStart) for e in events)
    assert seg.end_now() is None                 # still speaking: refused
    assert seg.feed(silence(0.2)) == ()          # our VAD alone would wait 0.5 s
    ended = seg.end_now()
    assert isinstance(ended, SpeechEnd) and 0.45 <= ended.at_seconds <= 0.55
    assert not seg.in_speech and seg.end_now() is None
    assert all(not isinstance(e, SpeechEnd) for e in seg.feed(silence(0.6)))   # no second end
    assert any(isinstance(e, SpeechStart) for e in seg.feed(tone(0.3)))       # resumes
