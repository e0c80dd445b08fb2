"""Whole calls on 127.0.0.1 through the carrier simulator, with the offline default backends
(espeak, pocketsphinx, rules, Silero): what the caller hears, what the agent does."""

from __future__ import annotations


import numpy as np
import pytest

from patterd.simulate import (Dtmf, TelnyxSigner, Wait, WaitForAgent, WaitForAgentSpeech, say,
                              simulate_call)
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.support.net import free_port

FRONT_DESK = {
    "agent": {"first_message": "Thanks for calling Example Company. How can I help?",
              "transfer_targets": {"sales": "+15550001001", "support": "+15550001002"}},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["sales"], "dtmf": "1", "reply": "Connecting you to sales.",
         "action": {"transfer": "sales"}},
        {"phrases": ["opening hours", "hours"], "reply": "We are open nine to five."},
        {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry, say sales or goodbye."},
}
SEED = bytes(range(32))


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0


def twilio_cfg(**extra):  # type: ignore[no-untyped-def]
    raw = twilio_raw(**{**FRONT_DESK, **extra})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


def telnyx_cfg(**extra):  # type: ignore[no-untyped-def]
    raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **{**FRONT_DESK, **extra})
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


def url_of(client) -> str:  # type: ignore[no-untyped-def]
    return str(client.make_url("")).rstrip("/")


def agent_lines(client, call_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    rec = gateway_of(client).registry.get(call_id)
    return [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]


@pytest.mark.slow
async def test_twilio_greeting_phrase_reply_and_transfer_by_key(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg()
    client = await daemon(cfg, real=True)
    steps = [WaitForAgent(), await say("what are your opening hours"), WaitForAgent(),
             Dtmf("1"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.ok, (result.outcome, result.detail, result.errors)
    # The greeting was heard: real audio, not silence, in the first seconds.
    assert rms(result.audio_between(0.0, 2.5)) > 500
    # The phrase was recognised and answered with its reply.
    rec = gateway_of(client).registry.get(result.call_id)
    caller = [ln["text"] for ln in rec.transcript if ln["role"] == "caller"]
    assert any("hours" in text for text in caller), rec.transcript
    assert "We are open nine to five." in agent_lines(client, result.call_id)
    assert result.turns[0].latency is not None and result.turns[0].latency < 2.0
    # The key press became a transfer through the carrier's REST API.
    assert result.outcome == "transferred"
    twiml = [a.fields.get("Twiml", "") for a in result.actions]
    assert any("<Dial" in t and "<Number>+15550001001</Number>" in t for t in twiml)
    assert rec.outcome == "transferred"
    assert any(e["type"] == "transfer" and e["to"] == "+15550001001" for e in rec.events)


@pytest.mark.slow
async def test_twilio_speech_during_greeting_clears_playback(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg()
    client = await daemon(cfg, real=True)
    steps = [WaitForAgentSpeech(delay=0.6), await say("goodbye"), Wait(1.0),
             WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.barge_ins and result.barge_ins[0].clear_latency is not None
    assert result.barge_ins[0].clear_latency < 0.6        # the goal is 300 ms; slack for CI load
    assert result.frames["rx_clears"] >= 1
    lines = gateway_of(client).registry.get(result.call_id).transcript
    greeting = next(ln for ln in lines if ln["role"] == "agent")
    assert greeting.get("interrupted") is True
    assert len(greeting["text"]) < len("Thanks for calling Example Company. How can I help?")
    assert gateway_of(client).metrics.barge_ins._value.get() >= 1
    assert result.outcome == "hung_up_by_agent"


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_telnyx_phrase_reply_then_hangup_by_key(daemon, codec: str) -> None:  # type: ignore[no-untyped-def]
    cfg = telnyx_cfg()
    client = await daemon(cfg, real=True)
    steps = [WaitForAgent(), await say("what are your opening hours"), WaitForAgent(),
             Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, signer=TelnyxSigner(SEED),
                                 codec=codec, timeout=60)
    assert result.ok, (result.outcome, result.detail, result.errors)
    assert rms(result.audio_between(0.0, 2.5)) > 500
    assert "We are open nine to five." in agent_lines(client, result.call_id)
    assert result.outcome == "hung_up_by_agent"
    assert [a.action for a in result.actions if a.action != "answer"][-1] == "hangup"
    answer = next(a for a in result.actions if a.action == "answer")
    assert answer.fields["stream_bidirectional_mode"] == "rtp"


async def test_silence_timeout_reprompts_once_then_hangs_up(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg(agent={**FRONT_DESK["agent"], "silence_timeout": 1.5,
                            "first_message": "Hi."})
    client = await daemon(cfg)            # stub TTS: a tone per message
    steps = [Wait(10)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=30)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    rec = gateway_of(client).registry.get(result.call_id)
    spoken = agent_lines(client, result.call_id)
    assert spoken[0] == "Hi." and spoken[1] == "Are you still there?"
    assert spoken[-1].endswith("Goodbye.") and len(spoken) == 3
    assert rec.outcome == "silence"


async def test_max_call_seconds_ends_the_call(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg(agent={**FRONT_DESK["agent"], "max_call_seconds": 2,
                            "first_message": "Hi."})
    client = await daemon(cfg)
    result = await simulate_call(cfg, url_of(client), [Wait(10)], timeout=30)
    assert result.outcome == "hung_up_by_agent"
    assert result.duration < 8
    assert gateway_of(client).registry.get(result.call_id).outcome == "max_duration"


DTMF_RULES = {"llm": {"provider": "rules", "rules": [
    {"dtmf": "5", "reply": "Sending tones.", "action": {"send_dtmf": "123#"}},
    {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
], "fallback": "Sorry?"}}


async def test_twilio_send_dtmf_replays_the_stream_and_call_continues(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg(**DTMF_RULES)
    client = await daemon(cfg)
    steps = [WaitForAgent(), Dtmf("5"), WaitForAgent(), Wait(1.0), Dtmf("9"),
             WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    twiml = [a.fields.get("Twiml", "") for a in result.actions]
    played_digits = [t for t in twiml if '<Play digits="123#"/>' in t]
    assert played_digits and "<Connect><Stream" in played_digits[0]
    assert 'name="resumed" value="1"' in played_digits[0]
    assert len(result.stream_ids) == 2          # a new stream after the TwiML update
    rec = gateway_of(client).registry.get(result.call_id)
    assert any(e["type"] == "send_dtmf" and e["digits"] == "123#" for e in rec.events)
    greetings = [t for t in agent_lines(client, result.call_id) if t.startswith("Thanks")]
    assert len(greetings) == 1                  # the resumed stream does not greet again
    assert rec.outcome == "completed"


async def test_telnyx_send_dtmf_uses_call_control(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = telnyx_cfg(**DTMF_RULES)
    client = await daemon(cfg)
    steps = [WaitForAgent(), Dtmf("5"), WaitForAgent(), Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, signer=TelnyxSigner(SEED),
                                 timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    dtmf = [a for a in result.actions if a.action == "send_dtmf"]
    assert dtmf and dtmf[0].fields["digits"] == "123#" and dtmf[0].fields.get("command_id")
    assert len(result.stream_ids) == 1
