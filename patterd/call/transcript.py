"""Both sides of a call, as heard, kept in the call's record as the call goes.

A caller line (words or a key) joins the record when it is recognised. An agent reply joins it
when its first audio starts playing (:class:`AgentLine`): the line then carries the text of its
utterances that started playing and ``"playing": true``; once the reply has ended and every one
of its utterances is done (its mark came back, a barge-in or a key cleared it, or the stream
ended), the line is *settled*: cut to the words the caller heard, ``interrupted`` when any of
it was cut. What was heard of an utterance is all of it when its mark came back, else the
playback clock's account: ``min(now - play_start, seconds sent)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .playout import BYTES_PER_SECOND, Utterance

#: Seconds of slack when deciding that an utterance played to its end by the clock alone.
END_SLACK = 0.02


@dataclass(slots=True)
class Line:
    """One caller turn (or key): who spoke, what, and whether the agent was cut off."""

    role: str                 # "caller" | "agent"
    text: str
    at: float = field(default_factory=time.time)
    dtmf: str = ""
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {"role": self.role, "text": self.text, "at": self.at}
        if self.dtmf:
            out["dtmf"] = self.dtmf
        if self.interrupted:
            out["interrupted"] = True
        return out


def heard_part(text: str, heard: float, total: float) -> str:
    """The words of ``text`` the caller heard, when ``heard`` of ``total`` seconds played."""
    words = text.split()
    if total <= 0 or heard >= total:
        return text
    keep = int(len(words) * max(0.0, heard) / total)
    return " ".join(words[:keep])


def heard_seconds(utt: Utterance, now: float) -> float:
    """Seconds of ``utt`` the caller heard by ``now`` (loop time): all of it once its mark
    came back, what a clear computed, else the playback clock."""
    if utt.played or utt.cleared_at is not None:
        return utt.heard_seconds
    if utt.play_start is None:
        return 0.0
    return min(max(0.0, now - utt.play_start), utt.sent / BYTES_PER_SECOND)


def heard_text(utterances: list[Utterance], now: float) -> tuple[str, bool]:
    """What the caller heard of ``utterances`` by ``now``, and whether any of them was cut
    (cleared, or never played to its end)."""
    parts: list[str] = []
    cut = False
    for utt in utterances:
        if utt.played:
            if utt.sent:            # an utterance without audio was never heard
                parts.append(utt.text)
            continue
        heard = heard_seconds(utt, now)
        if utt.cleared_at is None and utt.play_start is not None \
                and utt.sent >= utt.queued and heard >= utt.seconds - END_SLACK:
            parts.append(utt.text)      # all of it played; its mark was still on its way
            continue
        cut = True
        parts.append(heard_part(utt.text, heard, utt.seconds))
    return " ".join(p for p in parts if p), cut


class AgentLine:
    """One agent reply in the record, from its first audio on.

    ``spoken`` is the list the reply's :class:`~patterd.call.turns.Speaker` appends its
    utterances to; ``entry`` is the transcript line (a dict inside the record's transcript)
    once one of them started playing; ``closed`` once the reply will say nothing more."""

    __slots__ = ("spoken", "entry", "closed")

    def __init__(self, spoken: list[Utterance]) -> None:
        self.spoken = spoken
        self.entry: dict[str, Any] | None = None
        self.closed = False

    def owns(self, utt: Utterance) -> bool:
        """Whether ``utt`` is one of this reply's utterances."""
        return any(u is utt for u in self.spoken)

    def started(self, transcript: list[dict[str, Any]]) -> None:
        """One of its utterances started playing: the line joins ``transcript`` (the first
        time) or grows by it."""
        playing = [u for u in self.spoken if u.play_start is not None]
        text = " ".join(u.text for u in playing)
        if self.entry is None:
            self.entry = {"role": "agent", "text": text, "at": time.time(), "playing": True}
            transcript.append(self.entry)
        else:
            self.entry["text"] = text
        # What a crash recovery needs to cut the line to what was heard: the seconds of
        # audio that had started playing and when it began (wall clock, like ``at``).
        self.entry["seconds"] = round(sum(u.seconds for u in playing), 3)

    @property
    def done(self) -> bool:
        """The reply is over and each of its utterances is heard, cut or dropped."""
        return self.closed and all(u.done.is_set() for u in self.spoken)

    def settle(self, now: float) -> str:
        """Cut the line to what was heard by ``now`` (loop time), marked ``interrupted`` if
        any of it was cut. Returns the heard text ("" when nothing started playing)."""
        if self.entry is None:
            return ""
        text, cut = heard_text(self.spoken, now)   # unplayed sentences count as cut
        entry = self.entry
        entry["text"] = text
        entry.pop("playing", None)
        entry.pop("seconds", None)
        if cut:
            entry["interrupted"] = True
        return text


def settle_lost(line: dict[str, Any], lost_at: float | None) -> bool:
    """A line still ``playing`` when its process died: cut it to what was heard by
    ``lost_at`` (wall clock; None: unknown, keep the words that started) and mark it
    ``interrupted``. Returns True if the line was changed."""
    if not isinstance(line, dict) or not line.pop("playing", None):
        return False
    seconds = line.pop("seconds", None)
    at = line.get("at")
    if lost_at is not None and isinstance(seconds, (int, float)) and isinstance(at, (int, float)):
        line["text"] = heard_part(str(line.get("text", "")), lost_at - at, float(seconds))
    line["interrupted"] = True
    return True
