"""Running simulated calls: one (:func:`simulate_call`) or many at once (:func:`simulate`),
with the carrier's REST stand-in, the daemon's CPU time, and a printed or JSON report."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from ..config import Config, TelnyxSettings, TwilioSettings
from . import telnyx, twilio
from .api import CarrierApi, is_loopback
from .caller import Step
from .clock import Clock
from .procstat import cpu_seconds, pid_listening_on
from .results import CallResult, Line, Summary, summarize
from .speech import make_transcriber, transcribe_agent, vocabulary, write_wav


class SimulationError(Exception):
    """The simulation cannot run with this configuration (a usage problem)."""


def make_api(config: Config) -> CarrierApi | None:
    """The carrier's REST stand-in for ``config`` (not started), or None when
    ``carrier.api_base_url`` is not a local ``http://`` URL."""
    base = config.carrier.api_base_url
    if not is_loopback(base) or urlsplit(base).scheme != "http":
        if isinstance(config.carrier, TelnyxSettings):
            raise SimulationError(
                f"carrier.api_base_url: {base!r} is not a local http:// URL; the daemon answers "
                "Telnyx calls through the REST API, so point it at the simulator, e.g. "
                "http://127.0.0.1:9090/v2")
        return None
    api = CarrierApi(base)
    if isinstance(config.carrier, TwilioSettings):
        twilio.install(api, config.carrier, config.phone_number)
    else:
        telnyx.install(api, config.carrier)
    return api


async def simulate_call(config: Config, url: str, steps: list[Step], *,
                        session: aiohttp.ClientSession | None = None,
                        api: CarrierApi | None = None,
                        signer: telnyx.TelnyxSigner | None = None, codec: str = "PCMU",
                        keep_audio: bool = True, timeout: float = 300.0,
                        status_callback: bool = True, from_number: str = "",
                        clock: Clock | None = None) -> CallResult:
    """Place one call against the daemon at ``url`` as the configured carrier would.

    ``api``: a started :class:`CarrierApi` to share between calls; when None, one is started
    for this call if ``carrier.api_base_url`` is local. ``signer``: the Telnyx webhook key
    (None: unsigned webhooks). ``codec``: the Telnyx caller leg's codec (PCMU or PCMA).
    ``clock``: a 20 ms :class:`Clock` shared with other calls (None: the call's own).
    """
    own_session = session is None
    own_api = api is None
    if own_api:
        api = make_api(config)
        if api is not None:
            await api.start()
    sess = session or aiohttp.ClientSession()
    try:
        common: dict[str, Any] = dict(session=sess, api=api, keep_audio=keep_audio,
                                      timeout=timeout, from_number=from_number, clock=clock)
        call: twilio.TwilioCall | telnyx.TelnyxCall
        if isinstance(config.carrier, TwilioSettings):
            call = twilio.TwilioCall(config, url, steps, status_callback=status_callback,
                                     **common)
            if api is None:
                call.result.warnings.append(
                    "carrier.api_base_url is not local: the daemon's REST commands (hang-up, "
                    "transfer, DTMF) go to the real carrier and are not observed")
        else:
            call = telnyx.TelnyxCall(config, url, steps, signer=signer, codec=codec, **common)
        return await call.run()
    finally:
        if own_session:
            await sess.close()
        if own_api and api is not None:
            await api.close()


@dataclass
class Report:
    """The outcome of :func:`simulate`."""

    results: list[CallResult]
    summary: Summary
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every call completed as expected."""
        return bool(self.results) and all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ok": self.ok, "summary": self.summary.to_dict(),
                "calls": [r.to_dict() for r in self.results], "notes": list(self.notes)}


async def simulate(config: Config, url: str, steps: list[Step], *, calls: int = 1,
                   out: str | None = None, json_output: bool = False, stagger: float = 0.2,
                   pid: int | None = None, signer: telnyx.TelnyxSigner | None = None,
                   codec: str = "PCMU", timeout: float = 300.0, transcribe: bool = True,
                   status_callback: bool = True, stream: TextIO | None = None) -> Report:
    """Run ``calls`` concurrent calls (started ``stagger`` seconds apart), then print the
    transcript and latencies (one call) or a summary (several), or JSON with ``json_output``.
    ``out``: write what the first call's caller heard as an 8 kHz mono 16-bit WAV."""
    out_stream = stream if stream is not None else sys.stdout
    notes: list[str] = []
    api = make_api(config)
    if pid is None and is_loopback(url):
        pid = pid_listening_on(urlsplit(url).port or (443 if url.startswith("https") else 80))
    if api is not None:
        try:
            await api.start()
        except OSError as exc:
            raise SimulationError(f"cannot listen on {api.base_url} (carrier.api_base_url) "
                                  f"for the carrier's REST API: {exc.strerror or exc}") from None
    cpu_before = cpu_seconds(pid) if pid else None
    clock = Clock()
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
            async def one(i: int) -> CallResult:
                await asyncio.sleep(i * stagger)
                return await simulate_call(config, url, steps, session=session, api=api,
                                           signer=signer, codec=codec, timeout=timeout,
                                           keep_audio=i == 0, clock=clock,
                                           status_callback=status_callback)
            results = list(await asyncio.gather(*(one(i) for i in range(calls))))
    finally:
        if api is not None:
            await api.close()
    cpu_after = cpu_seconds(pid) if pid else None
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    if pid is None:
        notes.append("the daemon's process was not found (not local?): no CPU figures; "
                     "pass --pid")
    if transcribe and results and results[0].agent_audio:
        transcriber = make_transcriber(config)
        if transcriber is None:
            notes.append("agent lines are not transcribed: the pocketsphinx STT provider is "
                         "not available")
        else:
            try:
                await transcribe_agent(results[0], transcriber, vocabulary(config))
            finally:
                await transcriber.close()
    if out and results:
        write_wav(out, results[0].agent_audio)
    report = Report(results, summarize(results, cpu, pid), notes)
    if json_output:
        out_stream.write(json.dumps(report.to_dict(), indent=2) + "\n")
    elif calls == 1:
        out_stream.write(format_call(results[0]) + "".join(f"note: {n}\n" for n in notes))
    else:
        out_stream.write(format_summary(report))
    return report


def _s(value: float | None, unit: str = " s") -> str:
    return "—" if value is None else f"{value:.3f}{unit}"


def _line(ln: Line) -> str:
    text = ln.text or f"[audio {ln.end - ln.start:.1f} s]"
    if ln.interrupted:
        text += " [interrupted]"
    if ln.match and ln.match.casefold() != ln.text.casefold():
        text += f"   (≈ {ln.match!r})"
    return text


def format_call(r: CallResult) -> str:
    """A call as text: outcome, both sides' lines, actions, turns and figures."""
    out = [f"call {r.call_id} ({r.carrier}): {r.outcome}"
           + (f" — {r.detail}" if r.detail else "") + f", {r.duration:.1f} s"]
    rows = [(ln.start, f"{ln.start:7.2f}  {ln.who:<6}  {_line(ln)}") for ln in r.transcript]
    for a in r.actions:
        shown = {k: v for k, v in a.fields.items() if k not in ("Twiml", "command_id",
                                                                "client_state")}
        rows.append((a.at, f"{a.at:7.2f}  action  {a.action} {json.dumps(shown)}"))
    out += [text for _, text in sorted(rows, key=lambda row: row[0])]
    for i, t in enumerate(r.turns, 1):
        label = t.text if t.kind == "speech" else f"DTMF {t.text}"
        out.append(f"turn {i} ({label!r}): response latency {_s(t.latency)}")
    for b in r.barge_ins:
        out.append(f"barge-in at {b.start:.2f} s: clear after {_s(b.clear_latency)}")
    f = r.frames
    out.append(f"frames: sent {f.get('tx_media', 0)} media + {f.get('tx_dtmf', 0)} dtmf, "
               f"received {f.get('rx_media', 0)} media, marks {f.get('rx_marks', 0)} received / "
               f"{f.get('tx_marks', 0)} echoed, clears {f.get('rx_clears', 0)}, "
               f"playout underruns {f.get('playout_underruns', 0)}")
    if r.stream_gaps:
        out.append(f"media moved {len(r.stream_gaps)}× between streams: gaps "
                   + ", ".join(f"{g * 1000:.0f} ms" for g in r.stream_gaps)
                   + f", caller frames lost {r.unsent_frames}")
    if r.jitter:
        j = r.jitter
        out.append(f"daemon audio pacing: interval mean {j['mean_interval']:.1f} ms, "
                   f"p95 {j['p95_interval']:.1f} ms, max {j['max_interval']:.1f} ms, "
                   f"jitter {j['rfc3550']:.1f} ms")
    out += [f"error: {e}" for e in r.errors] + [f"warning: {w}" for w in r.warnings]
    return "\n".join(out) + "\n"


def format_summary(report: Report) -> str:
    """Several calls as text: ok/failed, latency percentiles, CPU per call-minute."""
    s = report.summary
    lat, clr = s.latency, s.barge_in_clear
    out = [f"calls: {s.calls}, ok {s.ok}, failed {s.failed}  "
           + ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())),
           f"response latency over {int(lat['count'] or 0)} turns: p50 {_s(lat['p50'])}, "
           f"p95 {_s(lat['p95'])}, p99 {_s(lat['p99'])}, max {_s(lat['max'])}"
           f" ({s.unanswered_turns} unanswered)"]
    if clr["count"]:
        out.append(f"barge-in → clear: p50 {_s(clr['p50'])}, p95 {_s(clr['p95'])}, "
                   f"p99 {_s(clr['p99'])}")
    if s.cpu_seconds is not None:
        out.append(f"daemon (pid {s.pid}) CPU: {s.cpu_seconds:.2f} s over "
                   f"{s.call_minutes:.2f} call-minutes = "
                   f"{_s(s.cpu_per_call_minute, ' s')} per call-minute")
    failures: dict[str, list[str]] = {}
    for r in report.results:
        if not r.ok:
            why = r.errors[0] if r.errors else r.detail
            failures.setdefault(r.outcome + (f" — {why}" if why else ""), []).append(r.call_id)
    for why, ids in failures.items():
        out.append(f"failed: {len(ids)} × {why} (e.g. {ids[0]})")
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out) + "\n"
