"""What a simulated outbound call observed: the admin API's answer, every REST request of the
daemon, every webhook posted (and the daemon's status), the media socket, what the callee
heard, the AMD verdict, and how the call ended."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .api import ApiRequest
from .results import (BUSY, CANCELED, COMPLETED, FAILED, HUNG_UP, NO_ANSWER, TRANSFERRED,
                      CallResult, _rounded)

EXPECTED = {
    "human": frozenset({COMPLETED, HUNG_UP, TRANSFERRED}),
    "machine": frozenset({HUNG_UP, COMPLETED}),
    "busy": frozenset({BUSY}), "no-answer": frozenset({NO_ANSWER}),
    "failed": frozenset({FAILED}), "canceled": frozenset({CANCELED}),
}


@dataclass(slots=True)
class OutboundResult(CallResult):
    """A :class:`CallResult` for a call the daemon placed (times: seconds since the daemon
    asked the carrier to place it)."""

    direction: str = "outbound"
    to: str = ""
    callee: str = ""                         # the callee's kind
    admin_status: int = 0                    # the daemon's answer to POST /v1/calls
    admin_body: Any = None
    admin_call_id: str = ""
    carrier_status: str = ""                 # Twilio CallStatus / Telnyx hangup_cause at the end
    requests: list[ApiRequest] = field(default_factory=list)   # every REST request about it
    media_opened: bool = False               # a media socket was connected
    said: list[str] = field(default_factory=list)   # text the carrier spoke (<Say>, speak)
    answered_by: str = ""                    # the AMD verdict sent ("" without AMD)
    amd_at: float | None = None              # when it was sent (call time)
    greeting_end: float | None = None        # a machine: when its greeting (and beep) ended

    @property
    def expected_outcomes(self) -> frozenset[str]:
        """The outcomes that are right for this callee."""
        return EXPECTED.get(self.callee, frozenset())

    @property
    def ok(self) -> bool:
        """The daemon placed the call (201 with the carrier's id), it ended as this callee
        would make it end, and nothing went wrong on the wire."""
        return (self.admin_status == 201 and bool(self.call_id)
                and self.admin_call_id == self.call_id
                and self.outcome in self.expected_outcomes and not self.errors)

    @property
    def voicemail_audio(self) -> bytes:
        """What a machine recorded: the daemon's audio after the greeting ended (whole 20 ms
        frames)."""
        if self.greeting_end is None:
            return b""
        frame = max(0, round((self.greeting_end - self.audio_start) * 50))
        return self.agent_audio[frame * 320:]

    def add_request(self, req: ApiRequest) -> None:
        """Keep a REST request about this call (a :class:`CarrierApi` watcher), timed in
        call time."""
        started = self.started_at or req.at
        self.requests.append(ApiRequest(round(req.at - started, 4), req.method, req.path,
                                        req.status, req.fields, req.call_id))

    def request_fields(self, action: str) -> list[dict[str, Any]]:
        """The fields of the daemon's REST requests whose path ends with ``action``
        (``Calls.json``, ``Recordings.json``, ``hangup``, ``speak``, …)."""
        return [r.fields for r in self.requests if r.path.endswith(action)]

    def webhook_kinds(self) -> list[str]:
        """The webhooks posted, in order (Twilio: ``status:ringing``…; Telnyx: event types)."""
        return [w.kind for w in self.webhooks]

    def to_dict(self) -> dict[str, Any]:
        out = CallResult.to_dict(self)
        out.update({
            "ok": self.ok, "direction": self.direction, "to": self.to, "callee": self.callee,
            "admin": {"status": self.admin_status, "call_id": self.admin_call_id,
                      "body": self.admin_body},
            "carrier_status": self.carrier_status,
            "requests": [_rounded(asdict(r)) for r in self.requests],
            "media_opened": self.media_opened, "said": list(self.said),
            "answered_by": self.answered_by, "amd_at": self.amd_at,
            "greeting_end": self.greeting_end,
        })
        return out


def format_outbound(r: OutboundResult) -> str:
    """An outbound call as text (for ``patterd simulate --outbound``)."""
    out = [f"outbound call {r.call_id or '—'} ({r.carrier}) to {r.to}, callee {r.callee}: "
           f"{r.outcome}" + (f" — {r.detail}" if r.detail else "")
           + f" [{'ok' if r.ok else 'NOT ok'}]",
           f"admin API: HTTP {r.admin_status} call_id={r.admin_call_id or '—'}"]
    rows: list[tuple[float, str]] = []
    for q in r.requests:
        shown = {k: v for k, v in q.fields.items() if k not in ("Twiml", "client_state")}
        rows.append((q.at, f"{q.at:7.2f}  REST    {q.method} {q.path.rsplit('/', 1)[-1]} → "
                           f"{q.status} {json.dumps(shown)[:160]}"))
    for w in r.webhooks:
        dup = " (duplicate)" if w.attempt > 1 else ""
        rows.append((w.at, f"{w.at:7.2f}  webhook {w.kind}{dup} → "
                           f"{w.status or w.error or 'no answer'}"))
    for ln in r.transcript:
        rows.append((ln.start, f"{ln.start:7.2f}  {ln.who:<7} "
                               f"{ln.text or f'[audio {ln.end - ln.start:.1f} s]'}"))
    out += [text for _, text in sorted(rows, key=lambda row: row[0])]
    out.append(f"media socket: {'opened' if r.media_opened else 'none'}"
               + (f"; AMD: {r.answered_by} at {r.amd_at:.2f} s" if r.answered_by
                  and r.amd_at is not None else ""))
    out += [f"carrier said: {text!r}" for text in r.said]
    out += [f"error: {e}" for e in r.errors] + [f"warning: {w}" for w in r.warnings]
    return "\n".join(out) + "\n"
