"""What a simulated call measured: its outcome, both sides' lines, the daemon's REST actions,
per-turn latency, barge-in → ``clear`` latency, frame counts and outbound pacing jitter."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# outcome names
COMPLETED = "completed"            # the caller's script ran to its end and the caller hung up
HUNG_UP = "hung_up_by_agent"       # the daemon ended the call through the carrier's REST API
TRANSFERRED = "transferred"        # the daemon transferred the call (detail: the target)
REJECTED = "rejected"              # the daemon declined the call (TwiML <Reject>, Telnyx reject)
STREAM_CLOSED = "stream_closed"    # the daemon closed the media socket without a REST hang-up
ERROR = "error"                    # anything else went wrong (detail says what)
GOOD_OUTCOMES = frozenset({COMPLETED, HUNG_UP, TRANSFERRED})
# outbound calls that were never answered (the carrier's terminal status, Telnyx hangup cause)
BUSY = "busy"                      # the callee was busy (Twilio busy, Telnyx user_busy)
NO_ANSWER = "no_answer"            # nobody answered before the ring timeout
FAILED = "failed"                  # the call could not be placed (bad number, network)
CANCELED = "canceled"              # ended before the answer (Twilio canceled, originator_cancel)


@dataclass(slots=True)
class Line:
    """One utterance of either side; times in seconds since the call started."""

    who: str            # "caller" | "agent"
    start: float
    end: float
    text: str = ""
    match: str = ""     # agent: the configured message the recognised words resemble most
    interrupted: bool = False   # agent: cut short by a ``clear`` (barge-in)
    voiced: float = 0.0         # agent: seconds of it heard with audio (gaps excluded)


@dataclass(slots=True)
class Turn:
    """A caller turn (speech or keys) and how long the agent took to answer it."""

    kind: str                       # "speech" | "dtmf"
    text: str
    start: float
    end: float                      # when the caller stopped speaking / pressed the last key
    latency: float | None = None    # end → first agent audio frame received (None: no reply)


@dataclass(slots=True)
class BargeIn:
    """The caller started speaking over the agent."""

    start: float
    clear_latency: float | None = None   # utterance start → ``clear`` received (None: never)


@dataclass(slots=True)
class Action:
    """A REST request the daemon sent to the (simulated) carrier."""

    at: float
    action: str                     # hangup | transfer | send_dtmf | answer | reject | twiml | …
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Webhook:
    """A request the simulated carrier sent to the daemon, and how the daemon answered."""

    at: float                       # call time (s) it was sent
    kind: str                       # Twilio: voice, status, amd, recording, stream; Telnyx: the event
    url: str                        # the public URL it was signed for
    fields: dict[str, Any] = field(default_factory=dict)   # form fields, or the Telnyx payload
    status: int = 0                 # the daemon's HTTP status (0: no answer)
    attempt: int = 1                # 2 for a deliberate duplicate (same id / idempotency token)
    error: str = ""                 # why there was no answer


@dataclass(slots=True)
class CallResult:
    """Everything one simulated call observed."""

    carrier: str
    call_id: str
    outcome: str = ERROR
    detail: str = ""
    started_at: float = 0.0                 # Unix time
    duration: float = 0.0                   # seconds
    ended_at: float = 0.0                   # call time (s) the call ended for the carrier
    lines: list[Line] = field(default_factory=list)
    agent_audio: bytes = b""                # what the caller heard: s16le 8 kHz mono, real time
    audio_start: float = 0.0                # call time (s) of the first sample of agent_audio
    actions: list[Action] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)
    jitter: dict[str, float] = field(default_factory=dict)
    stream_ids: list[str] = field(default_factory=list)
    # per move of the call's media from one stream to another: seconds no stream carried the
    # caller's audio (0.0: the new stream was up before the old one stopped)
    stream_gaps: list[float] = field(default_factory=list)
    unsent_frames: int = 0                  # caller's 20 ms frames lost in those moves
    webhooks: list[Webhook] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The call went as a caller would expect, with no protocol error."""
        return self.outcome in GOOD_OUTCOMES and not self.errors

    @property
    def latencies(self) -> list[float]:
        """Per-turn response latencies in seconds (answered turns only)."""
        return [t.latency for t in self.turns if t.latency is not None]

    def audio_between(self, start: float, end: float) -> bytes:
        """The heard audio between two call times (seconds since the call started)."""
        a = max(0, round((start - self.audio_start) * 8000)) * 2
        b = max(0, round((end - self.audio_start) * 8000)) * 2
        return self.agent_audio[a:b]

    @property
    def transcript(self) -> list[Line]:
        """Both sides' lines in time order."""
        return sorted(self.lines, key=lambda ln: (ln.start, ln.who))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the audio, which ``--out`` writes as a WAV)."""
        return {
            "carrier": self.carrier, "call_id": self.call_id, "ok": self.ok,
            "outcome": self.outcome, "detail": self.detail,
            "started_at": round(self.started_at, 3), "duration": round(self.duration, 3),
            "ended_at": round(self.ended_at, 3),
            "transcript": [_rounded(asdict(ln)) for ln in self.transcript],
            "turns": [_rounded(asdict(t)) for t in self.turns],
            "barge_ins": [_rounded(asdict(b)) for b in self.barge_ins],
            "actions": [_rounded(asdict(a)) for a in self.actions],
            "frames": dict(self.frames), "jitter_ms": _rounded(dict(self.jitter)),
            "agent_audio_seconds": round(len(self.agent_audio) / 16000, 3),
            "stream_ids": list(self.stream_ids),
            "stream_gaps": [round(g, 4) for g in self.stream_gaps],
            "unsent_frames": self.unsent_frames,
            "webhooks": [_rounded(asdict(w)) for w in self.webhooks],
            "errors": list(self.errors), "warnings": list(self.warnings),
        }


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def interarrival_jitter(arrivals: list[tuple[float, float]], gap: float = 0.5) -> dict[str, float]:
    """Pacing of the daemon's audio: ``arrivals`` are (arrival time, seconds of audio) per frame.

    Within each burst (frames less than ``gap`` apart) the inter-arrival times are compared with
    the audio duration of the previous frame: a daemon pacing at real time sends a 20 ms frame
    every 20 ms. Returns milliseconds: mean and p95/max inter-arrival, the standard deviation of
    inter-arrival times, and the RFC 3550 interarrival jitter estimate.
    """
    deltas: list[float] = []
    jitter = 0.0
    for (t0, d0), (t1, _) in zip(arrivals, arrivals[1:]):
        delta = t1 - t0
        if delta >= gap:
            continue
        deltas.append(delta)
        jitter += (abs(delta - d0) - jitter) / 16.0
    if not deltas:
        return {}
    return {
        "mean_interval": 1000 * statistics.fmean(deltas),
        "p95_interval": 1000 * (percentile(deltas, 95) or 0.0),
        "max_interval": 1000 * max(deltas),
        "stdev_interval": 1000 * (statistics.pstdev(deltas) if len(deltas) > 1 else 0.0),
        "rfc3550": 1000 * jitter,
    }


@dataclass(slots=True)
class Summary:
    """Figures over many calls."""

    calls: int
    ok: int
    failed: int
    outcomes: dict[str, int]
    latency: dict[str, float | None]          # p50/p95/p99/max of every answered turn (s)
    barge_in_clear: dict[str, float | None]   # p50/p95/p99/max (s)
    turns: int
    unanswered_turns: int
    call_minutes: float
    cpu_seconds: float | None = None           # the daemon's user+system CPU over the run
    cpu_per_call_minute: float | None = None   # CPU seconds per minute of call
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def summarize(results: list[CallResult], cpu_seconds: float | None = None,
              pid: int | None = None) -> Summary:
    """Aggregate call results (and the daemon's CPU time, if measured)."""
    lat = [x for r in results for x in r.latencies]
    clears = [b.clear_latency for r in results for b in r.barge_ins
              if b.clear_latency is not None]
    minutes = sum(r.duration for r in results) / 60.0
    ok = sum(1 for r in results if r.ok)
    per_min = cpu_seconds / minutes if cpu_seconds is not None and minutes > 0 else None
    return Summary(
        calls=len(results), ok=ok, failed=len(results) - ok,
        outcomes=dict(Counter(r.outcome for r in results)),
        latency=_stats(lat), barge_in_clear=_stats(clears),
        turns=sum(len(r.turns) for r in results),
        unanswered_turns=sum(1 for r in results for t in r.turns if t.latency is None),
        call_minutes=minutes, cpu_seconds=cpu_seconds, cpu_per_call_minute=per_min, pid=pid)


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None,
            "count": float(len(values))}
