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
"""

from .api import CarrierApi, is_loopback
from .caller import Caller, Dtmf, Say, Step, Wait, WaitForAgent, WaitForAgentSpeech
from .clock import Clock
from .results import (COMPLETED, ERROR, HUNG_UP, REJECTED, STREAM_CLOSED, TRANSFERRED,
                      Action, BargeIn, CallResult, Line, Summary, Turn, percentile, summarize)
from .runner import Report, SimulationError, make_api, simulate, simulate_call
from .speech import (SpeechError, closest_message, make_transcriber, read_wav, say, say_wav,
                     synthesize, transcribe_agent, vocabulary, write_wav)
from .telnyx import TelnyxCall, TelnyxSigner
from .twilio import TwilioCall

__all__ = [
    "COMPLETED", "ERROR", "HUNG_UP", "REJECTED", "STREAM_CLOSED", "TRANSFERRED",
    "Action", "BargeIn", "CallResult", "Caller", "CarrierApi", "Clock", "Dtmf", "Line", "Report",
    "Say", "SimulationError", "SpeechError", "Step", "Summary", "TelnyxCall", "TelnyxSigner",
    "Turn", "TwilioCall", "Wait", "WaitForAgent", "WaitForAgentSpeech", "is_loopback",
    "closest_message", "make_api", "make_transcriber", "percentile", "read_wav", "say",
    "say_wav", "simulate", "simulate_call", "summarize", "synthesize", "transcribe_agent",
    "vocabulary", "write_wav",
]
