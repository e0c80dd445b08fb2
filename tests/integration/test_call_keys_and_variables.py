"""Whole simulated calls (stub STT/TTS, the real rules agent) for what the agent says and how
it hears keys: ``{name}`` placeholders filled from the call's variables (``POST /v1/calls``
over ``agent.variables``) in every message, multi-key DTMF rules, and ``barge_in: false``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from patterd.backends import create_llm
from patterd.backends.failover import FailoverLLM
from patterd.call import keypad
from patterd.config import Config
from patterd.simulate import (Callee, Dtmf, TelnyxSigner, Wait, WaitForAgent,
                              WaitForAgentSpeech, say, simulate_call, simulate_outbound)
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_live_calls import SEED, free_port, rms, url_of
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply
from tests.support.stub_backends import StubStt, stub_backends

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TO = "+15557654321"
GREETING = "Hello {name}, this is {company}."
AGENT = {"first_message": GREETING,
         "variables": {"name": "caller", "company": "Acme"},
         "voicemail_message": "Hi {name}, {company} here. Please call back."}
LLM = {"provider": "rules", "rules": [
    {"phrases": ["balance"], "dtmf": "1", "reply": "Your balance is {balance}, {name}."},
    {"dtmf": "*9", "reply": "Secret menu for {name}."},
    {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye {name}!",
     "action": {"hangup": True}},
], "fallback": "Sorry {name}, press 1 or 9."}


def make_config(carrier: str = "twilio", **extra: Any) -> Config:
    sections = {"agent": AGENT, "llm": LLM, "admin": {"token": TOKEN}, **extra}
    if carrier == "twilio":
        raw = twilio_raw(**sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    else:
        raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


async def record_of(client: Any, call_id: str) -> dict[str, Any]:
    """The call's record from the admin API, once the call is over."""
    for _ in range(250):
        resp = await client.get(f"/v1/calls/{call_id}", headers=AUTH)
        doc = await resp.json()
        if resp.status == 200 and doc.get("outcome") and doc.get("transcript"):
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"the call {call_id} has no finished record")


def agent_said(doc: dict[str, Any]) -> list[str]:
    return [ln["text"] for ln in doc["transcript"] if ln["role"] == "agent"]


def keys_of(doc: dict[str, Any]) -> list[str]:
    return [ln["dtmf"] for ln in doc["transcript"] if ln.get("dtmf")]


def signer_for(cfg: Config) -> TelnyxSigner | None:
    return TelnyxSigner(SEED) if cfg.carrier.provider == "telnyx" else None


# -- variables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_per_call_variables_fill_greeting_rule_replies_and_fallback(
        daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier)
    client = await daemon(cfg)
    callee = Callee("human", steps=[WaitForAgent(), Dtmf("1"), WaitForAgent(), Dtmf("5"),
                                    WaitForAgent(), Dtmf("9"), WaitForAgent(required=False)])
    r = await simulate_outbound(cfg, url_of(client), TO, callee, admin_token=TOKEN,
                                variables={"name": "Bob", "balance": "12 dollars"},
                                signer=signer_for(cfg), timeout=60)
    assert r.admin_status == 201 and r.media_opened, (r.outcome, r.detail, r.errors)
    doc = await record_of(client, r.admin_call_id)
    # Per-call "name" wins over agent.variables; "company" still comes from the agent.
    assert agent_said(doc) == ["Hello Bob, this is Acme.", "Your balance is 12 dollars, Bob.",
                               "Sorry Bob, press 1 or 9.", "Goodbye Bob!"], doc["transcript"]
    assert doc["outcome"] == "completed"


@pytest.mark.parametrize("carrier,requested,spoken", [
    ("twilio", None, "Hi Bob, Acme here. Please call back."),          # agent.voicemail_message
    ("telnyx", "{name}, {company} called about {topic}.", "Bob, Acme called about {topic}."),
])
async def test_voicemail_placeholders_are_filled(daemon: Any, carrier: str,
                                                 requested: str | None, spoken: str) -> None:
    cfg = make_config(carrier)
    # The machine's greeting is heard as words that end no call (the default stub hears
    # "goodbye", and the agent's goodbye would race the verdict).
    client = await daemon(cfg, stub_backends(cfg, stt_text="please leave a message"))
    r = await simulate_outbound(cfg, url_of(client), TO, Callee("machine"),
                                admin_token=TOKEN, machine_detection=True,
                                voicemail_message=requested, variables={"name": "Bob"},
                                signer=signer_for(cfg), timeout=60)
    assert r.admin_status == 201 and r.media_opened, (r.outcome, r.detail, r.errors)
    doc = await record_of(client, r.admin_call_id)
    assert doc["outcome"] == "voicemail"
    assert agent_said(doc)[-1] == spoken
    assert rms(r.voicemail_audio) > 300


async def test_voicemail_by_the_carrier_fills_agent_variables(daemon: Any,
                                                              fake_twilio: Any) -> None:
    """No session here (the verdict reached another replica): Twilio speaks the text, filled
    from agent.variables."""
    from tests.integration.test_call_control import carrier_voicemail
    from tests.support.signing import call_sid
    fake, base = fake_twilio
    client = await daemon(config(twilio_raw(carrier={"api_base_url": base}, agent=AGENT)))
    twiml = await carrier_voicemail(client, fake, "Call {company} back, {nobody}.",
                                    call_sid(7), "machine_end_beep")
    assert "<Say>Call Acme back, {nobody}.</Say><Hangup/>" in twiml


# -- keys --------------------------------------------------------------------------------------
async def test_multi_key_rule_fires_and_single_key_rule_answers_at_once(
        daemon: Any) -> None:
    cfg = make_config()
    client = await daemon(cfg)
    steps = [WaitForAgent(), Dtmf("1"), WaitForAgent(), Dtmf("*9"), WaitForAgent(),
             Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    doc = await record_of(client, result.call_id)
    assert agent_said(doc) == ["Hello caller, this is Acme.", "Your balance is {balance}, caller.",
                               "Secret menu for caller.", "Goodbye caller!"], doc["transcript"]
    assert keys_of(doc) == ["1", "*", "9", "9"]          # every key in the transcript
    keys = [t for t in result.turns if t.kind == "dtmf"]
    # "1" and "9" are complete and nothing longer starts with them: no inter-digit wait.
    assert keys[0].latency is not None and keys[0].latency < keypad.INTER_DIGIT_TIMEOUT / 2
    assert keys[2].latency is not None and keys[2].latency < keypad.INTER_DIGIT_TIMEOUT / 2
    # "*9" is answered as soon as its 9 is pressed.
    assert keys[1].latency is not None and keys[1].latency < keypad.INTER_DIGIT_TIMEOUT / 2


async def test_keys_matching_no_rule_get_the_fallback_once(
        daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keypad, "INTER_DIGIT_TIMEOUT", 1.2)
    cfg = make_config()
    client = await daemon(cfg)
    steps = [WaitForAgent(), Dtmf("*5"), WaitForAgent(),     # a dead end: answered at the 5
             Dtmf("*"), WaitForAgent(),                       # unfinished: after the timeout
             Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    doc = await record_of(client, result.call_id)
    fallback = "Sorry caller, press 1 or 9."
    assert agent_said(doc) == ["Hello caller, this is Acme.", fallback, fallback,
                               "Goodbye caller!"], doc["transcript"]
    assert keys_of(doc) == ["*", "5", "*", "9"]
    keys = [t for t in result.turns if t.kind == "dtmf"]
    assert keys[0].latency is not None and keys[0].latency < 0.9
    assert keys[1].latency is not None and keys[1].latency >= 1.1    # waited for more keys


async def test_the_first_key_stops_the_agent_talking(daemon: Any) -> None:
    long_greeting = "Hello {name}. " + "Please listen carefully as our menu has changed. " * 3
    cfg = make_config(agent={**AGENT, "first_message": long_greeting})
    client = await daemon(cfg)
    steps = [WaitForAgentSpeech(delay=0.5), Dtmf("*9", gap=1.5), WaitForAgent(),
             Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    star = next(t for t in result.turns if t.kind == "dtmf")
    # Silent from just after the * until the 9 (1.5 s later), though the greeting is ~9 s long.
    assert rms(result.audio_between(star.start + 0.5, star.start + 1.4)) < 50
    assert rms(result.audio_between(star.end + 0.1, star.end + 0.6)) > 500   # the answer
    doc = await record_of(client, result.call_id)
    lines = [ln for ln in doc["transcript"] if ln["role"] == "agent"]
    assert lines[0].get("interrupted") is True
    assert [ln["text"] for ln in lines[1:]] == ["Secret menu for caller.", "Goodbye caller!"]
    assert result.frames["rx_clears"] == 1                # one barge-in, not one per key


async def test_keys_pending_when_the_caller_speaks_go_with_the_words(
        daemon: Any) -> None:
    cfg = make_config()
    client = await daemon(cfg, stub_backends(cfg, stt_text="balance please"))
    steps = [WaitForAgent(), Dtmf("*"), await say("balance"), WaitForAgent(),
             Wait(keypad.INTER_DIGIT_TIMEOUT + 0.5), Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    doc = await record_of(client, result.call_id)
    # One answer to "balance please" + "*" (the phrase wins); no late fallback for the "*".
    assert agent_said(doc) == ["Hello caller, this is Acme.", "Your balance is {balance}, caller.",
                               "Goodbye caller!"], doc["transcript"]


async def test_a_complete_key_over_the_agent_is_answered(daemon: Any) -> None:
    long_greeting = "Hello {name}. " + "Please listen carefully as our menu has changed. " * 3
    cfg = make_config(agent={**AGENT, "first_message": long_greeting})
    client = await daemon(cfg)
    steps = [WaitForAgentSpeech(delay=0.5), Dtmf("1"), WaitForAgent(), Dtmf("9"),
             WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    doc = await record_of(client, result.call_id)
    lines = [ln for ln in doc["transcript"] if ln["role"] == "agent"]
    assert lines[0].get("interrupted") is True
    # The barge-in's clear never swallows the answer to the key that caused it.
    assert [ln["text"] for ln in lines[1:]] == ["Your balance is {balance}, caller.",
                                               "Goodbye caller!"]


# -- barge_in: false ---------------------------------------------------------------------------
async def test_barge_in_false_the_agent_talks_on_and_the_utterance_is_not_answered(
        daemon: Any) -> None:
    greeting = "Hello {name}. " + "Thank you for calling the Acme company help line. " * 2
    cfg = make_config(agent={**AGENT, "first_message": greeting, "barge_in": False})
    client = await daemon(cfg)     # the stub recogniser hears "goodbye" in any speech
    steps = [WaitForAgentSpeech(delay=0.5), await say("goodbye"), WaitForAgent(),
             Wait(1.0), Dtmf("9"), WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    assert result.frames.get("rx_clears", 0) == 0
    doc = await record_of(client, result.call_id)
    lines = [ln for ln in doc["transcript"] if ln["role"] == "agent"]
    # The whole greeting played, uninterrupted; "goodbye" was not heard (the call went on to
    # the key press, which ended it).
    assert lines[0]["text"] == greeting.replace("{name}", "caller")
    assert not lines[0].get("interrupted")
    assert [ln["text"] for ln in lines[1:]] == ["Goodbye caller!"]
    assert [ln for ln in doc["transcript"] if ln["role"] == "caller" and ln["text"]] == []
    assert keys_of(doc) == ["9"]
    assert gateway_of(client).metrics.barge_ins._value.get() == 0


# -- a cloud LLM: keys pressed while it thinks are joined -------------------------------------
async def test_cloud_llm_gets_quick_keys_as_one_turn(daemon: Any) -> None:
    llm = FakeOpenAIChat()
    url = await llm.start()
    for _ in range(6):          # each answer takes a while: the model is "thinking"
        llm.replies.append(Reply("You entered your number.", delay_headers=0.8))
    cfg = make_config(llm={"provider": "openai", "api_key": llm.api_key, "base_url": url,
                           "model": "gpt-4o-mini"},
                      agent={**AGENT, "first_message": "Enter your number."})
    backends = stub_backends(cfg)
    backends.llm = FailoverLLM([create_llm(c, cfg.agent) for c in cfg.llm.chain])
    client = await daemon(cfg, backends)
    try:
        steps = [WaitForAgent(), Dtmf("1234", gap=0.15), WaitForAgent(), Wait(0.5)]
        result = await simulate_call(cfg, url_of(client), steps, timeout=60)
    finally:
        await llm.stop()
    doc = await record_of(client, result.call_id)
    assert keys_of(doc) == ["1", "2", "3", "4"]
    # The last request asked about all four keys at once, with no trace of the partial ones.
    users = [m["content"] for m in llm.bodies[-1]["messages"] if m["role"] == "user"]
    assert users == ["[The caller pressed 1234 on the keypad]"], users
    assert agent_said(doc) == ["Enter your number.", "You entered your number."]


class _SlowStt(StubStt):
    """Recognises ``text``, but only ``delay`` seconds after the utterance ended."""

    def __init__(self, text: str, delay: float) -> None:
        super().__init__(text)
        self.delay = delay

    def open_stream(self, encoding: str = "PCM16") -> Any:
        stream = super().open_stream(encoding)
        finalize, delay = stream.finalize, self.delay

        async def late() -> Any:
            result = await finalize()
            await asyncio.sleep(delay)
            return result

        stream.finalize = late   # type: ignore[method-assign]
        return stream


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_words_recognised_after_a_later_key_do_not_cancel_its_answer(
        daemon: Any, carrier: str) -> None:
    """The caller speaks, then presses 9 (a long goodbye, then hang up) before the recogniser
    has the words; they arrive while the goodbye plays: kept in the record, but they never
    cancel the goodbye (which would leave the call up with nobody hanging it up)."""
    goodbye = "Goodbye caller, thank you for calling Acme today, and have a wonderful evening!"
    rules = [{"phrases": ["balance"], "reply": "Your balance is low."},
             {"dtmf": "9", "reply": goodbye, "action": {"hangup": True}}]
    cfg = make_config(carrier, llm={"provider": "rules", "rules": rules})
    backends = stub_backends(cfg)
    backends.stt = _SlowStt("balance please", delay=3.0)   # the goodbye plays for ~4.8 s
    client = await daemon(cfg, backends)
    steps = [WaitForAgent(), await say("balance"), Wait(0.3), Dtmf("9"),
             WaitForAgent(required=False)]
    result = await simulate_call(cfg, url_of(client), steps, timeout=30,
                                 signer=signer_for(cfg))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    doc = await record_of(client, result.call_id)
    assert agent_said(doc)[-1] == goodbye, doc["transcript"]
    assert "Your balance is low." not in agent_said(doc)
    caller = [ln["text"] for ln in doc["transcript"] if ln["role"] == "caller" and ln["text"]]
    assert caller == ["balance please"]
