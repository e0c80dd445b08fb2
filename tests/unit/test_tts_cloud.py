"""Cloud TTS providers (ElevenLabs HTTP + WebSocket, OpenAI, Deepgram Aura, Cartesia) against
local fakes that speak each service's wire protocol.

Covered for every provider: G.711 bytes arrive exactly as the service produced them, PCM16 comes
in whole samples at 8 kHz (OpenAI resampled from 24 kHz), error answers become BackendError with
the service's message (and never the key), the first-byte timeout, cancel (barge-in) closes the
connection so the service stops generating, and a stream that breaks off is an error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import numpy as np
import pytest

from patterd.audio.resample import Resampler
from patterd.backends import create_tts
from patterd.backends.errors import BackendError
from patterd.backends.tts import TTS, SpeechStream
from patterd.backends.tts.http_stream import HttpSpeechStream
from patterd.config.model import BackendConfig
from tests.support.fakes.cartesia import FakeCartesia
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.openai_speech import FakeOpenAISpeech
from tests.support.fakes.tts_common import FakeSpeechService

TEXT = "Thanks for calling, how can I help?"          # 35 chars → 2.1 s of audio
SECONDS = len(TEXT) * 0.060
LONG = "This sentence keeps the fake busy for a while. " * 4   # ~11 s at real time


@dataclass
class Case:
    """One provider (and transport) with its fake and what it should produce."""

    name: str
    provider: str
    fake: Callable[[], FakeSpeechService]
    expected: Callable[[Any, str, str], bytes]       # (fake, text, encoding) → audio
    options: dict[str, Any]
    g711: bool = True


def _openai_expected(fake: FakeOpenAISpeech, text: str, encoding: str) -> bytes:
    r = Resampler(24000, 8000)
    return r.process(fake.pcm(text)) + r.flush()


EL_FORMAT = {"PCMU": "ulaw_8000", "PCMA": "alaw_8000", "PCM16": "pcm_8000"}
DG_ENCODING = {"PCMU": "mulaw", "PCMA": "alaw", "PCM16": "linear16"}
CA_ENCODING = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "PCM16": "pcm_s16le"}

CASES = {
    "elevenlabs": Case("elevenlabs", "elevenlabs", FakeElevenLabs,
                       lambda f, t, e: f.audio(t, EL_FORMAT[e]), {"transport": "http"}),
    "elevenlabs-ws": Case("elevenlabs-ws", "elevenlabs", FakeElevenLabs,
                          lambda f, t, e: f.audio(t, EL_FORMAT[e]), {"transport": "websocket"}),
    "openai": Case("openai", "openai", FakeOpenAISpeech, _openai_expected, {}, g711=False),
    "deepgram": Case("deepgram", "deepgram", FakeDeepgramSpeak,
                     lambda f, t, e: f.audio(t, DG_ENCODING[e], 8000), {}),
    "cartesia": Case("cartesia", "cartesia", FakeCartesia,
                     lambda f, t, e: f.audio(t, CA_ENCODING[e], 8000), {"transport": "http"}),
}
HTTP_CASES = ["elevenlabs", "openai", "deepgram", "cartesia"]


@dataclass
class Service:
    case: Case
    fake: Any
    base_url: str
    tts: TTS

    def expected(self, text: str, encoding: str) -> bytes:
        return self.case.expected(self.fake, text, encoding)

    def make(self, **overrides: Any) -> TTS:
        """Another provider instance on the same fake (closed by the fixture)."""
        cfg = dict(provider=self.case.provider, api_key=self.fake.api_key,
                   base_url=self.base_url, options=self.case.options)
        cfg.update(overrides)
        tts = create_tts(BackendConfig(**cfg))
        self._extra.append(tts)
        return tts

    _extra: list[TTS]


@pytest.fixture(params=list(CASES))
async def svc(request: pytest.FixtureRequest) -> Any:
    case = CASES[request.param]
    fake = case.fake()
    base_url = await fake.start()
    tts = create_tts(BackendConfig(case.provider, api_key=fake.api_key, base_url=base_url,
                                   options=case.options))
    service = Service(case, fake, base_url, tts, [])
    yield service
    for t in [tts, *service._extra]:
        await t.close()
    await fake.stop()


async def collect(stream: SpeechStream) -> list[bytes]:
    async with stream:
        return [chunk async for chunk in stream]


async def wait_for_request(fake: FakeSpeechService, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not fake.requests:
            await asyncio.sleep(0.005)


def tone_hz(pcm: bytes, rate: int = 8000) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


# ---------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA"])
async def test_g711_arrives_exactly_as_the_service_made_it(svc: Service, encoding: str) -> None:
    if not svc.case.g711:
        assert encoding not in svc.tts.output_encodings
        with pytest.raises(ValueError):
            svc.tts.synthesize(TEXT, encoding)
        return
    assert encoding in svc.tts.output_encodings
    chunks = await collect(svc.tts.synthesize(TEXT, encoding))
    audio = b"".join(chunks)
    assert audio == svc.expected(TEXT, encoding)
    assert len(audio) == round(SECONDS * 8000)            # 8 kHz, one byte a sample
    assert svc.fake.last.completed and len(chunks) > 1    # streamed, not one blob


async def test_pcm16_is_whole_samples_at_8khz(svc: Service) -> None:
    chunks = await collect(svc.tts.synthesize(TEXT))
    assert chunks and all(len(c) % 2 == 0 and c for c in chunks)
    audio = b"".join(chunks)
    assert audio == svc.expected(TEXT, "PCM16")
    assert abs(len(audio) / 2 - SECONDS * 8000) <= 2       # 8 kHz samples, ± resampler rounding
    assert abs(tone_hz(audio) - svc.fake.tone_hz) < 5


async def test_pcm16_odd_write_boundaries(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's writes split samples (odd sizes, paced so they arrive one by one)."""
    seen: list[int] = []
    original = HttpSpeechStream._whole_samples

    def spy(self: HttpSpeechStream, data: bytes) -> bytes:
        seen.append(len(data))
        return original(self, data)

    monkeypatch.setattr(HttpSpeechStream, "_whole_samples", spy)
    svc.fake.odd_writes, svc.fake.speed, svc.fake.chunk_ms = True, 40.0, 10
    chunks = await collect(svc.tts.synthesize(TEXT))
    assert all(len(c) % 2 == 0 for c in chunks)
    assert b"".join(chunks) == svc.expected(TEXT, "PCM16")
    assert any(n % 2 for n in svc.fake.last.writes)
    if svc.case.name != "elevenlabs-ws":                  # each WS message is its own chunk
        assert any(n % 2 for n in seen), "no odd-sized read reached the client"


async def test_empty_text_sends_nothing(svc: Service) -> None:
    assert await collect(svc.tts.synthesize("   ")) == []
    assert svc.fake.requests == []


# ---------------------------------------------------------------------------------- requests


async def test_request_matches_the_service_api(svc: Service) -> None:
    encoding = "PCMU" if svc.case.g711 else "PCM16"
    await collect(svc.tts.synthesize(TEXT, encoding))
    rec = svc.fake.last
    key = svc.fake.api_key
    name = svc.case.name
    if name == "elevenlabs":
        assert rec.path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"
        assert rec.query == {"output_format": "ulaw_8000"}
        assert rec.headers["xi-api-key"] == key
        assert rec.body == {"text": TEXT, "model_id": "eleven_flash_v2_5"}
    elif name == "elevenlabs-ws":
        assert rec.path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream-input"
        assert rec.query == {"model_id": "eleven_flash_v2_5", "output_format": "ulaw_8000"}
        assert rec.headers["xi-api-key"] == key
        assert rec.body == [{"text": " ", "generation_config": {
            "chunk_length_schedule": [50, 160, 250, 290]}},
            {"text": TEXT + " ", "flush": True}, {"text": ""}]
    elif name == "openai":
        assert rec.path == "/v1/audio/speech"
        assert rec.headers["Authorization"] == f"Bearer {key}"
        assert rec.body == {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy",
                            "response_format": "pcm"}
    elif name == "deepgram":
        assert rec.path == "/v1/speak"
        assert rec.headers["Authorization"] == f"Token {key}"
        assert rec.query == {"model": "aura-2-thalia-en", "encoding": "mulaw",
                             "sample_rate": "8000", "container": "none"}
        assert rec.body == {"text": TEXT}
    else:
        assert rec.path == "/tts/bytes"
        assert rec.headers["Authorization"] == f"Bearer {key}"
        assert rec.headers["Cartesia-Version"] == "2026-08-14"   # the current SDK's
        assert rec.body == {"model_id": "sonic-2", "transcript": TEXT,
                            "voice": "694f9389-aac1-45b6-b726-9d9369183238",
                            "language": "en",
                            "output_format": {"container": "raw", "encoding": "pcm_mulaw",
                                              "sample_rate": 8000}}
        older = svc.make(options={**svc.case.options, "version": "2025-04-16"})
        await collect(older.synthesize(TEXT, encoding))
        assert svc.fake.last.status == 200 and svc.fake.last.body["voice"] == {
            "mode": "id", "id": "694f9389-aac1-45b6-b726-9d9369183238"}   # the older form


async def test_configured_voice_model_and_options_are_used(svc: Service) -> None:
    name = svc.case.name
    if name.startswith("elevenlabs"):
        tts = svc.make(voice="pNInz6obpgDQGcFmaJgB", model="eleven_multilingual_v2",
                       options={**svc.case.options, "language": "de"})
        await collect(tts.synthesize("Hallo.", "PCMA"))
        rec = svc.fake.last
        assert rec.path.startswith("/v1/text-to-speech/pNInz6obpgDQGcFmaJgB/")
        assert rec.query["output_format"] == "alaw_8000"
        if name == "elevenlabs":
            assert rec.body["model_id"] == "eleven_multilingual_v2"
            assert rec.body["language_code"] == "de"
        else:
            assert rec.query["model_id"] == "eleven_multilingual_v2"
            assert rec.query["language_code"] == "de"
    elif name == "openai":
        await collect(svc.make(voice="coral", model="tts-1").synthesize("Hi."))
        assert (svc.fake.last.body["voice"], svc.fake.last.body["model"]) == ("coral", "tts-1")
    elif name == "deepgram":
        await collect(svc.make(voice="aura-2-apollo-en").synthesize("Hi.", "PCMA"))
        assert svc.fake.last.query["model"] == "aura-2-apollo-en"
        assert svc.fake.last.query["encoding"] == "alaw"
        await collect(svc.make(model="aura-2-zeus-en").synthesize("Hi."))
        assert svc.fake.last.query["model"] == "aura-2-zeus-en"
        assert svc.fake.last.query["encoding"] == "linear16"
    else:
        voice = "a0e99841-438c-4a64-b679-ae501e7d6091"
        tts = svc.make(voice=voice, model="sonic-3",
                       options={"language": "fr", "version": "2026-03-01"})
        await collect(tts.synthesize("Bonjour.", "PCMA"))
        rec = svc.fake.last
        assert rec.headers["Cartesia-Version"] == "2026-03-01"
        assert (rec.body["voice"]["id"], rec.body["model_id"], rec.body["language"]) == (
            voice, "sonic-3", "fr")
        assert rec.body["output_format"]["encoding"] == "pcm_alaw"


@pytest.mark.parametrize("svc", HTTP_CASES, indirect=True)
async def test_one_session_reused_across_streams(svc: Service) -> None:
    for _ in range(3):
        await collect(svc.tts.synthesize("Hi there."))
    session = svc.tts._session                            # type: ignore[attr-defined]
    assert session is not None and len(svc.fake.requests) == 3
    await collect(svc.tts.synthesize("Again."))
    assert svc.tts._session is session                    # type: ignore[attr-defined]
    await svc.tts.close()
    assert session.closed


# ---------------------------------------------------------------------------------- errors


async def test_wrong_key_is_a_permanent_error_without_the_key(svc: Service) -> None:
    wrong = "sk-WRONG-secret-key-98765"
    tts = svc.make(api_key=wrong)
    with pytest.raises(BackendError) as err:
        await collect(tts.synthesize(TEXT))
    e = err.value
    assert (e.layer, e.provider, e.status, e.retryable) == ("tts", svc.case.provider, 401, False)
    if svc.case.name != "elevenlabs-ws":                  # a refused handshake has no body
        expected = {"elevenlabs": "Invalid API key (invalid_api_key)",
                    "openai": "Incorrect API key provided",
                    "deepgram": "Invalid credentials. (INVALID_AUTH",
                    "cartesia": "Invalid API key."}[svc.case.name]
        assert expected in e.message
    assert wrong not in str(e) and svc.fake.api_key not in str(e)


@pytest.mark.parametrize("status,retryable", [(429, True), (500, True), (503, True),
                                              (400, False), (403, False)])
async def test_error_status_carries_the_service_message(svc: Service, status: int,
                                                        retryable: bool) -> None:
    svc.fake.fail_status, svc.fake.fail_message = status, "the service says no"
    with pytest.raises(BackendError) as err:
        await collect(svc.tts.synthesize(TEXT, "PCM16"))
    assert err.value.status == status and err.value.retryable is retryable
    if svc.case.name != "elevenlabs-ws":
        assert "the service says no" in err.value.message


@pytest.mark.parametrize("svc", HTTP_CASES, indirect=True)
async def test_echoed_key_is_scrubbed(svc: Service) -> None:
    svc.fake.fail_status = 400
    svc.fake.fail_message = f"bad request for key {svc.fake.api_key}"
    with pytest.raises(BackendError) as err:
        await collect(svc.tts.synthesize(TEXT))
    assert svc.fake.api_key not in str(err.value) and "***" in err.value.message


async def test_invalid_request_is_rejected_by_the_fake(svc: Service) -> None:
    """The fakes validate: a bad voice/model is refused with the service's answer."""
    bad = {"elevenlabs": dict(voice="Zz9Zz9Zz9Zz9Zz9Zz9Zz"),
           "elevenlabs-ws": dict(model="eleven_nonexistent"),
           "openai": dict(model="tts-9"), "deepgram": dict(voice="nova-3"),
           "cartesia": dict(voice="not-a-uuid")}[svc.case.name]
    with pytest.raises(BackendError) as err:
        await collect(svc.make(**bad).synthesize(TEXT))
    assert err.value.retryable is False and err.value.status in (400, 404)
    message = {"elevenlabs": "was not found. (voice_not_found)",
               "openai": "does not exist or you do not have access to it. (model_not_found)",
               "deepgram": "No such model", "cartesia": "voice must be"}.get(svc.case.name)
    if message:
        assert message in err.value.message


async def test_first_byte_timeout_before_headers(svc: Service) -> None:
    svc.fake.delay_headers = 3.0
    tts = svc.make(timeout=0.3)
    began = time.monotonic()
    with pytest.raises(BackendError) as err:
        await collect(tts.synthesize(TEXT))
    assert 0.25 < time.monotonic() - began < 1.5
    assert err.value.retryable and "no audio within 0.3 s" in err.value.message
    await asyncio.wait_for(svc.fake.last.disconnected.wait(), 2)  # the request was dropped


async def test_first_byte_timeout_after_headers(svc: Service) -> None:
    svc.fake.stall = 3.0
    tts = svc.make(timeout=0.3)
    began = time.monotonic()
    with pytest.raises(BackendError) as err:
        await collect(tts.synthesize(TEXT))
    assert 0.25 < time.monotonic() - began < 1.5
    assert err.value.retryable and "no audio within 0.3 s" in err.value.message
    await asyncio.wait_for(svc.fake.last.disconnected.wait(), 2)
    assert svc.fake.last.sent == 0


async def test_slow_but_steady_stream_is_not_a_timeout(svc: Service) -> None:
    """The timeout bounds the first byte only: audio paced in real time for longer is fine."""
    svc.fake.speed = 2.0
    tts = svc.make(timeout=0.3)
    audio = b"".join(await collect(tts.synthesize("Just a bit longer.")))  # 1.08 s in 0.54 s
    assert audio == svc.expected("Just a bit longer.", "PCM16")


async def test_stream_breaking_off_is_a_retryable_error(svc: Service) -> None:
    svc.fake.drop_after = 3200
    got: list[bytes] = []
    with pytest.raises(BackendError) as err:
        async with svc.tts.synthesize(LONG) as stream:
            async for chunk in stream:
                got.append(chunk)
    assert err.value.retryable
    assert svc.fake.last.sent == 3200 and not svc.fake.last.completed


@pytest.mark.parametrize("svc", ["elevenlabs-ws"], indirect=True)
async def test_websocket_error_message(svc: Service) -> None:
    svc.fake.ws_error_after = 800
    got: list[bytes] = []
    with pytest.raises(BackendError) as err:
        async with svc.tts.synthesize(LONG, "PCMU") as stream:
            async for chunk in stream:
                got.append(chunk)
    assert "This request exceeds your quota. (quota_exceeded)" == err.value.message
    assert err.value.status == 1008 and not err.value.retryable
    assert b"".join(got) == svc.fake.last.audio[:len(b"".join(got))] and got


@pytest.mark.parametrize("svc", ["elevenlabs-ws"], indirect=True)
async def test_websocket_key_in_bos_is_accepted_by_the_fake(svc: Service) -> None:
    """The fake also implements BOS auth (documented alternative); ours uses the header."""
    url = svc.base_url.replace("http://", "ws://") + (
        "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream-input?output_format=ulaw_8000"
        "&model_id=eleven_flash_v2_5")
    async with aiohttp.ClientSession() as s:
        for key, ok in (("nope", False), (svc.fake.api_key, True)):
            async with s.ws_connect(url) as ws:
                await ws.send_json({"text": " ", "xi_api_key": key})
                await ws.send_json({"text": "Hi. ", "flush": True})
                await ws.send_json({"text": ""})
                msgs = [json.loads(m.data) async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
            if ok:
                audio = b"".join(base64.b64decode(m["audio"]) for m in msgs if m.get("audio"))
                assert audio == svc.fake.audio("Hi.") and msgs[-1] == {"isFinal": True}
            else:
                assert msgs == [{"message": "Invalid API key", "error": "invalid_api_key",
                                 "code": 1008}]


# ---------------------------------------------------------------------------------- cancel


async def test_cancel_mid_stream_stops_the_service(svc: Service) -> None:
    svc.fake.speed = 1.0
    encoding = "PCMU" if svc.case.g711 else "PCM16"
    stream = svc.tts.synthesize(LONG, encoding)
    got: list[bytes] = []
    first = asyncio.Event()

    async def play() -> None:
        async for chunk in stream:
            got.append(chunk)
            first.set()

    player = asyncio.create_task(play())
    await asyncio.wait_for(first.wait(), 3)
    stream.cancel()                                       # barge-in, from another task
    await asyncio.wait_for(player, 1)                     # the pending read ended the loop
    rec = svc.fake.last
    await asyncio.wait_for(rec.disconnected.wait(), 2)    # the service saw us go
    assert not rec.completed and rec.sent < len(rec.audio) // 2
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    stream.cancel()                                       # idempotent
    await stream.aclose()


async def test_cancel_while_waiting_for_the_first_byte(svc: Service) -> None:
    svc.fake.stall = 5.0
    stream = svc.tts.synthesize(TEXT)
    player = asyncio.create_task(collect(stream))
    await wait_for_request(svc.fake)
    stream.cancel()
    assert await asyncio.wait_for(player, 1) == []
    await asyncio.wait_for(svc.fake.last.disconnected.wait(), 2)
    assert svc.fake.last.sent == 0


async def test_cancel_while_connecting(svc: Service) -> None:
    svc.fake.delay_headers = 5.0
    stream = svc.tts.synthesize(TEXT)
    player = asyncio.create_task(collect(stream))
    await wait_for_request(svc.fake)
    stream.cancel()
    assert await asyncio.wait_for(player, 1) == []
    await asyncio.wait_for(svc.fake.last.disconnected.wait(), 2)


async def test_cancel_before_start_sends_nothing(svc: Service) -> None:
    stream = svc.tts.synthesize(TEXT)
    stream.cancel()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert svc.fake.requests == []


async def test_aclose_after_a_partial_read_drops_the_connection(svc: Service) -> None:
    svc.fake.speed = 1.0
    stream = svc.tts.synthesize(LONG)
    async with stream:
        await stream.__anext__()
    await asyncio.wait_for(svc.fake.last.disconnected.wait(), 2)
    assert not svc.fake.last.completed


# ---------------------------------------------------------------------------------- specifics


@pytest.mark.parametrize("svc", ["deepgram"], indirect=True)
async def test_deepgram_default_container_is_wav_and_we_ask_for_none(svc: Service) -> None:
    headers = {"Authorization": f"Token {svc.fake.api_key}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{svc.base_url}/speak?model=aura-2-thalia-en&encoding=mulaw"
                          f"&sample_rate=8000", json={"text": TEXT}, headers=headers) as r:
            forgot = await r.read()
    assert forgot.startswith(b"RIFF")                     # what a forgetful client would play
    ours = b"".join(await collect(svc.tts.synthesize(TEXT, "PCMU")))
    assert not ours.startswith(b"RIFF") and ours == forgot[44:]
    assert svc.fake.last.query["container"] == "none"


@pytest.mark.parametrize("version,expected", [
    ("2025-04-16", "Unauthorized: Invalid API key."),                      # plain text
    ("2026-03-01", "Unauthorized: Invalid API key. (invalid_api_key)")])   # JSON object
@pytest.mark.parametrize("svc", ["cartesia"], indirect=True)
async def test_cartesia_error_shapes(svc: Service, version: str, expected: str) -> None:
    tts = svc.make(api_key="wrong", options={"version": version})
    with pytest.raises(BackendError) as err:
        await collect(tts.synthesize(TEXT))
    assert err.value.message == expected and err.value.status == 401


@pytest.mark.parametrize("svc", ["elevenlabs"], indirect=True)
async def test_elevenlabs_validation_error_list_is_readable(svc: Service) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{svc.base_url}/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream",
                          params={"output_format": "ulaw_16000"}, json={"text": "x"},
                          headers={"xi-api-key": svc.fake.api_key}) as r:
            status, body = r.status, await r.read()
    assert status == 422
    assert svc.tts.parse_error(status, body).startswith(  # type: ignore[attr-defined]
        "query.output_format: Input should be one of")


@pytest.mark.parametrize("svc", ["elevenlabs"], indirect=True)
async def test_elevenlabs_without_output_format_would_get_mp3(svc: Service) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{svc.base_url}/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream",
                          json={"text": "x"}, headers={"xi-api-key": svc.fake.api_key}) as r:
            assert (await r.read()).startswith(b"ID3")


@pytest.mark.parametrize("svc", ["openai"], indirect=True)
async def test_openai_1khz_tone_survives_resampling(svc: Service) -> None:
    svc.fake.tone_hz = 1000.0
    audio = b"".join(await collect(svc.tts.synthesize(TEXT)))
    n_in = len(svc.fake.last.audio) // 2
    assert n_in == round(SECONDS * 24000)
    assert abs(len(audio) / 2 - n_in / 3) <= 2            # 24 kHz → 8 kHz: a third
    assert abs(tone_hz(audio) - 1000.0) < 5
    assert rms(audio) == pytest.approx(rms(svc.fake.last.audio), rel=0.02)


@pytest.mark.parametrize("svc", ["openai"], indirect=True)
async def test_openai_5khz_tone_is_filtered_not_aliased(svc: Service) -> None:
    svc.fake.tone_hz = 5000.0                             # above the 4 kHz Nyquist of 8 kHz
    audio = b"".join(await collect(svc.tts.synthesize(TEXT)))
    attenuation = 20 * np.log10(max(rms(audio), 1e-9) / rms(svc.fake.last.audio))
    assert attenuation <= -40, f"only {attenuation:.1f} dB"


def test_factory_and_encodings() -> None:
    expected = {"elevenlabs": {"PCM16", "PCMU", "PCMA"}, "openai": {"PCM16"},
                "deepgram": {"PCM16", "PCMU", "PCMA"}, "cartesia": {"PCM16", "PCMU", "PCMA"}}
    for provider, encodings in expected.items():
        tts = create_tts(BackendConfig(provider, api_key="k", base_url="https://x.invalid"))
        assert tts.name == provider and set(tts.output_encodings) == encodings
    with pytest.raises(ValueError):
        create_tts(BackendConfig("elevenlabs", api_key="k", base_url="https://x",
                                 options={"transport": "carrier-pigeon"}))
    el = create_tts(BackendConfig("elevenlabs", api_key="k", base_url="https://api.elevenlabs.io",
                                  options={"transport": "websocket"}))
    assert el.ws_base == "wss://api.elevenlabs.io"        # type: ignore[attr-defined]


def test_config_section_reaches_the_provider() -> None:
    from patterd.config import build_config
    from tests.conftest import twilio_raw
    cfg = build_config(twilio_raw(tts={
        "provider": "elevenlabs", "voice": "pNInz6obpgDQGcFmaJgB", "transport": "websocket",
        "language": "de", "timeout": 2.5,
        "failover": [{"provider": "cartesia", "version": "2026-03-01", "language": "fr"},
                     {"provider": "deepgram"}, {"provider": "openai", "voice": "nova"}]}),
        env={"ELEVENLABS_API_KEY": "el", "CARTESIA_API_KEY": "ca", "DEEPGRAM_API_KEY": "dg",
             "OPENAI_API_KEY": "oa"})
    el, ca, dg, oa = (create_tts(c) for c in cfg.tts.chain)
    assert (el.transport, el.language, el.timeout, el.voice) == (    # type: ignore[attr-defined]
        "websocket", "de", 2.5, "pNInz6obpgDQGcFmaJgB")
    assert el.ws_base == "wss://api.elevenlabs.io"       # type: ignore[attr-defined]
    assert (ca.version, ca.language, ca.base_url) == (   # type: ignore[attr-defined]
        "2026-03-01", "fr", "https://api.cartesia.ai")
    assert (dg.base_url, dg.timeout) == ("https://api.deepgram.com/v1", 5.0)  # type: ignore
    assert (oa.voice, oa.base_url) == ("nova", "https://api.openai.com/v1")  # type: ignore


# ---------------------------------------------------------------------------------- numbers


async def test_measure_first_byte_to_first_chunk(svc: Service) -> None:
    """Median, over 100 streams, of the time from the fake writing its first audio byte to
    the stream yielding its first chunk (printed for the report)."""
    encoding = "PCMU" if svc.case.g711 else "PCM16"
    lags = []
    for _ in range(100):
        stream = svc.tts.synthesize("Hello there.", encoding)
        async with stream:
            await stream.__anext__()
            yielded = time.perf_counter()
            rec = svc.fake.last
            assert rec.first_byte_at is not None
            lags.append(yielded - rec.first_byte_at)
        await collect(stream)
    median = statistics.median(lags)
    print(f"\n[measure] {svc.case.name}: first byte → first chunk median "
          f"{median * 1e3:.2f} ms (p90 {sorted(lags)[89] * 1e3:.2f} ms, n=100)")
    assert median < 0.05


@pytest.mark.parametrize("svc", ["openai"], indirect=True)
async def test_measure_openai_resampling_cpu(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU spent in the 24→8 kHz path per second of audio (printed for the report)."""
    spent = 0.0
    original = Resampler.process

    def timed(self: Resampler, pcm: bytes) -> bytes:
        nonlocal spent
        t0 = time.perf_counter()
        out = original(self, pcm)
        spent += time.perf_counter() - t0
        return out

    monkeypatch.setattr(Resampler, "process", timed)
    text = "x" * 1000                                     # 60 s of audio
    cpu0 = time.process_time()
    audio = b"".join(await collect(svc.tts.synthesize(text)))
    cpu = time.process_time() - cpu0
    seconds = len(audio) / 16000
    assert seconds == pytest.approx(60.0, abs=0.01)
    print(f"\n[measure] openai 24→8 kHz resampling: {spent / seconds * 1e3:.3f} ms CPU per "
          f"audio second ({len(svc.fake.last.writes)} chunks); whole process incl. the fake: "
          f"{cpu / seconds * 1e3:.2f} ms per audio second")
    assert spent / seconds < 0.01                         # < 1 % of one core
