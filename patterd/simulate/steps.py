"""The steps of a simulated caller's script."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Say:
    """Speak ``pcm`` (s16le 8 kHz mono); ``text`` is what it says, for the transcript."""

    pcm: bytes
    text: str = ""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Press keys, ``gap`` seconds apart."""

    digits: str
    gap: float = 0.25


@dataclass(frozen=True, slots=True)
class WaitForAgent:
    """Wait until the agent has spoken and then been silent for ``silence`` seconds.

    ``required``: when the agent says nothing within ``timeout`` seconds, that is an error.
    """

    silence: float = 0.7
    timeout: float = 15.0
    required: bool = True


@dataclass(frozen=True, slots=True)
class WaitForAgentSpeech:
    """Wait until the agent is audibly speaking, then ``delay`` more seconds (for barge-in)."""

    delay: float = 0.5
    timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class Wait:
    """Stay on the line, silent, for ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Then:
    """Decide what comes next once the script gets here: ``plan(now)`` (``now``: seconds
    since the call started) returns the next steps, which may end with another ``Then``.
    For scripts that depend on time, e.g. a call that must end at a chosen instant."""

    plan: Callable[[float], "list[Step]"]


@dataclass(frozen=True, slots=True)
class Drop:
    """The carrier's media connection breaks: the socket is reset with no ``stop`` frame and
    no WebSocket close; then the call ends as if the caller hung up. Ends the script."""


Step = Say | Dtmf | WaitForAgent | WaitForAgentSpeech | Wait | Then | Drop


__all__ = ["Drop", "Dtmf", "Say", "Step", "Then", "Wait", "WaitForAgent",
           "WaitForAgentSpeech"]
