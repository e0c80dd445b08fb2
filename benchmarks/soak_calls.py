"""The churn soak's callers: how each simulated call goes and ends, and what it proved.

A call draws a length (``--call-seconds``, 3–90 s) and an ending; its script is planned as it
goes (:class:`~patterd.simulate.Then`): it listens to the greeting, then talks — phrases the
rules agent answers, a multi-key keypad entry, now and then a barge-in — until the moment its
ending must begin, then ends as drawn:

==================  =====================================================  ==================
ending              how                                                    expected outcome
==================  =====================================================  ==================
``caller_speech``   hangs up mid-phrase (the phrase cut at a random point)  completed
``agent_reply``     hangs up while the agent speaks (a reply, the greeting) completed
``keypad``          hangs up between two keys of ``*42`` (``*`` or ``*4``)  completed
``transfer``        says "sales"/"support" or presses 1/2: transferred      transferred
``transfer_cut``    the same, hangs up during "Connecting you to …"         completed/transferred
``amd``             outbound call with machine detection: a person hangs    completed/hung up
                    up around the verdict, or a machine mid-voicemail
``caller_stop``     hangs up in silence (``stop``)                          completed
``agent_hangup``    says "goodbye" or presses 9: the agent hangs up         hung up by agent
``drop``            the media socket is reset with no ``stop`` (in silence  completed
                    or mid-phrase), then the carrier ends the call
==================  =====================================================  ==================

A caller turn (a finished phrase or key entry) is *asked* when the caller then stayed on the
line at least ``answer_window`` seconds, or was answered sooner; an asked turn with no agent
audio after it is *unanswered*.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from patterd.simulate import (COMPLETED, HUNG_UP, TRANSFERRED, CallResult, Drop, Dtmf, Say,
                              Step, Then, Wait, WaitForAgent, WaitForAgentSpeech)

ENDINGS: dict[str, float] = {          # ending → weight
    "caller_speech": 1.0, "agent_reply": 1.0, "keypad": 1.0, "transfer": 0.6,
    "transfer_cut": 0.6, "amd": 0.8, "caller_stop": 1.0, "agent_hangup": 1.0, "drop": 1.0,
}
EXPECTED: dict[str, frozenset[str]] = {
    "caller_speech": frozenset({COMPLETED}), "agent_reply": frozenset({COMPLETED}),
    "keypad": frozenset({COMPLETED}), "transfer": frozenset({TRANSFERRED}),
    "transfer_cut": frozenset({COMPLETED, TRANSFERRED}),
    "amd": frozenset({COMPLETED, HUNG_UP}),     # and OutboundResult.ok (per callee)
    "caller_stop": frozenset({COMPLETED}), "agent_hangup": frozenset({HUNG_UP}),
    "drop": frozenset({COMPLETED}),
}
# What the caller says (the config's rules answer each; see soak.soak_config)
# (phrases pocketsphinx recognises from espeak through μ-law, alone or after a pause; it
# misses lone words such as "sales" or "support", and "I need support" half the time)
PHRASES = {
    "hours": "what are your opening hours", "open": "when are you open",
    "sales": "connect me to sales", "pricing": "pricing please",
    "support": "support please", "help": "I need help", "goodbye": "goodbye",
}
TRANSFER_PHRASES = ("sales", "pricing", "support", "help")
TRANSFER_KEYS = {"sales": "1", "pricing": "1", "support": "2", "help": "2"}  # the same rules
REPEAT_AFTER = 10.0                     # a transfer asked for by voice, not done by then: key
MULTI_KEY = "*42"                       # a rule of the soak's config (Keypad gathers it)
KEY_GAP = 0.3
LISTEN_SILENCE = 0.8                    # the agent is done after this much silence
REPLY_TIMEOUT = 15.0
LATENCY_GUESS = 1.0                     # for planning only: end of speech → reply


@dataclass(frozen=True)
class Voices:
    """The caller's phrases (espeak, synthesized once) and how long the agent's messages
    last (for planning; the agent speaks them with the same espeak)."""

    say: dict[str, Say]
    greeting: float                 # seconds of the agent's first message
    reply: float                    # a typical reply
    machine: Say                    # an answering machine's greeting (AMD calls)

    def seconds(self, key: str) -> float:
        return len(self.say[key].pcm) / 16000.0


def cut(say: Say, seconds: float) -> Say:
    """The first ``seconds`` of a phrase: the caller stops mid-word."""
    n = max(320, int(seconds * 8000)) * 2
    return Say(say.pcm[:n], say.text + " [cut]")


class Plan:
    """One inbound call's script, decided as it goes so that the ending begins at ``end_at``
    (seconds since the call started)."""

    def __init__(self, rng: random.Random, voices: Voices, ending: str, end_at: float,
                 pause: tuple[float, float] = (1.0, 8.0)) -> None:
        self.rng, self.v, self.ending, self.end_at = rng, voices, ending, end_at
        self.pause = pause
        self.greeted = False
        self.final_steps = self._final()
        self.lead = self._lead()

    def steps(self) -> list[Step]:
        """The script to hand to the simulator."""
        return [Then(self.next)]

    # -- the conversation until the ending ------------------------------------------------
    def next(self, now: float) -> list[Step]:
        left = self.end_at - now
        if not self.greeted:
            self.greeted = True
            if left > self.v.greeting + self.lead:
                return [WaitForAgent(silence=LISTEN_SILENCE, timeout=REPLY_TIMEOUT),
                        Then(self.next)]
            return self._begin_final(now)         # ends during (or right after) the greeting
        filler, length = self._filler()
        if left > length + self.lead:
            return [*filler, Then(self.next)]
        return self._begin_final(now)

    def _filler(self) -> tuple[list[Step], float]:
        r, v = self.rng, self.v
        pause = r.uniform(*self.pause)
        pick = r.random()
        listen = WaitForAgent(silence=LISTEN_SILENCE, timeout=REPLY_TIMEOUT)
        if pick < 0.55:
            key = r.choice(("hours", "open"))
            return ([Wait(pause), v.say[key], listen],
                    pause + v.seconds(key) + LATENCY_GUESS + v.reply + LISTEN_SILENCE)
        if pick < 0.8:
            return ([Wait(pause), Dtmf(MULTI_KEY, gap=KEY_GAP), listen],
                    pause + 2 * KEY_GAP + LATENCY_GUESS + v.reply + LISTEN_SILENCE)
        # barge-in: ask, let the agent start answering, ask again over it
        return ([Wait(pause), v.say["hours"],
                 WaitForAgentSpeech(delay=r.uniform(0.3, 1.2), timeout=REPLY_TIMEOUT),
                 v.say["open"], listen],
                pause + v.seconds("hours") + LATENCY_GUESS + 1.2 + v.seconds("open")
                + LATENCY_GUESS + v.reply + LISTEN_SILENCE)

    # -- the ending -------------------------------------------------------------------------
    def _final(self) -> list[Step]:
        r, v, e = self.rng, self.v, self.ending
        if e == "caller_speech":
            key = r.choice(("hours", "open"))
            return [cut(v.say[key], r.uniform(0.25, max(0.3, v.seconds(key) - 0.1)))]
        if e == "agent_reply":
            key = r.choice(("hours", "open"))
            return [v.say[key], WaitForAgentSpeech(delay=r.uniform(0.1, 2.0),
                                                   timeout=REPLY_TIMEOUT)]
        if e == "keypad":
            return [Dtmf(r.choice(("*", "*4")), gap=KEY_GAP), Wait(r.uniform(0.0, 1.0))]
        if e in ("transfer", "transfer_cut"):
            phrase = r.choice(TRANSFER_PHRASES)
            spoken = r.random() < 0.6
            first: Step = v.say[phrase] if spoken else Dtmf(TRANSFER_KEYS[phrase])
            if e == "transfer":
                if spoken:
                    # The offline STT mishears a phrase now and then (the agent answers with
                    # its fallback): the caller then presses the key, as a real one would.
                    # Transferred first, the call is over before the key is due.
                    return [first, Wait(REPEAT_AFTER), Dtmf(TRANSFER_KEYS[phrase]), Wait(30.0)]
                return [first, Wait(30.0)]          # the daemon transfers long before
            return [first, WaitForAgentSpeech(delay=r.uniform(0.1, 1.2), timeout=REPLY_TIMEOUT)]
        if e == "agent_hangup":
            return [r.choice((v.say["goodbye"], Dtmf("9"))), Wait(30.0)]
        if e == "drop":
            if r.random() < 0.5:
                return [Drop()]
            key = r.choice(("hours", "open"))
            return [cut(v.say[key], r.uniform(0.25, max(0.3, v.seconds(key) - 0.1))), Drop()]
        return []                                   # caller_stop: just hang up

    def _lead(self) -> float:
        """Seconds from the start of the final steps to the instant the call should end."""
        total = 0.0
        for step in self.final_steps:
            if isinstance(step, Say):
                total += len(step.pcm) / 16000.0
            elif isinstance(step, Dtmf):
                total += KEY_GAP * (len(step.digits) - 1)
            elif isinstance(step, WaitForAgentSpeech):
                total += LATENCY_GUESS + step.delay
            elif isinstance(step, Wait) and step.seconds < 5:
                total += step.seconds
        return total

    def _begin_final(self, now: float) -> list[Step]:
        wait = self.end_at - self.lead - now
        return ([Wait(wait)] if wait > 0 else []) + self.final_steps


def plan_inbound(rng: random.Random, voices: Voices, ending: str, seconds: float,
                 pause: tuple[float, float] = (1.0, 8.0)) -> Plan:
    """A plan for a call of about ``seconds`` (from the answer) ending as ``ending``; the
    caller is silent ``pause`` (min, max) seconds before each of its turns."""
    plan = Plan(rng, voices, ending, seconds, pause)
    if ending == "agent_reply" and seconds < voices.greeting - 0.5:
        plan.final_steps, plan.lead = [], 0.0      # hang up during the greeting
    return plan


@dataclass
class Outcome:
    """What one soak call proved (kept small: thousands of these in a long run)."""

    carrier: str
    ending: str
    call_id: str
    planned: float
    outcome: str
    detail: str
    ok: bool
    duration: float
    asked: int = 0
    answered: int = 0
    unanswered: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    heard_agent: float = 0.0          # seconds of agent speech the caller heard
    timeline: list[str] = field(default_factory=list)   # for failures: what happened when

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


def judge(result: CallResult, carrier: str, ending: str, planned: float,
          answer_window: float) -> Outcome:
    """Turns asked/answered and whether the call ended as its ending expects."""
    ok_outcome = result.outcome in EXPECTED[ending]
    if ending == "amd":
        ok = result.ok
    else:
        ok = ok_outcome and not result.errors
    out = Outcome(carrier, ending, result.call_id, planned, result.outcome, result.detail, ok,
                  result.duration, errors=list(result.errors[:3]))
    end = result.ended_at
    for t in result.turns:
        # a reply later than the window is none (the caller heard silence), even if the
        # agent said something eventually (a reprompt "Are you still there?" at 20 s)
        answered = t.latency is not None and t.latency <= answer_window
        if not answered and end - t.end < answer_window:
            continue                    # the caller left before an answer was due
        out.asked += 1
        if t.latency is not None:
            out.latencies.append(t.latency)
        if answered:
            out.answered += 1
        else:
            out.unanswered.append({"kind": t.kind, "text": t.text, "end": round(t.end, 2),
                                   "latency": t.latency, "call_end": round(end, 2)})
    out.heard_agent = sum(ln.end - ln.start for ln in result.lines if ln.who == "agent")
    if not ok or out.unanswered:
        out.timeline = timeline(result)
    return out


def timeline(r: CallResult) -> list[str]:
    """The call's caller/agent lines, turns and the daemon's REST actions, in time order."""
    rows: list[tuple[float, str]] = []
    for ln in r.transcript:
        text = ln.text or f"[audio {ln.end - ln.start:.1f} s]"
        rows.append((ln.start, f"{ln.start:6.2f}-{ln.end:6.2f} {ln.who}: {text}"
                     + (" [interrupted]" if ln.interrupted else "")))
    for t in r.turns:
        lat = "none" if t.latency is None else f"{t.latency:.2f} s"
        rows.append((t.end, f"{t.end:6.2f} turn {t.kind} {t.text!r} answered after {lat}"))
    for a in r.actions:
        rows.append((a.at, f"{a.at:6.2f} daemon REST {a.action}"))
    rows.append((r.ended_at, f"{r.ended_at:6.2f} call over: {r.outcome} {r.detail}"))
    return [text for _, text in sorted(rows, key=lambda row: row[0])][-40:]
