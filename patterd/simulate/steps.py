"""The steps of a simulated caller's script."""

from __future__ import annotations

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


Step = Say | Dtmf | WaitForAgent | WaitForAgentSpeech | Wait


__all__ = ["Dtmf", "Say", "Step", "Wait", "WaitForAgent", "WaitForAgentSpeech"]
