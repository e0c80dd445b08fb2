"""The record is the account of the call, however the agent's speech ends: an utterance that
started playing is in the transcript, cut to the words the caller heard and marked
``interrupted`` when it was cut — by a barge-in, a key, the caller hanging up, an admin
transfer, a drain's goodbye or a failure inside the call's media loop — and kept whole when a
failure hit the reply task while it played. Whole simulated calls on both carriers (stub TTS:
60 ms of audio per character, so the greeting lasts exactly ``GREETING_SECONDS``)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from patterd.call import replies as replies_module
from patterd.call.session import CallSession
from patterd.carriers.base import DtmfIn
from patterd.config import Config
from patterd.server import DRAIN_GOODBYE, drain
from patterd.simulate import (CallResult, Dtmf, TelnyxSigner, Wait, WaitForAgent,
                              WaitForAgentSpeech, say, simulate_call)
from tests.conftest import config, gateway_of, telnyx_raw, twilio_raw
from tests.integration.test_live_calls import SEED, url_of
from tests.support.media_client import until
from tests.support.net import free_port

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GREETING = "Thanks for calling Example Company, we are glad to hear from you. How can I help?"
WORDS = GREETING.split()
GREETING_SECONDS = 0.06 * len(GREETING)      # the stub TTS
SLACK = 0.25        # seconds between the daemon's playback clock and the caller's ear
RULES = {"provider": "rules", "rules": [
    {"dtmf": "1", "reply": "One moment."},
    {"dtmf": "23", "reply": "Two three."},     # a "2" alone waits for more keys
    {"phrases": ["goodbye"], "dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}},
], "fallback": "Sorry?"}


def make_config(carrier: str, **extra: Any) -> Config:
    sections = {"agent": {"first_message": GREETING, "silence_timeout": 60,
                          "transfer_targets": {"sales": "+15550001001"}},
                "llm": RULES, "admin": {"token": TOKEN}, **extra}
    if carrier == "twilio":
        raw = twilio_raw(**sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    else:
        raw = telnyx_raw(TelnyxSigner(SEED).public_key_b64, **sections)
        raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}/v2"
    return config(raw)


async def call(client: Any, cfg: Config, steps: list[Any]) -> asyncio.Task[CallResult]:
    signer = TelnyxSigner(SEED) if cfg.carrier.provider == "telnyx" else None
    return asyncio.create_task(simulate_call(cfg, url_of(client), steps, signer=signer,
                                             timeout=60))


async def ended_record(client: Any, call_id: str) -> dict[str, Any]:
    """The call's record from the admin API once the call has ended."""
    for _ in range(300):
        resp = await client.get(f"/v1/calls/{call_id}", headers=AUTH)
        doc = await resp.json()
        if resp.status == 200 and doc.get("ended_at") is not None:
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"the call {call_id} did not end")


async def greeting_heard_for(client: Any, seconds: float) -> str:
    """Once the greeting has been playing for ``seconds``: the call's id."""
    gw = gateway_of(client)
    await until(lambda: any(s.playout.first_frame_at for s in gw.sessions), 10)
    session = next(iter(gw.sessions))
    await asyncio.sleep(seconds)
    return session.call_id


def assert_cut_greeting(doc: dict[str, Any], result: CallResult) -> None:
    """The first agent line is the greeting cut to what the caller heard: its first words,
    ``interrupted``, and no word the caller had not heard yet (a message that followed the
    cut at once is a line of its own for the simulated caller: a clear ends the line it cut)."""
    line = next(ln for ln in doc["transcript"] if ln["role"] == "agent")
    assert line.get("interrupted") is True, doc["transcript"]
    assert "playing" not in line and "seconds" not in line
    words = line["text"].split()
    assert words and words == WORDS[:len(words)], line["text"]      # its first words
    heard = next(ln for ln in result.lines if ln.who == "agent")     # the caller's ear
    heard_seconds = heard.end - heard.start
    assert heard_seconds < GREETING_SECONDS - 0.5, heard_seconds      # it was cut
    # No more words than were played by then (the record keeps whole words only) and no
    # fewer than the audio the caller got (on a loaded CPU the daemon may fall behind, and
    # the line's span then holds gaps the caller heard as silence).
    assert len(words) <= math.floor(len(WORDS) * (heard_seconds + SLACK) / GREETING_SECONDS)
    voiced = min(heard_seconds, heard.voiced)
    assert len(words) >= math.floor(len(WORDS) * (voiced - SLACK) / GREETING_SECONDS), \
        (line["text"], heard_seconds, heard.voiced)


def agent_texts(doc: dict[str, Any]) -> list[str]:
    return [ln["text"] for ln in doc["transcript"] if ln["role"] == "agent"]


CARRIERS = pytest.mark.parametrize("carrier", ["twilio", "telnyx"])


@CARRIERS
async def test_the_caller_hanging_up_mid_greeting_keeps_the_heard_words(
        daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier)
    client = await daemon(cfg)
    result = await (await call(client, cfg, [WaitForAgentSpeech(delay=1.5)]))
    assert result.outcome == "completed", (result.outcome, result.detail)
    doc = await ended_record(client, result.call_id)
    assert_cut_greeting(doc, result)
    assert len(agent_texts(doc)) == 1 and doc["outcome"] == "completed"


@CARRIERS
async def test_a_barge_in_keeps_the_heard_words(daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier)
    client = await daemon(cfg)      # the stub recogniser hears "goodbye"
    result = await (await call(client, cfg, [WaitForAgentSpeech(delay=1.2), await say("goodbye"),
                                            Wait(1.0), WaitForAgent(required=False)]))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    doc = await ended_record(client, result.call_id)
    assert_cut_greeting(doc, result)
    assert agent_texts(doc)[1:] == ["Goodbye!"]


@CARRIERS
async def test_a_key_keeps_the_heard_words(daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier)
    client = await daemon(cfg)
    # The "2" stops the agent at once; the answer (the fallback) comes after 2 s of quiet.
    result = await (await call(client, cfg, [WaitForAgentSpeech(delay=1.2), Dtmf("2"),
                                            Wait(1.0), WaitForAgent(), Dtmf("9"),
                                            WaitForAgent(required=False)]))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    doc = await ended_record(client, result.call_id)
    assert_cut_greeting(doc, result)
    assert agent_texts(doc)[1:] == ["Sorry?", "Goodbye!"]
    assert doc["dtmf"] == "29"


@CARRIERS
async def test_an_admin_transfer_mid_greeting_keeps_the_heard_words(
        daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier)
    client = await daemon(cfg)
    live = await call(client, cfg, [Wait(30)])
    call_id = await greeting_heard_for(client, 1.3)
    resp = await client.post(f"/v1/calls/{call_id}/transfer", json={"to": "sales"},
                             headers=AUTH)
    assert resp.status == 200, await resp.text()
    result = await live
    assert result.outcome == "transferred", (result.outcome, result.detail)
    doc = await ended_record(client, call_id)
    assert_cut_greeting(doc, result)
    assert doc["outcome"] == "transferred" and len(agent_texts(doc)) == 1


@CARRIERS
async def test_a_drains_goodbye_cuts_the_agent_and_keeps_the_heard_words(
        daemon: Any, carrier: str) -> None:
    cfg = make_config(carrier, server={"drain_timeout": 0})
    client = await daemon(cfg)
    live = await call(client, cfg, [Wait(30)])
    call_id = await greeting_heard_for(client, 1.3)
    await drain(gateway_of(client))      # out of time at once: the goodbye, then a hang-up
    result = await live
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    doc = await ended_record(client, call_id)
    assert_cut_greeting(doc, result)   # the goodbye is a line of its own
    goodbye = [ln for ln in doc["transcript"] if ln["role"] == "agent"][1]
    assert goodbye["text"] == DRAIN_GOODBYE and not goodbye.get("interrupted")
    heard = [ln for ln in result.lines if ln.who == "agent"]
    assert len(heard) == 2 and heard[0].interrupted and not heard[1].interrupted
    assert doc["outcome"] == "drained"


@CARRIERS
async def test_a_failure_in_the_media_loop_ends_the_call_with_the_heard_words(
        daemon: Any, carrier: str, monkeypatch: Any) -> None:
    """A bug while handling one frame (here: a key) ends that call — hung up through the
    carrier, counted — and its record keeps what the caller had heard."""
    original = CallSession.on_event

    def on_event(self: CallSession, event: Any) -> None:
        if isinstance(event, DtmfIn):
            raise RuntimeError("a bug while handling a key")
        original(self, event)

    monkeypatch.setattr(CallSession, "on_event", on_event)
    cfg = make_config(carrier)
    client = await daemon(cfg)
    result = await (await call(client, cfg, [WaitForAgentSpeech(delay=1.2), Dtmf("1"),
                                            Wait(10)]))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    doc = await ended_record(client, result.call_id)
    assert_cut_greeting(doc, result)
    assert doc["outcome"] == "failed"
    assert gateway_of(client).supervisor.errors.get("media") == 1


@CARRIERS
async def test_a_failure_in_the_reply_task_keeps_what_it_said(
        daemon: Any, carrier: str, monkeypatch: Any) -> None:
    """The greeting's reply task fails while the greeting plays: the greeting still plays to
    its end and is in the record whole; the call goes on (a key is answered)."""
    real_played = replies_module.played
    failures: list[int] = []

    async def played(utterances: list[Any], timeout: float) -> bool:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in the reply task")
        return await real_played(utterances, timeout)

    monkeypatch.setattr(replies_module, "played", played)
    cfg = make_config(carrier)
    client = await daemon(cfg)
    result = await (await call(client, cfg, [WaitForAgent(), Dtmf("9"),
                                            WaitForAgent(required=False)]))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    doc = await ended_record(client, result.call_id)
    greeting = next(ln for ln in doc["transcript"] if ln["role"] == "agent")
    assert greeting["text"] == GREETING and not greeting.get("interrupted")
    assert agent_texts(doc) == [GREETING, "Goodbye!"]
    assert gateway_of(client).supervisor.errors.get("call") == 1


async def test_a_call_of_several_streams_has_each_line_once(daemon: Any) -> None:
    """Twilio re-attaches the stream after the agent sends tones: the record, written as the
    call goes by both streams' sessions, holds every line once, in order."""
    cfg = make_config("twilio", llm={"provider": "rules", "rules": [
        {"dtmf": "5", "reply": "Sending tones.", "action": {"send_dtmf": "123#"}},
        {"dtmf": "9", "reply": "Goodbye!", "action": {"hangup": True}}],
        "fallback": "Sorry?"})
    client = await daemon(cfg)
    result = await (await call(client, cfg, [WaitForAgent(), Dtmf("5"), WaitForAgent(),
                                            Wait(1.0), Dtmf("9"),
                                            WaitForAgent(required=False)]))
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.detail)
    assert len(result.stream_ids) == 2
    doc = await ended_record(client, result.call_id)
    assert [(ln["role"], ln["text"], ln.get("dtmf", "")) for ln in doc["transcript"]] == [
        ("agent", GREETING, ""), ("caller", "", "5"), ("agent", "Sending tones.", ""),
        ("caller", "", "9"), ("agent", "Goodbye!", "")]
    assert len(doc["turns"]) == 2
