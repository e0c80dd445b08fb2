"""Who the daemon calls: a :class:`Callee` (a person with a script, a voicemail machine, a busy
line, …), the answering-machine verdicts a carrier would reach for it, and the registry of
calls the simulator expects the daemon to place (:class:`Pending`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .steps import Say, Step, Wait, WaitForAgent

KINDS = ("human", "machine", "busy", "no-answer", "failed", "canceled")
DEFAULT_GREETING = ("Hi, you have reached the voicemail of Alex. "
                    "Please leave a message after the tone.")
BEEP_HZ, BEEP_SECONDS, BEEP_GAP = 1000.0, 0.5, 0.3
HUMAN_VERDICT_AFTER = 1.5       # seconds after the answer (Twilio / Telnyx "human")
MACHINE_START_AFTER = 2.5       # Twilio MachineDetection=Enable: machine_start
BEEP_DETECT_AFTER = 0.2         # a beep is recognised this long after it ends
SILENCE_DETECT_AFTER = 1.2      # no beep: the end of the greeting after this much silence


@dataclass
class Callee:
    """The party the daemon calls, and how the carrier treats the call.

    ``kind``: ``human`` (answers, then runs ``steps`` — default: listen to the agent, hang up),
    ``machine`` (answers, plays ``greeting`` — default: an espeak voice saying
    :data:`DEFAULT_GREETING` — then a 1 kHz ``beep``, then records up to ``max_message``
    seconds), ``busy``, ``no-answer``, ``failed`` or ``canceled`` (never answered: no media).
    ``ring_seconds``: how long the phone rings before the outcome (default 1 s; busy 0.5 s;
    no-answer: the request's ring timeout, or ``ring_seconds`` when that is shorter, to keep
    tests short). A human or machine ringing longer than the ring timeout is no-answer.
    ``amd_delay``: seconds after the answer at which the AMD verdict comes (default: human
    1.5 s; a machine once its greeting ended — never earlier than that for verdicts that wait
    for the greeting). ``answered_by``: the carrier's raw verdict instead (Twilio ``fax``,
    ``unknown``, ``machine_end_other``…, Telnyx ``not_sure``…); ``greeting_result``: Telnyx's
    ``call.machine.greeting.ended`` result instead of ``beep_detected``/``ended``.
    ``shuffle_callbacks`` / ``duplicate_callbacks``: see :mod:`patterd.simulate.deliver`.
    ``tts_rate``: characters per second of text the carrier speaks (``<Say>``, ``speak``).
    """

    kind: str = "human"
    steps: list[Step] | None = None
    greeting: Say | None = None
    beep: bool = True
    ring_seconds: float | None = None
    amd_delay: float | None = None
    answered_by: str | None = None
    greeting_result: str | None = None
    max_message: float = 60.0
    shuffle_callbacks: bool = False
    duplicate_callbacks: bool = False
    initiated_delay: float = 0.05
    tts_rate: float = 15.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Callee kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    @property
    def answers(self) -> bool:
        """Picks up (a person or a machine)."""
        return self.kind in ("human", "machine")

    def ring_for(self, ring_timeout: float) -> tuple[float, bool]:
        """(seconds of ringing, whether the ring timeout ends it as no-answer)."""
        if self.kind == "no-answer":
            return min(ring_timeout, self.ring_seconds or ring_timeout), True
        ring = self.ring_seconds if self.ring_seconds is not None else (
            0.5 if self.kind == "busy" else 1.0)
        if self.answers and ring >= ring_timeout:
            return ring_timeout, True
        return ring, False

    def speaking_time(self, text: str) -> float:
        """How long a carrier's TTS takes to say ``text``."""
        return max(0.5, len(text) / self.tts_rate) if self.tts_rate > 0 else 0.0


def beep(seconds: float = BEEP_SECONDS, freq: float = BEEP_HZ) -> bytes:
    """A voicemail beep as s16le 8 kHz PCM."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    return (9000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def speechlike(seconds: float, seed: int = 7) -> bytes:
    """Voiced, syllable-paced noise: a stand-in voice when espeak is not available."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000.0
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.15, 1.0)
    tone = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
    signal = (tone + 0.3 * rng.standard_normal(n)) * envelope * 4000
    return np.clip(signal, -32768, 32767).astype("<i2").tobytes()


async def machine_greeting(callee: Callee) -> tuple[Say, float, list[str]]:
    """The machine's greeting (with its beep), its length in seconds, and notes."""
    notes: list[str] = []
    greeting = callee.greeting
    if greeting is None:
        from .speech import SpeechError, say
        try:
            greeting = await say(DEFAULT_GREETING)
        except SpeechError as exc:
            notes.append(f"the machine's greeting is a stand-in sound: {exc}")
            greeting = Say(speechlike(4.0), DEFAULT_GREETING)
    pcm, text = greeting.pcm, greeting.text
    if callee.beep:
        pcm += bytes(int(BEEP_GAP * 8000) * 2) + beep()
        text = (text + " [beep]").strip()
    return Say(pcm, text), len(pcm) / 16000.0, notes


def callee_steps(callee: Callee, greeting: Say | None) -> list[Step]:
    """The callee's script once the call is answered."""
    if callee.kind == "machine":
        return [greeting, Wait(callee.max_message)] if greeting else [Wait(callee.max_message)]
    if callee.steps is None:
        return [WaitForAgent()]
    return list(callee.steps)


def twilio_verdict(callee: Callee, mode: str, greeting_seconds: float) -> tuple[str, float]:
    """Twilio's ``AnsweredBy`` for this callee and ``MachineDetection`` mode, and when (seconds
    after the answer) it is reached."""
    if callee.kind != "machine":
        return callee.answered_by or "human", _delay(callee, HUMAN_VERDICT_AFTER)
    if mode == "Enable":
        return callee.answered_by or "machine_start", _delay(callee, MACHINE_START_AFTER)
    end = greeting_seconds + (BEEP_DETECT_AFTER if callee.beep else SILENCE_DETECT_AFTER)
    verdict = callee.answered_by or ("machine_end_beep" if callee.beep
                                     else "machine_end_silence")
    at = max(end, callee.amd_delay or 0.0) if verdict.startswith("machine_end") else \
        _delay(callee, end)
    return verdict, at


def telnyx_verdicts(callee: Callee, mode: str, greeting_seconds: float
                    ) -> list[tuple[str, str, float]]:
    """Telnyx's AMD webhooks for this callee: (event type, result, seconds after answer)."""
    premium = mode == "premium"
    detection = "call.machine.premium.detection.ended" if premium \
        else "call.machine.detection.ended"
    if callee.kind != "machine":
        human = "human_residence" if premium else "human"
        return [(detection, callee.answered_by or human, _delay(callee, HUMAN_VERDICT_AFTER))]
    events = []
    if mode != "detect_beep":
        events.append((detection, callee.answered_by or "machine",
                       _delay(callee, min(MACHINE_START_AFTER, greeting_seconds))))
    end = greeting_seconds + (BEEP_DETECT_AFTER if callee.beep else SILENCE_DETECT_AFTER)
    end = max(end, callee.amd_delay or 0.0)
    if premium and callee.beep:
        events.append(("call.machine.premium.greeting.ended",
                       callee.greeting_result or "beep_detected", end))
    elif mode in ("greeting_end", "detect_words") or (mode == "detect_beep" and callee.beep):
        result = callee.greeting_result or ("beep_detected" if callee.beep else "ended")
        events.append(("call.machine.greeting.ended", result, end))
    return events


def _delay(callee: Callee, default: float) -> float:
    return callee.amd_delay if callee.amd_delay is not None else default


@dataclass
class Pending:
    """An outbound call the simulator expects: when the daemon asks the carrier to call ``to``,
    ``make(fields)`` builds the simulated call; ``arrived`` is set then."""

    to: str
    callee: Callee
    make: Callable[[dict[str, Any]], Any]
    call: Any = None
    task: asyncio.Task[Any] | None = None
    refused: list[Any] = field(default_factory=list)   # create requests answered with an error
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def claim(pending: dict[str, list[Pending]], to: str) -> Pending | None:
    """The first expected call to ``to`` not yet placed, if any."""
    for item in pending.get(to, []):
        if item.call is None:
            return item
    return None
