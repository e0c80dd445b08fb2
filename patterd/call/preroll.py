"""The caller's last frames, kept for the recogniser until the VAD confirms speech.

The VAD confirms a start of speech some time after the speech began: ``min_speech``, its
window, the batcher's tick, a busy event loop — up to a second under load. The recogniser must
still hear the utterance from its first syllable (and a little before it), so the frames since
are kept, and the ones from just before the speech's own start time are handed over.
"""

from __future__ import annotations

import collections
from typing import Final

__all__ = ["PRE_SPEECH_STT", "PREROLL_FRAMES", "Preroll"]

PRE_SPEECH_STT: Final = 0.3   # seconds of audio before the speech the recogniser also hears
PREROLL_FRAMES: Final = 75    # frames kept: 1.5 s of 20 ms frames


class Preroll(collections.deque):  # type: ignore[type-arg]
    """A bounded deque of one call's recogniser frames (``append`` is the deque's own: the hot
    path pays nothing more); ``byte_rate`` is their bytes per second."""

    __slots__ = ("byte_rate",)

    def __init__(self, byte_rate: int, maxlen: int = PREROLL_FRAMES) -> None:
        super().__init__((), maxlen)
        self.byte_rate = byte_rate

    def since(self, speech_at: float, now: float) -> list[bytes]:
        """The kept frames from :data:`PRE_SPEECH_STT` before stream time ``speech_at`` up to
        ``now`` (the stream time of the last frame's end), oldest first."""
        want = (now - speech_at + PRE_SPEECH_STT) * self.byte_rate
        out: list[bytes] = []
        for frame in reversed(self):
            if want <= 0:
                break
            out.append(frame)
            want -= len(frame)
        out.reverse()
        return out
