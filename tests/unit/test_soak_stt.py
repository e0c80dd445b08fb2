"""The soak's stand-in recogniser (benchmarks/soak_stt.py), through patterd's own Deepgram
backend: a soak phrase spoken through μ-law in 20 ms frames, however it is shifted against the
frames, is heard as its text; a piece of one as words no rule answers; silence as nothing."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import pytest

from patterd.audio.codecs import ulaw_encode
from patterd.backends.stt.deepgram import DeepgramSTT
from patterd.config.model import AgentConfig, BackendConfig
from patterd.simulate import say

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from soak_calls import PHRASES  # noqa: E402
from soak_stt import API_KEY, UNCLEAR, SoakDeepgram  # noqa: E402



@pytest.fixture
async def phrases() -> dict[str, bytes]:
    return {text: (await say(text)).pcm for text in PHRASES.values()}


@pytest.fixture
async def stt(phrases: dict[str, bytes]) -> AsyncIterator[DeepgramSTT]:
    server = SoakDeepgram(phrases)
    url = await server.start()
    provider = DeepgramSTT(BackendConfig("deepgram", api_key=API_KEY, base_url=url, model="",
                                         timeout=0.0, options=MappingProxyType({})),
                           AgentConfig())
    await provider.start()
    yield provider
    await provider.close()
    await server.stop()


async def heard(stt: DeepgramSTT, pcm: bytes) -> str:
    """What one turn of ``pcm`` (s16le 8 kHz) is heard as: pushed as μ-law frames, then
    finalised, as the call session does."""
    stream = stt.open_stream("PCMU")
    ulaw = ulaw_encode(pcm)
    for i in range(0, len(ulaw), 160):
        stream.push(ulaw[i:i + 160])
    result = await stream.finalize()
    await stream.close()
    return result.text


async def test_each_phrase_is_heard_as_its_text_and_a_piece_of_one_is_not(
        stt: DeepgramSTT, phrases: dict[str, bytes]) -> None:
    quiet = bytes(2 * 8000 // 5)
    for n, (text, pcm) in enumerate(phrases.items()):
        shift = bytes(2 * (37 * n % 160))          # the phrase starts mid-frame
        assert await heard(stt, quiet + shift + pcm + quiet) == text
        assert await heard(stt, quiet + pcm[:len(pcm) // 4 * 2]) == UNCLEAR
    assert await heard(stt, quiet * 3) == ""
