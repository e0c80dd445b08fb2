"""The pocketsphinx decoder pool is supervised: a decoder process that dies, answers garbage or
cannot be restarted costs at most the utterance it held, and the pool never stays empty."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from patterd.backends.stt import pocketsphinx
from patterd.backends.stt.pocketsphinx import PocketsphinxSTT
from patterd.backends.stt.sphinx_proc import DecoderGarbage, DecoderProcess
from patterd.config.model import BackendConfig
from patterd.ops.supervise import Supervisor
from tests.unit.backends.test_pocketsphinx import AGENT, LLM_CFG, speak

pytestmark = pytest.mark.asyncio(loop_scope="module")

# A stand-in decoder that loads, reads one request and answers a 4 GB "transcript".
GARBAGE = r"""
import sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b"R"); out.flush()
n = int.from_bytes(inp.read(4), "little"); inp.read(n)
out.write((0xFFFFFFF0).to_bytes(4, "little")); out.flush()
inp.read()
"""


@pytest_asyncio.fixture(loop_scope="module")
async def solo() -> AsyncIterator[tuple[PocketsphinxSTT, Supervisor]]:
    """A pool of one decoder process, reporting to its own supervisor."""
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=1)
    supervisor = Supervisor()
    stt.supervise(supervisor)
    await stt.start()
    yield stt, supervisor
    await stt.close()


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_a_killed_decoder_is_replaced_and_the_next_utterance_decoded(
        solo: tuple[PocketsphinxSTT, Supervisor]) -> None:
    stt, supervisor = solo
    pcm = await speak("billing please", 0.2)
    [victim] = stt._all
    victim.proc.kill()                       # the OOM killer, say, while it is idle
    await until(lambda: victim not in stt._all)
    assert "billing" in await stt.decode(pcm)   # by its replacement
    [replacement] = stt._all
    assert replacement.proc.pid != victim.proc.pid and replacement.proc.returncode is None
    assert supervisor.errors == {"pocketsphinx": 1} and stt.replaced == 1
    assert supervisor.down == {}


async def test_a_decoder_answering_garbage_fails_one_utterance_and_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_spawn = DecoderProcess.spawn

    async def garbage_spawn(decoder_args: dict[str, Any]) -> DecoderProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GARBAGE, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and await proc.stdout.read(1) == b"R"
        return DecoderProcess(proc)

    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=1)
    supervisor = Supervisor()
    stt.supervise(supervisor)
    monkeypatch.setattr(DecoderProcess, "spawn", staticmethod(garbage_spawn))
    await stt.start()
    monkeypatch.setattr(DecoderProcess, "spawn", real_spawn)   # its replacement is a real decoder
    try:
        pcm = await speak("goodbye", 0.2)
        [liar] = stt._all
        with pytest.raises(DecoderGarbage):
            await stt.decode(pcm)
        assert liar not in stt._all
        await asyncio.wait_for(liar.proc.wait(), 5)   # killed
        assert "goodbye" in await stt.decode(pcm)
        assert supervisor.errors == {"pocketsphinx": 1} and stt.replaced == 1
    finally:
        await stt.close()


async def test_a_pool_that_cannot_restart_is_down_until_a_decoder_starts(
        solo: tuple[PocketsphinxSTT, Supervisor], monkeypatch: pytest.MonkeyPatch) -> None:
    stt, supervisor = solo
    monkeypatch.setattr(pocketsphinx, "RESPAWN_FIRST", 0.05)
    real_spawn = DecoderProcess.spawn
    failures = 3

    async def flaky_spawn(decoder_args: dict[str, Any]) -> DecoderProcess:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("pocketsphinx: the decoder process failed to start")
        return await real_spawn(decoder_args)

    monkeypatch.setattr(DecoderProcess, "spawn", staticmethod(flaky_spawn))
    pcm = await speak("billing please", 0.2)
    decoding = asyncio.ensure_future(stt.decode(pcm))    # waits for a live decoder
    [victim] = stt._all
    victim.proc.kill()
    await until(lambda: supervisor.down == {"pocketsphinx": "no decoder process"})
    assert "billing" in await asyncio.wait_for(decoding, 30)
    assert supervisor.down == {} and failures == 0 and len(stt._all) == 1
    # the death, then each failed start: counted, the pool kept trying
    assert supervisor.errors["pocketsphinx"] >= 4
