"""Backends that answer 200 and then misbehave, through whole simulated calls on a daemon: an
LLM streaming garbage, stalling after its first token or talking without end, a TTS answering
with JSON instead of audio. The caller always hears something within a bound, every failure is
counted in ``patterd_backend_errors_total``, and the record says what was really spoken."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from patterd.call.replies import FAILURE_APOLOGY
from patterd.simulate import TelnyxSigner, Wait, WaitForAgent, say, simulate_call
from tests.conftest import gateway_of
from tests.integration.test_cloud_calls import (metric, rms, started, stop_all, telnyx_cloud,
                                                twilio_cloud)
from tests.integration.test_live_calls import SEED, url_of
from tests.support.fakes.deepgram_listen import FakeDeepgramListen
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply
from tests.support.fakes.tts_common import SpeechRequest

pytestmark = pytest.mark.slow

GREETING = "Hello, this is Example Company."
FAST_SPEECH_MS = 25          # ms of fake audio per character: shorter calls, same checks
JSON_ERROR = json.dumps({"detail": {"status": "system_busy",
                                    "message": "The system is busy."}}).encode()


def quick(*voices: Any) -> None:
    for voice in voices:
        voice.ms_per_char = FAST_SPEECH_MS


def agent_lines(client: Any, call_id: str) -> list[str]:
    rec = gateway_of(client).registry.get(call_id)
    return [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]


def json_when(word: str) -> Any:
    """A misanswer: 200 with a JSON error body for the sentences containing ``word``."""
    def misanswer(rec: SpeechRequest, audio: bytes) -> tuple[str, bytes] | None:
        return ("application/json", JSON_ERROR) if word in rec.text else None
    return misanswer


async def one_turn(llm_reply: Reply, *, llm_options: dict[str, Any] | None = None,
                   daemon: Any) -> tuple[Any, Any, FakeOpenAIChat]:
    """A Twilio call: greeting, "when are you open", the scripted answer, a pause."""
    dg, gpt, eleven = FakeDeepgramListen(script=["when are you open"]), FakeOpenAIChat(), \
        FakeElevenLabs()
    urls = await started(dg, gpt, eleven)
    quick(eleven)
    gpt.replies.append(llm_reply)
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1],
             **(llm_options or {})},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[2]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("when are you open"), WaitForAgent(), Wait(1.0)],
            timeout=60)
    finally:
        await stop_all(dg, gpt, eleven)
    assert result.ok, (result.outcome, result.detail, result.errors)
    return client, result, gpt


async def test_a_garbage_stream_is_apologised_for_and_counted(daemon) -> None:  # type: ignore[no-untyped-def]
    """200, then HTML and proxy text as SSE events, then [DONE]: before, the turn ended in
    silence with nothing counted."""
    client, result, gpt = await one_turn(Reply(
        "We are open nine to five.", garbage_after=1,
        garbage=("<html><body><h1>502 Bad Gateway</h1></body></html>",
                 "upstream connect error", "[DONE]")), daemon=daemon)
    assert agent_lines(client, result.call_id) == [GREETING, FAILURE_APOLOGY]
    assert metric(client, "patterd_backend_errors_total", backend="llm", provider="openai") == 1
    assert len(result.turns) == 1 and result.turns[0].latency is not None
    assert result.turns[0].latency < 3.0


async def test_a_stall_after_the_first_token_keeps_what_was_said_then_apologises(daemon) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    began = loop.time()
    client, result, gpt = await one_turn(
        Reply("We are open nine to five. On Sundays we open at", stall_after=8,
              stall_seconds=30), llm_options={"inter_token_timeout": 0.5}, daemon=daemon)
    lines = agent_lines(client, result.call_id)
    assert lines == [GREETING, f"We are open nine to five. {FAILURE_APOLOGY}"], lines
    assert metric(client, "patterd_backend_errors_total", backend="llm", provider="openai") == 1
    assert gpt.requests[0].disconnected.is_set()          # we dropped the stalled stream
    assert loop.time() - began < 20                       # not the server's 30 s stall


async def test_an_endless_answer_is_cut_to_its_whole_sentences(daemon) -> None:  # type: ignore[no-untyped-def]
    client, result, gpt = await one_turn(
        Reply([" We are open", " nine to five."], endless=True),
        llm_options={"max_reply_chars": 120}, daemon=daemon)
    lines = agent_lines(client, result.call_id)
    answer = lines[-1]
    assert len(lines) == 2 and answer.startswith("We are open nine to five.")
    assert len(answer) <= 120 and answer.endswith("five.")           # whole sentences only
    assert answer.count("We are open nine to five.") == 120 // len(" We are open nine to five.")
    assert metric(client, "patterd_backend_errors_total", backend="llm", provider="openai") == 1
    assert gpt.requests[0].disconnected.is_set() and not gpt.requests[0].completed


async def test_a_tts_json_body_is_spoken_by_the_next_provider(daemon) -> None:  # type: ignore[no-untyped-def]
    """Telnyx: ElevenLabs answers the answer's sentence with 200 + JSON; Deepgram Aura speaks
    it, nothing of the JSON reaches the caller, the transcript has the sentence once."""
    dg, gpt, eleven, aura = (FakeDeepgramListen(script=["when are you open"]), FakeOpenAIChat(),
                             FakeElevenLabs(), FakeDeepgramSpeak())
    urls = await started(dg, gpt, eleven, aura)
    quick(eleven, aura)
    gpt.replies.append(Reply("We are open nine to five."))
    eleven.misanswer = json_when("nine to five")
    cfg = telnyx_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[2],
             "failover": [{"provider": "deepgram", "api_key": aura.api_key,
                           "base_url": urls[3]}]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("when are you open"), WaitForAgent(), Wait(0.5)],
            signer=TelnyxSigner(SEED), timeout=60)
    finally:
        await stop_all(dg, gpt, eleven, aura)
    assert result.ok, (result.outcome, result.detail, result.errors)
    assert agent_lines(client, result.call_id) == [GREETING, "We are open nine to five."]
    assert [r.text for r in aura.requests] == ["We are open nine to five."]
    assert aura.requests[0].completed
    # Two attempts of ElevenLabs failed: its socket (the answer streamed in), then its HTTP.
    assert metric(client, "patterd_backend_errors_total", backend="tts",
                  provider="elevenlabs") == 2
    # The caller heard Aura's tone for the answer: the JSON bytes were never sent.
    assert JSON_ERROR not in result.agent_audio and rms(result.agent_audio) > 1000


async def test_a_sentence_every_tts_provider_fails_is_not_in_the_transcript(daemon) -> None:  # type: ignore[no-untyped-def]
    """No offline last resort here: ElevenLabs and Aura both answer one sentence with JSON.
    The sentences around it are spoken and recorded; it is not."""
    dg, gpt, eleven, aura = (FakeDeepgramListen(script=["when are you open", "no thanks"]),
                             FakeOpenAIChat(), FakeElevenLabs(), FakeDeepgramSpeak())
    urls = await started(dg, gpt, eleven, aura)
    quick(eleven, aura)
    gpt.replies.append(Reply("Let me see. Our hours are nine to five. Anything else?"))
    gpt.replies.append(Reply("Goodbye."))
    eleven.misanswer = aura.misanswer = json_when("hours")
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[2],
             "failover": [{"provider": "deepgram", "api_key": aura.api_key,
                           "base_url": urls[3]}]})
    client = await daemon(cfg, real=True)
    gateway_of(client).backends.tts.last_resort = None      # espeak would speak it
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("when are you open"), WaitForAgent(),
            await say("no thanks"), WaitForAgent(), Wait(0.5)], timeout=60)
    finally:
        await stop_all(dg, gpt, eleven, aura)
    assert result.ok, (result.outcome, result.detail, result.errors)
    assert agent_lines(client, result.call_id) == [GREETING, "Let me see. Anything else?",
                                                   "Goodbye."]
    for provider, attempts in (("elevenlabs", 2), ("deepgram", 1)):   # socket, then HTTP
        assert metric(client, "patterd_backend_errors_total", backend="tts",
                      provider=provider) == attempts
    # The model is told what the caller heard, not the sentence that was never spoken.
    said = [m["content"] for m in gpt.bodies[1]["messages"] if m["role"] == "assistant"]
    assert said == [GREETING, "Let me see. Anything else?"]
