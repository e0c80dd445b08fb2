"""The caller's last frames, kept for the recogniser until the VAD confirms speech.

The VAD confirms a start of speech some time after the speech began: ``min_speech``, its
window, and however far the batched VAD is behind (a busy core: a second or more). The
recogniser must still hear the utterance from its first syllable (and a little before it), so
the frames since are kept — as many as that delay needs, re-measured every
:data:`TRIM_EVERY` frames — and the ones from just before the speech's own start are handed
over when it is confirmed.
"""

from __future__ import annotations

import collections
from typing import Final

__all__ = ["MAX_FRAMES", "PRE_SPEECH_STT", "Preroll", "SLACK", "TRIM_EVERY"]

PRE_SPEECH_STT: Final = 0.3   # seconds of audio before the speech the recogniser also hears
SLACK: Final = 0.5            # kept beyond the need measured: the delay may grow meanwhile
TRIM_EVERY: Final = 25        # frames between two trims (0.5 s of 20 ms frames)
MAX_FRAMES: Final = 250       # never more than 5 s of 20 ms frames, however late the VAD


class Preroll(collections.deque):  # type: ignore[type-arg]
    """A bounded deque of one call's recogniser frames. The hot path is the deque's own
    ``append`` and a length check against :attr:`next_trim`; :meth:`trim` runs every
    :data:`TRIM_EVERY` frames. ``byte_rate``: the frames' bytes per second; ``confirm``: the
    speech the VAD needs before it confirms a start."""

    __slots__ = ("byte_rate", "confirm", "next_trim")

    def __init__(self, byte_rate: int, confirm: float = 0.1, maxlen: int = MAX_FRAMES) -> None:
        super().__init__((), maxlen)
        self.byte_rate, self.confirm = byte_rate, confirm
        self.next_trim = TRIM_EVERY

    def trim(self, unscored: float) -> None:
        """Keep what a start confirmed later can need: the ``unscored`` seconds the VAD has not
        scored yet, the speech it needs to confirm, :data:`PRE_SPEECH_STT` and :data:`SLACK`."""
        want = (unscored + self.confirm + PRE_SPEECH_STT + SLACK) * self.byte_rate
        keep = 0
        for frame in reversed(self):
            if want <= 0:
                break
            want -= len(frame)
            keep += 1
        for _ in range(len(self) - keep):
            self.popleft()
        self.next_trim = len(self) + TRIM_EVERY

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
