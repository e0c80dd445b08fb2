"""A turn whose backends fail: what was spoken is what the transcript gets. A sentence no TTS
provider could speak is left out (and not cached as silence), an answer cut at its length cap
drops its unfinished sentence, and a stall mid-answer keeps the sentences already spoken. Real
providers against their local fakes, a real playout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from patterd.audio.codecs import get_codec
from patterd.backends import create_tts
from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverLLM, FailoverTTS
from patterd.backends.llm import create_llm
from patterd.backends.llm.base import LLM, LLMEvent, Message, TextChunk, ToolSpec, Truncated
from patterd.call.playout import Playout
from patterd.call.turns import SpeechCache, Speaker, run_turn
from patterd.carriers.twilio.media import TwilioMedia
from patterd.config.model import BackendConfig
from patterd.ops.metrics import Metrics
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply
from tests.support.fakes.tts_common import SpeechRequest

SYSTEM = Message("system", "You are a phone agent.")
JSON_ERROR = json.dumps({"detail": {"status": "error", "message": "busy"}}).encode()


class Model(LLM):
    """Answers with a fixed list of events."""

    name = "scripted"

    def __init__(self, events: list[LLMEvent]) -> None:
        self.events = events

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        for event in self.events:
            yield event


def proto() -> TwilioMedia:
    t = TwilioMedia()
    t.parse(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw"}}}))
    return t


async def silent(frame: str) -> None:
    """The carrier's side of the socket: nothing to do here."""


@pytest.fixture(params=["http", "websocket"])
async def voices(request: pytest.FixtureRequest
                 ) -> AsyncIterator[tuple[FakeElevenLabs, FakeDeepgramSpeak, FailoverTTS]]:
    """ElevenLabs (over HTTP, sentence by sentence, or over its WebSocket, the answer's text
    streamed in) then Deepgram Aura, no offline last resort: both can fail a sentence."""
    eleven, aura = FakeElevenLabs(), FakeDeepgramSpeak()
    urls = [await eleven.start(), await aura.start()]
    tts = FailoverTTS([create_tts(BackendConfig("elevenlabs", api_key=eleven.api_key,
                                                base_url=urls[0],
                                                options={"transport": request.param})),
                       create_tts(BackendConfig("deepgram", api_key=aura.api_key,
                                                base_url=urls[1]))])
    await tts.start()
    yield eleven, aura, tts
    await tts.close()
    await eleven.stop()
    await aura.stop()


def speaker_on(tts: FailoverTTS, cache: SpeechCache | None = None) -> tuple[Speaker, Playout]:
    playout = Playout(proto(), silent)
    return Speaker(tts, get_codec("PCMU"), playout, cache or SpeechCache(), Metrics()), playout


def bad_for(word: str) -> Any:
    def misanswer(rec: SpeechRequest, audio: bytes) -> tuple[str, bytes] | None:
        return ("application/json", JSON_ERROR) if word in rec.text else None
    return misanswer


async def test_a_sentence_no_provider_could_speak_is_not_claimed(voices: Any) -> None:
    eleven, aura, tts = voices
    eleven.misanswer = aura.misanswer = bad_for("hours")
    speaker, playout = speaker_on(tts)
    history = [SYSTEM, Message("user", "when are you open")]
    model = Model([TextChunk("Good question. We are open"), TextChunk(" long hours. Bye now.")])
    result = await run_turn(model, speaker, history, user_text="when are you open",
                            dtmf=None, metrics=Metrics())
    assert [u.text for u in speaker.spoken] == ["Good question.", "Bye now."]
    assert result.text == "Good question. Bye now."
    if not tts.streams_text:   # a streamed sentence without audio never became an utterance
        unspoken = [u for u in result.utterances if not u.text]
        assert len(unspoken) == 1 and unspoken[0].queued == 0 and unspoken[0].done.is_set()
    else:
        assert result.utterances == speaker.spoken
    assert all(u.queued > 0 for u in speaker.spoken)          # each of them went out
    await playout.close()


async def test_a_failed_sentence_is_not_cached_as_silence(voices: Any) -> None:
    eleven, aura, tts = voices
    eleven.misanswer = aura.misanswer = bad_for("Welcome")
    eleven.misanswer_times = aura.misanswer_times = 1
    if tts.providers[0].sentence_over_socket:
        eleven.misanswer_times = 2              # its socket, then its HTTP
    cache = SpeechCache()
    speaker, playout = speaker_on(tts, cache)
    first = await speaker.say("Welcome to Example Company.")
    assert first.queued == 0 and speaker.spoken == []
    again = await speaker.say("Welcome to Example Company.")   # the providers recovered
    assert again.queued > 0 and speaker.spoken == [again]
    assert again.text == "Welcome to Example Company."
    await playout.close()


async def test_the_next_provider_speaks_a_sentence_the_first_answered_with_json(
        voices: Any) -> None:
    eleven, aura, tts = voices
    eleven.misanswer = bad_for("hours")
    speaker, playout = speaker_on(tts)
    utt = await speaker.say("Those are our hours.")
    assert speaker.spoken == [utt] and utt.text == "Those are our hours."
    assert utt.queued == len(aura.audio("Those are our hours.", "mulaw", 8000))
    assert speaker.tts_by == {"deepgram": len("Those are our hours.")}
    await playout.close()


async def test_an_answer_cut_at_the_cap_speaks_only_whole_sentences(voices: Any) -> None:
    _, _, tts = voices
    speaker, playout = speaker_on(tts)
    model = Model([TextChunk("One sentence. Another one. And a thi"), Truncated(36)])
    result = await run_turn(model, speaker, [SYSTEM], user_text=None, dtmf=None,
                            metrics=Metrics())
    assert [u.text for u in speaker.spoken] == ["One sentence.", "Another one."]
    assert result.text == "One sentence. Another one."
    await playout.close()


async def test_a_stall_mid_answer_keeps_what_was_spoken(voices: Any) -> None:
    _, _, tts = voices
    fake = FakeOpenAIChat()
    url = await fake.start()
    fake.replies.append(Reply("We are open nine to five. On Sundays we", stall_after=8,
                              stall_seconds=30))
    llm = FailoverLLM([create_llm(BackendConfig("openai", api_key=fake.api_key, base_url=url,
                                                inter_token_timeout=0.3))])
    speaker, playout = speaker_on(tts)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with pytest.raises(BackendError, match="stalled"):
            await run_turn(llm, speaker, [SYSTEM], user_text="hours?", dtmf=None,
                           metrics=Metrics())
    finally:
        await llm.close()
        await fake.stop()
    assert loop.time() - began < 3.0
    assert [u.text for u in speaker.spoken] == ["We are open nine to five."]
    await playout.close()
