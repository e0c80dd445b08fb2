"""The carrier simulator behind ``patterd simulate``, shared with tests and benchmarks.

It places calls against a running daemon exactly as Twilio or Telnyx would: signed webhooks,
the real media-stream protocol paced in real time, a model of the carrier's playout buffer
(marks, ``clear``), and a local stand-in for the carrier's REST API so the daemon's hang-ups,
transfers and DTMF are observed. Typical use from a test::

    from patterd.simulate import Dtmf, WaitForAgent, say, simulate_call

    steps = [WaitForAgent(), await say("billing"), WaitForAgent()]
    result = await simulate_call(config, "http://127.0.0.1:8000", steps)
    assert result.ok and result.outcome == "transferred"
    assert result.turns[0].latency < 1.0

Telnyx needs the webhook key: ``simulate_call(..., signer=TelnyxSigner(seed))``, and
``carrier.api_base_url`` must be a local ``http://`` URL (the simulator serves the carrier's REST
API there; for Twilio that is optional but without it hang-ups and transfers go unobserved).

A call's media may move to another stream (Telnyx ``streaming_start`` on the live call, then
``streaming_stop`` with the old ``stream_id``; a Twilio update with a new ``<Connect><Stream>``):
``result.stream_gaps`` holds, per move, the seconds no stream carried the caller's audio (0.0
when the new stream was up first) and ``result.unsent_frames`` the caller's 20 ms frames lost.

Outbound calls: :func:`simulate_outbound` asks the daemon's admin API to place a call and plays
the carrier and the :class:`Callee` (a person, a voicemail machine, a busy line…)::

    r = await simulate_outbound(config, url, "+15557654321", Callee("busy"), admin_token=TOKEN)
    assert r.ok and r.outcome == BUSY and not r.media_opened
"""

from .api import ApiRequest, CarrierApi, is_loopback
from .callee import DEFAULT_GREETING, Callee
from .caller import (Caller, Drop, Dtmf, Say, Step, Then, Wait, WaitForAgent,
                     WaitForAgentSpeech)
from .clock import Clock
from .outbound import simulate_outbound
from .outbound_result import OutboundResult, format_outbound
from .results import (BUSY, CANCELED, COMPLETED, ERROR, FAILED, HUNG_UP, NO_ANSWER, REJECTED,
                      STREAM_CLOSED, TRANSFERRED, Action, BargeIn, CallResult, Line, Summary,
                      Turn, Webhook, percentile, summarize)
from .runner import Report, SimulationError, make_api, simulate, simulate_call
from .speech import (SpeechError, closest_message, make_transcriber, read_wav, say, say_wav,
                     synthesize, transcribe_agent, vocabulary, write_wav)
from .telnyx import TelnyxCall, TelnyxSigner
from .twilio import TwilioCall

__all__ = [
    "BUSY", "CANCELED", "COMPLETED", "DEFAULT_GREETING", "ERROR", "FAILED", "HUNG_UP",
    "NO_ANSWER", "REJECTED", "STREAM_CLOSED", "TRANSFERRED",
    "Action", "ApiRequest", "BargeIn", "CallResult", "Callee", "Caller", "CarrierApi", "Clock",
    "Drop", "Dtmf", "Line", "OutboundResult", "Report", "Say", "SimulationError",
    "SpeechError", "Step", "Summary", "TelnyxCall", "TelnyxSigner", "Then", "Turn",
    "TwilioCall", "Wait", "WaitForAgent", "WaitForAgentSpeech", "Webhook", "is_loopback",
    "closest_message", "format_outbound", "make_api", "make_transcriber", "percentile",
    "read_wav", "say", "say_wav", "simulate", "simulate_call", "simulate_outbound",
    "summarize", "synthesize", "transcribe_agent", "vocabulary", "write_wav",
]
