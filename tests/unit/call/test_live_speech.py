"""Answers spoken as the LLM writes them, over ElevenLabs' stream-input and Cartesia's
WebSocket (local servers speaking their protocols), with a real playout: text in token by
token, μ-law out; a barge-in stops the synthesis at the provider; the transcript keeps only
what was heard; a failing socket hands the sentence to HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from patterd.audio.codecs import get_codec
from patterd.backends import create_tts
from patterd.backends.failover import FailoverTTS
from patterd.backends.llm.base import LLM, LLMEvent, Message, TextChunk, ToolSpec
from patterd.call.playout import Playout
from patterd.call.transcript import heard_part
from patterd.call.turns import SpeechCache, Speaker, run_turn
from patterd.config.model import BackendConfig
from patterd.ops.metrics import Metrics
from tests.support.fakes.cartesia import FakeCartesia
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.unit.call.test_turn_failures import proto

VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"
ANSWER = ("Our opening hours are nine to five on weekdays, and ten to four on Saturdays. "
          "We are closed on Sundays.")


class Tokens(LLM):
    """Streams a text word by word, ``delay`` seconds apart."""

    name = "tokens"

    def __init__(self, text: str, delay: float = 0.0) -> None:
        self.text, self.delay = text, delay
        self.written: dict[str, float] = {}    # word → loop time it was yielded

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        words = self.text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay)
            self.written[word] = asyncio.get_running_loop().time()
            yield TextChunk(word if i == 0 else " " + word)


class Carrier:
    """The carrier's side of the socket: records what was sent, with its time."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, str]] = []

    async def __call__(self, frame: str) -> None:
        self.frames.append((asyncio.get_running_loop().time(), frame))


@pytest.fixture(params=["elevenlabs", "cartesia"])
async def voice(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, FailoverTTS]]:
    fake = FakeElevenLabs() if request.param == "elevenlabs" else FakeCartesia()
    url = await fake.start()
    fake.ms_per_char = 20
    cfg = BackendConfig(request.param, api_key=fake.api_key, base_url=url,
                        voice=VOICE if request.param == "cartesia" else "")
    tts = FailoverTTS([create_tts(cfg)])
    await tts.start()
    assert tts.streams_text
    yield fake, tts
    await tts.close()
    await fake.stop()


def speaker_on(tts: FailoverTTS) -> tuple[Speaker, Playout, Carrier]:
    carrier = Carrier()
    playout = Playout(proto(), carrier)
    return Speaker(tts, get_codec("PCMU"), playout, SpeechCache(), Metrics()), playout, carrier


def expected_audio(fake: Any, text: str) -> bytes:
    if isinstance(fake, FakeElevenLabs):
        return fake.audio(text, "ulaw_8000")
    return fake.audio(text, "pcm_mulaw", 8000)


async def test_text_in_token_by_token_mulaw_out(voice: Any) -> None:
    fake, tts = voice
    speaker, playout, _ = speaker_on(tts)
    result = await run_turn(Tokens(ANSWER, 0.005), speaker, [], user_text="hours?",
                            dtmf=None, metrics=Metrics())
    sentences = ["Our opening hours are nine to five on weekdays, and ten to four on "
                 "Saturdays.", "We are closed on Sundays."]
    assert [u.text for u in result.utterances] == sentences
    assert result.text == ANSWER
    requests = [r for r in fake.requests if r.text]
    assert [r.text for r in requests] == sentences          # one stream per sentence
    assert all(len(r.body) > 3 for r in requests)           # fed in pieces, not whole
    for rec, utt in zip(requests, result.utterances):       # μ-law as the service made it
        assert utt.queued == len(rec.audio)
        assert rec.completed
    if isinstance(fake, FakeElevenLabs):
        first = requests[0].body
        assert first[0]["text"] == " " and first[0]["generation_config"] == {
            "chunk_length_schedule": [50, 160, 250, 290]}
        assert all(m["text"].endswith(" ") for m in first[1:-1])   # word boundaries
        assert first[-2].get("flush") is True and first[-1] == {"text": ""}
    else:
        first = requests[0].body
        assert all(m["continue"] for m in first[:-1]) and first[-1]["continue"] is False
        assert "".join(m["transcript"] for m in first) == sentences[0]
        assert first[0]["voice"] == VOICE and first[0]["output_format"]["encoding"] == \
            "pcm_mulaw"
        assert len(fake.sockets.sockets) == 1                # both contexts on one socket
    await playout.close()


async def test_speech_starts_before_the_sentence_is_written(voice: Any) -> None:
    """A long first sentence written slowly: its first audio goes to the carrier before the
    LLM reaches its end (over HTTP nothing could be sent until then)."""
    fake, tts = voice
    if isinstance(fake, FakeCartesia):
        fake.sockets.clause_chars = 20
    speaker, playout, carrier = speaker_on(tts)
    model = Tokens(ANSWER, 0.03)
    await run_turn(model, speaker, [], user_text="hours?", dtmf=None, metrics=Metrics())
    first_audio = next(t for t, frame in carrier.frames if '"media"' in frame)
    assert first_audio < model.written["Saturdays."]
    await playout.close()


async def test_barge_in_mid_sentence_stops_it_at_the_provider(voice: Any) -> None:
    fake, tts = voice
    fake.speed = 1.0                                    # audio at real time
    speaker, playout, _ = speaker_on(tts)
    turn = asyncio.create_task(run_turn(Tokens(ANSWER, 0.005), speaker, [], user_text="?",
                                        dtmf=None, metrics=Metrics()))
    async with asyncio.timeout(5):
        while not speaker.spoken or speaker.spoken[0].sent < 4000:   # half a second heard
            await asyncio.sleep(0.01)
    turn.cancel()                                       # what the session does on barge-in
    cut = await playout.clear()
    await asyncio.gather(turn, return_exceptions=True)
    assert cut and cut[0] is speaker.spoken[0]
    utt = cut[0]
    heard = heard_part(utt.text, utt.heard_seconds, utt.seconds)
    assert heard and len(heard) < len(utt.text)         # only what was heard
    streamed = [r for r in fake.requests if r.text]
    async with asyncio.timeout(3):                      # the service saw it stop
        while not all(r.disconnected.is_set() for r in streamed):
            await asyncio.sleep(0.01)
    assert not any(r.completed for r in streamed)
    if isinstance(fake, FakeCartesia):                  # told to cancel; the socket stays
        assert streamed[0].body[-1] == {"context_id": streamed[0].body[0]["context_id"],
                                        "cancel": True}
        assert not fake.sockets.sockets[0].closed.is_set()
    await playout.close()


async def test_a_failing_socket_hands_the_sentence_to_http(voice: Any) -> None:
    fake, tts = voice
    if isinstance(fake, FakeElevenLabs):
        fake.ws_error_after = 0                         # an error message, then 1008
        fake.ws_error = ("internal_error", "Something went wrong.")
    else:
        fake.sockets.refuse = 503
    errors: list[str] = []
    tts._on_error = lambda layer, provider, exc: errors.append(provider)
    speaker, playout, _ = speaker_on(tts)
    result = await run_turn(Tokens("We are closed on Sundays.", 0.0), speaker, [],
                            user_text="?", dtmf=None, metrics=Metrics())
    assert [u.text for u in result.utterances] == ["We are closed on Sundays."]
    http = [r for r in fake.requests if r.path in ("/tts/bytes", ) or r.path.endswith(
        "/stream")]
    assert [r.text for r in http] == ["We are closed on Sundays."] and http[0].completed
    assert result.utterances[0].queued == len(http[0].audio)
    assert errors == [tts.name]
    await playout.close()
