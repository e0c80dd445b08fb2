"""Whole simulated calls through the cloud providers, each played by a local server that
speaks the provider's wire protocol: tool rounds, failover in mid-turn, barge-in cancelling
the LLM and TTS streams at the provider, usage and cost in the call record."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from patterd.call.session import FAILURE_APOLOGY
from patterd.simulate import (TelnyxSigner, Wait, WaitForAgent, WaitForAgentSpeech, say,
                              simulate_call)
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_live_calls import SEED, free_port, url_of
from tests.support.fakes.anthropic_messages import FakeAnthropicMessages
from tests.support.fakes.cartesia import FakeCartesia
from tests.support.fakes.deepgram_listen import FakeDeepgramListen
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply, ToolUse
from tests.support.fakes.openai_transcribe import FakeOpenAITranscribe
from tests.support.fakes.user_endpoint import UserEndpoint

pytestmark = pytest.mark.slow

AGENT = {"first_message": "Hello, this is Example Company.",
         "system_prompt": "You are the receptionist. The caller is {name}.",
         "variables": {"name": "Alex"},
         "transfer_targets": {"billing": "+15550001001"}}


def twilio_cloud(**sections: Any):  # type: ignore[no-untyped-def]
    raw = twilio_raw(agent=AGENT, vad={"provider": "energy"}, **sections)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


def telnyx_cloud(**sections: Any):  # type: ignore[no-untyped-def]
    raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, agent=AGENT,
                     vad={"provider": "energy"}, **sections)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0


def metric(client: Any, name: str, **labels: str) -> float:
    """The value of one sample of the daemon's /metrics."""
    text = gateway_of(client).metrics.exposition()[0].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def started(*fakes: Any) -> list[str]:
    return [await f.start() for f in fakes]


async def stop_all(*fakes: Any) -> None:
    for f in fakes:
        await f.stop()


async def test_twilio_deepgram_openai_tools_elevenlabs(daemon) -> None:  # type: ignore[no-untyped-def]
    """μ-law end to end: Deepgram hears the carrier's bytes, ElevenLabs' μ-law goes out
    untouched; a user tool's result feeds a second LLM round; end_call hangs up."""
    stt = FakeDeepgramListen(script=["where is my order forty two"])
    llm = FakeOpenAIChat()
    tts = FakeElevenLabs()
    tool = UserEndpoint(secret="tool-secret",
                        handler=lambda req: {"order": "42", "status": "shipped"})
    stt_url, llm_url, tts_url, tool_url = await started(stt, llm, tts, tool)
    llm.replies.append(Reply("Let me check that.", tool_calls=[
        ToolUse("order_status", {"order": "42"})], input_tokens=120, output_tokens=12,
        cached_tokens=100))
    llm.replies.append(Reply("Your order has shipped. Goodbye!",
                             tool_calls=[ToolUse("end_call", {})], input_tokens=160,
                             output_tokens=9))
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": stt.api_key, "base_url": stt_url},
        llm={"provider": "openai", "api_key": llm.api_key, "base_url": llm_url,
             "model": "gpt-4o-mini", "tools": [{
                 "name": "order_status", "description": "Order status by number",
                 "url": f"{tool_url}/order", "allow_private": True, "secret": "tool-secret",
                 "parameters": {"properties": {"order": {"type": "string"}}}}]},
        tts={"provider": "elevenlabs", "api_key": tts.api_key, "base_url": tts_url})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("where is my order forty two"), WaitForAgent(),
            Wait(3.0)], timeout=60)
    finally:
        await stop_all(stt, llm, tts, tool)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail, result.errors)
    # Deepgram got the carrier's μ-law as is.
    assert stt.sessions and stt.sessions[0].query["encoding"] == "mulaw"
    assert stt.sessions[0].query["sample_rate"] == "8000"
    # Round 1 had the system prompt with its variable filled and the caller's words.
    first = llm.bodies[0]
    assert first["messages"][0] == {"role": "system",
                                    "content": "You are the receptionist. The caller is Alex."}
    assert first["messages"][-1]["content"] == "where is my order forty two"
    assert {t["function"]["name"] for t in first["tools"]} >= {
        "order_status", "transfer_call", "end_call", "send_dtmf"}
    # The tool endpoint was called (signed, it verifies), and its answer went to round 2.
    assert [r.json["name"] for r in tool.requests] == ["order_status"]
    assert tool.requests[0].json["arguments"] == {"order": "42"}
    assert tool.requests[0].json["call"]["call_id"] == result.call_id
    tool_msg = llm.bodies[1]["messages"][-1]
    assert tool_msg["role"] == "tool" and '"shipped"' in tool_msg["content"]
    # Every sentence was spoken by ElevenLabs in μ-law, and the caller heard it.
    spoken = [r.text for r in tts.requests]
    assert spoken[0] == "Hello, this is Example Company."
    assert "Let me check that." in spoken and "Your order has shipped." in spoken
    assert all(r.query.get("output_format") == "ulaw_8000" for r in tts.requests)
    assert rms(result.agent_audio) > 1000
    # The record: transcript, tokens, STT seconds, TTS characters, and their cost.
    rec = gateway_of(client).registry.get(result.call_id)
    agent = " ".join(ln["text"] for ln in rec.transcript if ln["role"] == "agent")
    assert "Your order has shipped." in agent
    assert rec.usage.llm_input_tokens == 280 and rec.usage.llm_output_tokens == 21
    assert rec.usage.llm_cached_tokens == 100
    assert 1.0 < rec.usage.stt_seconds < 6.0
    assert rec.usage.tts_chars == sum(len(t) for t in spoken)
    assert rec.cost["llm"] > 0 and rec.cost["tts"] > 0 and rec.cost["stt"] > 0
    # Deepgram's speech_final (300 ms) ended the turn before our VAD's 500 ms of silence.
    n = metric(client, "patterd_turn_latency_seconds_count", stage="endpointing")
    lag = metric(client, "patterd_turn_latency_seconds_sum", stage="endpointing")
    assert n == 1 and lag < 0.49, lag
    assert any(e["type"] == "hangup" for e in rec.events)


async def test_telnyx_pcma_openai_stt_anthropic_cartesia(daemon) -> None:  # type: ignore[no-untyped-def]
    """A-law caller leg: OpenAI transcribes the VAD-cut utterance (as PCM WAV), Anthropic
    answers with a transfer, Cartesia speaks the outbound stream's μ-law directly."""
    stt = FakeOpenAITranscribe(script=["billing please"])
    llm = FakeAnthropicMessages()
    tts = FakeCartesia()
    stt_url, llm_url, tts_url = await started(stt, llm, tts)
    llm.replies.append(Reply("Transferring you to billing.", tool_calls=[
        ToolUse("transfer_call", {"target": "billing"})]))
    cfg = telnyx_cloud(
        stt={"provider": "openai", "api_key": stt.api_key, "base_url": stt_url},
        llm={"provider": "anthropic", "api_key": llm.api_key, "base_url": llm_url},
        tts={"provider": "cartesia", "api_key": tts.api_key, "base_url": tts_url,
             "voice": "a0e99841-438c-4a64-b679-ae501e7d6091"})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("billing please"), WaitForAgent(), Wait(2.0)],
            signer=TelnyxSigner(SEED), codec="PCMA", timeout=60)
    finally:
        await stop_all(stt, llm, tts)
    assert result.outcome == "transferred", (result.outcome, result.detail, result.errors)
    assert len(stt.requests) == 1
    body = llm.bodies[0]
    assert body["system"][0]["text"].endswith("The caller is Alex.")
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}   # prompt caching
    assert body["messages"][-1]["role"] == "user"
    # We asked Telnyx for a PCMU outbound stream, so Cartesia speaks μ-law for it.
    assert [r.params["output_format"]["encoding"] for r in tts.requests] == ["pcm_mulaw"] * 2
    # The greeting (a fixed message) over HTTP, the answer streamed into the WebSocket.
    assert [r.path for r in tts.requests] == ["/tts/bytes", "/tts/websocket"]
    assert tts.requests[0].params["voice"] == "a0e99841-438c-4a64-b679-ae501e7d6091"
    assert tts.requests[1].text == "Transferring you to billing."
    transfers = [a for a in result.actions if a.action == "transfer"]
    assert transfers and transfers[0].fields.get("to") == "+15550001001"
    assert rms(result.agent_audio) > 1000


async def test_failover_in_mid_turn_on_every_layer(daemon) -> None:  # type: ignore[no-untyped-def]
    """Deepgram refuses the key → OpenAI STT hears the utterance; OpenAI's stream breaks
    after two events → Anthropic answers the same turn; ElevenLabs answers 500 → Deepgram
    Aura speaks. The caller hears the answer; every failure is counted."""
    dg = FakeDeepgramListen(script=["hello"])
    dg.refuse = (401, "INVALID_AUTH", "Invalid credentials.")
    whisper = FakeOpenAITranscribe(script=["what are your hours"])
    gpt = FakeOpenAIChat()
    claude = FakeAnthropicMessages()
    eleven = FakeElevenLabs()
    aura = FakeDeepgramSpeak()
    urls = await started(dg, whisper, gpt, claude, eleven, aura)
    gpt.replies.append(Reply("We are open nine to five every day.", error_after=2))
    claude.replies.append(Reply("We are open nine to five."))
    eleven.fail_status, eleven.fail_times = 500, -1
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0],
             "failover": [{"provider": "openai", "api_key": whisper.api_key,
                           "base_url": urls[1]}]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[2],
             "failover": [{"provider": "anthropic", "api_key": claude.api_key,
                           "base_url": urls[3]}]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[4],
             "failover": [{"provider": "deepgram", "api_key": aura.api_key,
                           "base_url": urls[5]}]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("what are your hours"), WaitForAgent()], timeout=60)
    finally:
        await stop_all(dg, whisper, gpt, claude, eleven, aura)
    assert result.ok, (result.outcome, result.detail, result.errors)
    rec = gateway_of(client).registry.get(result.call_id)
    caller = [ln["text"] for ln in rec.transcript if ln["role"] == "caller"]
    agent = [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]
    assert caller == ["what are your hours"]
    assert any("We are open nine to five." in a for a in agent), agent
    assert len(result.turns) == 1 and result.turns[0].latency is not None
    assert [r.text for r in aura.requests][-1] == "We are open nine to five."
    assert metric(client, "patterd_backend_errors_total", backend="stt",
                  provider="deepgram") == 1
    assert metric(client, "patterd_backend_errors_total", backend="llm",
                  provider="openai") == 1
    assert metric(client, "patterd_backend_errors_total", backend="tts",
                  provider="elevenlabs") >= 2          # the greeting and the answer
    for stage in ("stt", "llm_first_token", "tts_first_byte", "response"):
        assert metric(client, "patterd_turn_latency_seconds_count", stage=stage) >= 1, stage
    # Each provider's work is priced at its own rate (the failover ones, not the primaries).
    assert set(rec.usage.stt_by) == {"openai"} and set(rec.usage.tts_by) == {"deepgram"}
    assert set(rec.usage.llm_by) == {"anthropic"}
    aura_chars = sum(len(r.text) for r in aura.requests)
    assert rec.usage.tts_by["deepgram"] == aura_chars
    assert rec.cost["tts"] == pytest.approx(round(aura_chars / 1000 * 0.030, 6))


async def test_barge_in_cancels_llm_and_tts_at_the_provider(daemon) -> None:  # type: ignore[no-untyped-def]
    """The agent is still generating and speaking a long answer when the caller talks over
    it: both provider streams are closed from our side at once, and the next turn works."""
    dg = FakeDeepgramListen(script=["tell me a long story", "stop"])
    gpt = FakeOpenAIChat()
    gpt.event_delay = 0.25                       # a slow model: one word every 250 ms
    eleven = FakeElevenLabs()
    eleven.speed = 1.0                           # audio at real time
    urls = await started(dg, gpt, eleven)
    story = " ".join(["Once upon a time there was a gateway."] * 8)
    gpt.replies.append(Reply(story))
    gpt.replies.append(Reply("Okay, I stopped."))
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[2]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("tell me a long story"), WaitForAgentSpeech(delay=0.8),
            await say("stop"), Wait(1.0), WaitForAgent()], timeout=60)
        story_request = gpt.requests[0]
        for _ in range(400):     # the fake notices at its next write (or within 20 s ends)
            if story_request.disconnected.is_set() or story_request.completed:
                break
            await asyncio.sleep(0.05)
    finally:
        await stop_all(dg, gpt, eleven)
    assert result.ok, (result.outcome, result.detail, result.errors)
    assert story_request.disconnected.is_set()          # we closed the LLM stream
    assert not story_request.completed                  # before the model had finished
    # The story was streamed into ElevenLabs' socket as it was written; the barge-in closed
    # the socket of the sentence being spoken (and of those ahead), before their end.
    story_tts = [r for r in eleven.requests if "Once upon" in r.text]
    assert story_tts and all(r.path.endswith("/stream-input") for r in story_tts)
    assert story_tts[-1].disconnected.is_set()
    assert not story_tts[-1].completed                   # synthesis stopped at the provider
    assert result.barge_ins and result.barge_ins[0].clear_latency is not None
    # The model remembers only what the caller heard of the story.
    second = gpt.bodies[1]["messages"]
    heard = [m["content"] for m in second if m["role"] == "assistant"][-1]
    assert heard and len(heard) < len(story)
    assert second[-1]["content"] == "stop"
    rec = gateway_of(client).registry.get(result.call_id)
    assert any(ln["text"] == "Okay, I stopped." for ln in rec.transcript)


async def test_every_provider_failing_keeps_the_call_up(daemon) -> None:  # type: ignore[no-untyped-def]
    """No LLM answers: the caller hears the apology; no TTS answers: the offline voice
    speaks. The call goes on and ends normally."""
    dg = FakeDeepgramListen(script=["hello there", "goodbye"])
    gpt = FakeOpenAIChat()
    claude = FakeAnthropicMessages()
    eleven = FakeElevenLabs()
    urls = await started(dg, gpt, claude, eleven)
    gpt.replies.append(Reply(status=500, error_type="server_error",
                             error_message="The server had an error"))
    claude.replies.append(Reply(status=529, error_type="overloaded_error",
                                error_message="Overloaded"))
    gpt.replies.append(Reply("Still here."))
    eleven.fail_status, eleven.fail_times = 503, -1
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1],
             "failover": [{"provider": "anthropic", "api_key": claude.api_key,
                           "base_url": urls[2]}]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[3]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("hello there"), WaitForAgent(),
            await say("goodbye"), WaitForAgent()], timeout=60)
    finally:
        await stop_all(dg, gpt, claude, eleven)
    assert result.ok, (result.outcome, result.detail, result.errors)
    rec = gateway_of(client).registry.get(result.call_id)
    agent = [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]
    assert FAILURE_APOLOGY in agent and "Still here." in agent, agent
    assert rms(result.agent_audio) > 500               # espeak spoke every line
    assert metric(client, "patterd_backend_errors_total", backend="llm",
                  provider="anthropic") == 1
    assert metric(client, "patterd_backend_errors_total", backend="tts",
                  provider="elevenlabs") >= 3


async def test_a_call_recovers_from_a_dropped_stream_and_a_failed_provider(daemon) -> None:  # type: ignore[no-untyped-def]
    """Deepgram closes the live stream with 1011 in the middle of the first utterance, and
    OpenAI fails the first turn: the utterance is still recognised (a reopened socket hears
    it again), Anthropic answers that turn, and the next turn is OpenAI's again — the call
    never goes deaf nor stays on the fallback."""
    dg = FakeDeepgramListen(script=["what are your hours", "and on sundays"])   # per socket
    dg.close_after_seconds, dg.close_times = 0.4, 1
    gpt, claude, eleven = FakeOpenAIChat(), FakeAnthropicMessages(), FakeElevenLabs()
    urls = await started(dg, gpt, claude, eleven)
    eleven.ms_per_char = 25
    gpt.replies += [Reply("We are open nine to five.", error_after=1),
                    Reply("On Sundays we are closed.")]
    claude.replies.append(Reply("We are open from nine to five."))
    cfg = twilio_cloud(
        stt={"provider": "deepgram", "api_key": dg.api_key, "base_url": urls[0]},
        llm={"provider": "openai", "api_key": gpt.api_key, "base_url": urls[1],
             "failover": [{"provider": "anthropic", "api_key": claude.api_key,
                           "base_url": urls[2]}]},
        tts={"provider": "elevenlabs", "api_key": eleven.api_key, "base_url": urls[3]})
    client = await daemon(cfg, real=True)
    try:
        result = await simulate_call(cfg, url_of(client), [
            WaitForAgent(), await say("what are your hours"), WaitForAgent(),
            await say("and on sundays"), WaitForAgent(), Wait(0.5)], timeout=60)
    finally:
        await stop_all(dg, gpt, claude, eleven)
    assert result.ok, (result.outcome, result.detail, result.errors)
    rec = gateway_of(client).registry.get(result.call_id)
    caller = [ln["text"] for ln in rec.transcript if ln["role"] == "caller"]
    agent = [ln["text"] for ln in rec.transcript if ln["role"] == "agent"]
    assert caller == ["what are your hours", "and on sundays"]
    assert agent[1:] == ["We are open from nine to five.", "On Sundays we are closed."]
    assert dg.sessions[0].close_code == 1011 and len(dg.sessions) == 2   # reopened once
    assert len(gpt.requests) == 2 and len(claude.requests) == 1   # back to the first
    assert metric(client, "patterd_backend_errors_total", backend="stt",
                  provider="deepgram") == 1
    assert metric(client, "patterd_backend_errors_total", backend="llm",
                  provider="openai") == 1
