"""A TTS provider answering 200 with something that is not the raw audio asked for — a JSON
error, a proxy's HTML page, a WAV or MP3 file — fails before a byte of it is played, and the
failover chain has the next provider speak the sentence. Every cloud provider, against its
local fake."""

from __future__ import annotations

import json
from typing import Any

import pytest

from patterd.backends import create_tts
from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverTTS
from patterd.config.model import BackendConfig
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.tts_common import SpeechRequest, wav_header
from tests.unit.test_tts_cloud import TEXT, Service, collect, svc  # noqa: F401 - the fixture

JSON_ERROR = json.dumps({"detail": {"status": "quota_exceeded",
                                    "message": "This request exceeds your quota."}}).encode()
HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

MISANSWERS: dict[str, Any] = {
    "json": lambda rec, audio: ("application/json", JSON_ERROR),
    "json-as-audio": lambda rec, audio: ("audio/mpeg", JSON_ERROR),
    "html": lambda rec, audio: ("text/html; charset=utf-8", HTML_PAGE),
    "wav": lambda rec, audio: ("application/octet-stream", wav_header("mulaw", 8000) + audio),
    "mp3": lambda rec, audio: ("audio/mpeg", b"ID3\x04\x00\x00" + audio),
}


def encoding_of(service: Service) -> str:
    return "PCMU" if service.case.g711 else "PCM16"


@pytest.mark.parametrize("kind", list(MISANSWERS))
async def test_a_200_that_is_not_audio_fails_before_anything_plays(svc: Service,  # noqa: F811
                                                                    kind: str) -> None:
    svc.fake.misanswer = MISANSWERS[kind]
    played: list[bytes] = []
    with pytest.raises(BackendError) as err:
        async with svc.tts.synthesize(TEXT, encoding_of(svc)) as stream:
            async for chunk in stream:
                played.append(chunk)
    assert played == []
    assert "not audio" in err.value.message and err.value.retryable
    if svc.case.name != "elevenlabs-ws":
        assert err.value.status == 200
    if kind == "json" and svc.case.name == "elevenlabs":   # the provider's reason is kept
        assert "exceeds your quota" in err.value.message


async def test_an_odd_length_pcm16_body_fails(svc: Service) -> None:  # noqa: F811
    svc.fake.misanswer = lambda rec, audio: ("application/octet-stream", audio[:41])
    with pytest.raises(BackendError, match="odd number"):
        await collect(svc.tts.synthesize(TEXT))


async def test_the_connection_is_dropped_not_read_to_the_end(svc: Service) -> None:  # noqa: F811
    """A long bad body (a WAV file) is not downloaded: the provider sees us leave."""
    svc.fake.speed = 1.0                                  # real time: 2 s of audio
    svc.fake.misanswer = MISANSWERS["wav"]
    with pytest.raises(BackendError):
        await collect(svc.tts.synthesize(TEXT, encoding_of(svc)))
    assert not svc.fake.last.completed


async def test_the_next_provider_speaks_the_sentence_and_the_failure_is_counted() -> None:
    eleven, aura = FakeElevenLabs(), FakeDeepgramSpeak()
    eleven_url, aura_url = await eleven.start(), await aura.start()

    def json_for_the_answer(rec: SpeechRequest, audio: bytes) -> tuple[str, bytes] | None:
        return ("application/json", JSON_ERROR) if "hours" in rec.text else None

    eleven.misanswer = json_for_the_answer
    errors: list[tuple[str, str, BaseException]] = []
    chain = FailoverTTS([create_tts(BackendConfig("elevenlabs", api_key=eleven.api_key,
                                                  base_url=eleven_url)),
                         create_tts(BackendConfig("deepgram", api_key=aura.api_key,
                                                  base_url=aura_url))],
                        on_error=lambda *e: errors.append(e))
    try:
        await chain.start()
        fine = b"".join(await collect(chain.synthesize("Hello there.", "PCMU")))
        speech = chain.synthesize("We are open nine to five, those are our hours.", "PCMU")
        answer = b"".join(await collect(speech))
    finally:
        await chain.close()
        await eleven.stop()
        await aura.stop()
    assert fine == eleven.audio("Hello there.")
    # Exactly Aura's audio: not a byte of ElevenLabs' JSON went to the caller.
    assert answer == aura.audio("We are open nine to five, those are our hours.", "mulaw", 8000)
    assert speech.provider == "deepgram"
    # Two attempts failed, both ElevenLabs': its socket, then the same provider over HTTP.
    assert [(layer, name) for layer, name, _ in errors] == [("tts", "elevenlabs")] * 2
    assert all("not audio" in str(exc) for _, _, exc in errors)
    assert "not audio" in str(errors[0][2])
