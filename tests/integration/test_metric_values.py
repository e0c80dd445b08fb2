"""The values behind /metrics after known simulated calls, family by family (the README's Metrics section).

One daemon per carrier, on a real 127.0.0.1 socket, with instant stub STT/TTS (the rules LLM
and the Silero VAD are the real ones). On each: a call with a spoken turn and a key press that
hangs up, one webhook with a bad signature, a TTS provider that fails once (the failover chain
moves to the next one), and on Twilio a second call where the caller talks over the greeting
(a barge-in); the Telnyx call is then priced by Telnyx's ``call.cost``. The scrape is parsed
with prometheus_client's own parser, and each family's values are checked against what the
simulator saw: call counts and outcomes, no call left active, durations, webhook answers by
code, media frames both ways (50 a second from the caller), turn-latency observations per
stage, the barge-in, the backend error and the cost by component.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverTTS
from patterd.backends.llm.rules import RulesLLM
from patterd.backends.tts.base import SpeechStream
from patterd.call.backends import Backends, default_segmenter
from patterd.carriers.twilio import price
from patterd.config import Config
from patterd.ops.metrics import LATENCY_BUCKETS, DURATION_BUCKETS, TURN_STAGES
from patterd.simulate import (CallResult, Callee, Dtmf, TelnyxSigner, WaitForAgent,
                              WaitForAgentSpeech, say, simulate_call, simulate_outbound)
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.net import free_port
from tests.support.signing import PUBLIC_URL, telnyx_event, twilio_form
from tests.support.stub_backends import StubStt, StubTts

pytestmark = pytest.mark.slow

SEED = bytes(range(32))
TOKEN = "admin-token-0123456789abcdef"
PRICES = {"carrier": {"twilio": {"inbound_per_minute": 0.02},
                      "telnyx": {"inbound_per_minute": 0.01}},
          "stt": {"pocketsphinx": {"per_minute": 0.6}},
          "tts": {"espeak": {"per_thousand_chars": 1.0}}}
AGENT = {
    "agent": {"first_message": "Thanks for calling. How can I help you?"},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["opening hours", "hours"], "reply": "We are open nine to five."},
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry, say hours or goodbye."},
    "pricing": PRICES,
}


# Contract §6: every family, by the name the text parser gives it (counters lose "_total").
FAMILIES = {
    "patterd_calls_active": "gauge", "patterd_calls": "counter",
    "patterd_webhook_requests": "counter", "patterd_webhook_signature_failures": "counter",
    "patterd_media_frames": "counter", "patterd_turn_latency_seconds": "histogram",
    "patterd_barge_ins": "counter", "patterd_backend_errors": "counter",
    "patterd_call_cost_usd": "counter", "patterd_call_duration_seconds": "histogram",
}


class FlakyTts(StubTts):
    """A provider whose first sentence fails (as a 503 would), then works."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def synthesize(self, text: str, encoding: str = "PCM16") -> SpeechStream:
        if self.failures == 0:
            self.failures += 1
            raise BackendError("tts", "flaky", "service unavailable", status=503,
                               retryable=True)
        return super().synthesize(text, encoding)


@dataclass
class Rig:
    """A daemon with the failing-once TTS chain, its gateway reporting provider errors."""

    cfg: Config
    flaky: FlakyTts = field(default_factory=FlakyTts)
    stub: StubTts = field(default_factory=StubTts)
    gw: Any = None

    def backends(self) -> Backends:
        segmenter, batcher = default_segmenter(self.cfg)
        tts = FailoverTTS([self.flaky, self.stub],
                          on_error=lambda *a: self.gw.backend_failed(*a))
        return Backends(stt=StubStt("what are your opening hours"),
                        llm=RulesLLM(self.cfg.llm, self.cfg.agent), tts=tts,
                        new_segmenter=segmenter, vad_batcher=batcher)


class Scrape:
    """One /metrics text, parsed."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def labelled(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for s in self.samples:
            if s.name == name:
                yield s.labels, s.value


async def scrape(client: Any) -> Scrape:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return Scrape(await resp.text())


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


def webhook_codes(results: list[CallResult], endpoint_of: Any) -> Counter[tuple[str, str]]:
    """(endpoint, code) of every webhook the simulator delivered."""
    out: Counter[tuple[str, str]] = Counter()
    for r in results:
        for w in r.webhooks:
            assert w.status, (w.kind, w.error)
            out[(endpoint_of(w), str(w.status))] += 1
    return out


def check_common(s: Scrape, rig: Rig, carrier: str, inbound: list[CallResult],
                 outbound: list[CallResult], utterances: int, key_presses: int) -> None:
    """The families whose values follow from the calls in the same way on both carriers."""
    gw = rig.gw
    calls = inbound + outbound
    assert {name: s.families[name].type for name in FAMILIES if name in s.families} == FAMILIES
    # No call left active; every call counted once, by direction and outcome.
    assert s.value("patterd_calls_active") == 0
    counted = {(lb["direction"], lb["outcome"]): v for lb, v in s.labelled("patterd_calls_total")}
    expected: Counter[tuple[str, str]] = Counter()
    for r in calls:
        rec = gw.registry.get(r.call_id)
        expected[(rec.direction, rec.outcome)] += 1
    assert counted == dict(expected)
    assert expected[("inbound", "completed")] == len(inbound)
    # Durations: one observation per answered call, its sum what the callers lived (±0.5 s a
    # call). Unanswered calls: Twilio's final callback brings CallDuration=0 and it is
    # observed; Telnyx's hang-up has no duration and nothing is observed.
    n = s.value("patterd_call_duration_seconds_count", direction="inbound")
    total = s.value("patterd_call_duration_seconds_sum", direction="inbound")
    assert n == len(inbound)
    assert abs(total - sum(r.duration for r in inbound)) <= 0.5 * len(inbound), total
    unanswered = [lb for lb, _ in s.labelled("patterd_call_duration_seconds_count")
                  if lb["direction"] == "outbound"]
    if carrier == "twilio":
        assert s.value("patterd_call_duration_seconds_count", direction="outbound") == len(outbound)
        assert s.value("patterd_call_duration_seconds_sum", direction="outbound") == 0
    else:
        assert not unanswered
    # Media: every caller frame arrived (the simulator sends 50 a second); every agent frame
    # the simulator heard was sent, and hardly more (a few may be in flight at the hang-up).
    sent_by_caller = sum(r.frames.get("tx_media", 0) for r in calls)
    heard_by_caller = sum(r.frames.get("rx_media", 0) for r in calls)
    rx = s.value("patterd_media_frames_total", direction="rx")
    tx = s.value("patterd_media_frames_total", direction="tx")
    assert rx == sent_by_caller
    talk_seconds = sum(r.duration for r in inbound)
    assert abs(rx - 50 * talk_seconds) <= 0.05 * 50 * talk_seconds + 10, (rx, talk_seconds)
    assert heard_by_caller <= tx <= heard_by_caller + 50, (tx, heard_by_caller)
    assert s.value("patterd_media_frames_invalid_total") == 0
    # Turn latency: one endpointing and STT observation per utterance; the agent answered
    # every utterance and key press (LLM first token, response); TTS only for sentences not
    # already cached.
    count = {st: s.value("patterd_turn_latency_seconds_count", stage=st) for st in TURN_STAGES}
    total = {st: s.value("patterd_turn_latency_seconds_sum", stage=st) for st in TURN_STAGES}
    synthesised = rig.flaky.texts + rig.stub.texts
    assert count == {"endpointing": utterances, "stt": utterances,
                     "llm_first_token": utterances + key_presses,
                     "tts_first_byte": len(synthesised),
                     "response": utterances + key_presses}
    responses = [t["response"] for r in inbound for t in gw.registry.get(r.call_id).turns]
    assert len(responses) == count["response"]
    assert total["response"] == pytest.approx(sum(responses), abs=1e-3 * len(responses))
    for stage in TURN_STAGES:
        assert 0 <= total[stage] < 2.0 * count[stage], (stage, total[stage])
    assert total["endpointing"] > 0    # the VAD waits for some silence before it decides
    # Buckets: the telephony range, 10 ms to 10 s, cumulative, ending with every observation.
    for stage in TURN_STAGES:
        buckets = [(lb["le"], v) for lb, v in s.labelled("patterd_turn_latency_seconds_bucket")
                   if lb["stage"] == stage]
        assert [le for le, _ in buckets] == [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
        values = [v for _, v in buckets]
        assert values == sorted(values) and values[-1] == count[stage]
    les = [lb["le"] for lb, _ in s.labelled("patterd_call_duration_seconds_bucket")
           if lb["direction"] == "inbound"]
    assert les == [repr(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]
    # The TTS provider that failed once, and nothing else.
    errors = {(lb["backend"], lb["provider"]): v
              for lb, v in s.labelled("patterd_backend_errors_total")}
    assert errors == {("tts", "flaky"): 1}
    # Cost by component: what the records say, and what the known calls must cost.
    cost = {lb["component"]: v for lb, v in s.labelled("patterd_call_cost_usd_total")}
    records = [gw.registry.get(r.call_id).cost for r in inbound]
    for component in ("carrier", "stt", "llm", "tts"):
        assert cost[component] == pytest.approx(sum(c[component] for c in records), abs=1e-9)
    assert cost["llm"] == 0                                          # the rules agent is free
    assert cost["tts"] == pytest.approx(sum(map(len, synthesised)) / 1000 * 1.0)
    assert cost["stt"] > 0                                           # caller speech was heard
    # The carrier's part: started minutes at the list price, unless the carrier priced it.
    per_minute = PRICES["carrier"][carrier]["inbound_per_minute"]
    for r in inbound:
        rec = gw.registry.get(r.call_id)
        if rec.cost["carrier_source"] == "estimate":
            assert rec.cost["carrier"] == pytest.approx(
                math.ceil(rec.media_seconds / 60) * per_minute)


async def test_twilio_values(daemon, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(price, "SCHEDULE", (3600.0,))   # Twilio's own price: another test
    raw = twilio_raw(admin={"token": TOKEN}, **AGENT)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    rig = Rig(config(raw))
    client = await daemon(rig.cfg, rig.backends())
    rig.gw = gateway_of(client)
    url = url_of(client)
    talk = await simulate_call(rig.cfg, url, [
        WaitForAgent(), await say("what are your opening hours"), WaitForAgent(), Dtmf("9"),
        WaitForAgent(required=False)], timeout=60)
    # The caller talks over the greeting: a barge-in.
    barge = await simulate_call(rig.cfg, url, [
        WaitForAgentSpeech(delay=0.8), await say("what are your opening hours"),
        WaitForAgent(), Dtmf("9"), WaitForAgent(required=False)], timeout=60)
    busy = await simulate_outbound(rig.cfg, url, "+15557654321", Callee("busy"),
                                   admin_token=TOKEN)
    for r in (talk, barge):
        assert r.outcome == "hung_up_by_agent", (r.outcome, r.errors)
    assert busy.ok, (busy.outcome, busy.errors)
    body, headers = twilio_form(PUBLIC_URL + "/webhooks/twilio/voice",
                                {"CallSid": "CA" + "0" * 32, "CallStatus": "ringing"})
    headers["X-Twilio-Signature"] = base64.b64encode(b"not the signature").decode()
    assert (await client.post("/webhooks/twilio/voice", data=body, headers=headers)).status == 403

    s = await scrape(client)
    check_common(s, rig, "twilio", [talk, barge], [busy], utterances=2, key_presses=2)
    codes = {(lb["endpoint"], lb["code"]): v
             for lb, v in s.labelled("patterd_webhook_requests_total")
             if lb["carrier"] == "twilio"}
    sent = webhook_codes([talk, barge, busy], lambda w: w.kind.split(":")[0])
    sent[("voice", "403")] += 1
    assert codes == dict(sent)
    assert codes[("voice", "200")] == 2 and codes[("status", "204")] >= 2
    assert s.value("patterd_webhook_signature_failures_total", carrier="twilio") == 1
    assert s.value("patterd_webhook_signature_failures_total", carrier="telnyx") == 0
    assert s.value("patterd_barge_ins_total") == 1 == len(barge.barge_ins)
    assert barge.frames["rx_clears"] == 1 and talk.frames.get("rx_clears", 0) == 0
    cost = {lb["component"]: v for lb, v in s.labelled("patterd_call_cost_usd_total")}
    assert cost["carrier"] == pytest.approx(2 * 0.02)   # two inbound calls under a minute


async def test_telnyx_values(daemon) -> None:  # type: ignore[no-untyped-def]
    signer = TelnyxSigner(SEED)
    raw = telnyx_raw(signer.public_key_b64, admin={"token": TOKEN}, **AGENT)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    rig = Rig(config(raw))
    client = await daemon(rig.cfg, rig.backends())
    rig.gw = gateway_of(client)
    url = url_of(client)
    talk = await simulate_call(rig.cfg, url, [
        WaitForAgent(), await say("what are your opening hours"), WaitForAgent(), Dtmf("9"),
        WaitForAgent(required=False)], signer=signer, timeout=60)
    assert talk.outcome == "hung_up_by_agent", (talk.outcome, talk.errors)
    busy = await simulate_outbound(rig.cfg, url, "+15557654321", Callee("busy"),
                                   admin_token=TOKEN, signer=signer)
    assert busy.ok, (busy.outcome, busy.errors)
    # A webhook signed with another key.
    stray = telnyx_event("call.initiated", {"call_control_id": "v3:stray", "direction": "incoming"},
                         "evt-stray")
    forged = TelnyxSigner(bytes(32)).headers(stray)
    resp = await client.post("/webhooks/telnyx/voice", data=stray,
                             headers={**forged, "Content-Type": "application/json"})
    assert resp.status == 403
    # Telnyx's own figure for the call arrives after it: it replaces our estimate.
    estimate = rig.gw.registry.get(talk.call_id).cost["carrier"]
    assert estimate == pytest.approx(0.01)
    cost_event = telnyx_event("call.cost", {
        "call_control_id": talk.call_id, "total_cost": "0.0450", "billed_duration_secs": 60,
        "status": "success"}, "evt-cost-1")
    resp = await client.post("/webhooks/telnyx/voice", data=cost_event,
                             headers={**signer.headers(cost_event),
                                      "Content-Type": "application/json"})
    assert resp.status == 200

    s = await scrape(client)
    check_common(s, rig, "telnyx", [talk], [busy], utterances=1, key_presses=1)
    codes = {(lb["endpoint"], lb["code"]): v
             for lb, v in s.labelled("patterd_webhook_requests_total")
             if lb["carrier"] == "telnyx"}
    sent = webhook_codes([talk, busy], lambda w: "voice")
    sent[("voice", "403")] += 1
    sent[("voice", "200")] += 1                     # the call.cost event
    assert codes == dict(sent)
    assert s.value("patterd_webhook_signature_failures_total", carrier="telnyx") == 1
    assert s.value("patterd_webhook_signature_failures_total", carrier="twilio") == 0
    assert s.value("patterd_barge_ins_total") == 0
    rec = rig.gw.registry.get(talk.call_id)
    assert rec.cost["carrier_source"] == "carrier" and rec.cost["carrier"] == 0.045
    cost = {lb["component"]: v for lb, v in s.labelled("patterd_call_cost_usd_total")}
    assert cost["carrier"] == pytest.approx(0.045)
