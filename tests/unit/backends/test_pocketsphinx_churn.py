"""Calls ending mid-word, and the provider closing or starting under load: the decoder pool
keeps its processes (a cancelled caller only abandons its answer), nobody waits forever, and
every wait of close() is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from patterd.backends import create_llm
from patterd.backends.stt import pocketsphinx, sphinx_proc
from patterd.backends.stt.pocketsphinx import PocketsphinxSTT
from patterd.backends.stt.sphinx_proc import DecoderProcess
from patterd.config.model import BackendConfig
from patterd.ops.supervise import Supervisor
from tests.unit.backends.test_pocketsphinx import AGENT, LLM_CFG, RULES, speak
from tests.unit.backends.test_pocketsphinx_pool import until

pytestmark = pytest.mark.asyncio(loop_scope="module")
LLM = create_llm(LLM_CFG, AGENT)

# A stand-in decoder that loads, leaves a child holding its stdout open (so the process is
# never "gone" to asyncio, even once killed), reads one request and never answers.
STUCK = r"""
import subprocess, sys, time
child = subprocess.Popen(["sleep", "120"])          # inherits stdout
open(sys.argv[1], "w").write(str(child.pid))
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b"R"); out.flush()
n = int.from_bytes(inp.read(4), "little"); inp.read(n)
time.sleep(120)
"""


@pytest_asyncio.fixture(loop_scope="module")
async def pair() -> AsyncIterator[tuple[PocketsphinxSTT, Supervisor]]:
    """A pool of two decoder processes, reporting to its own supervisor."""
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=2)
    supervisor = Supervisor()
    stt.supervise(supervisor)
    await stt.start()
    yield stt, supervisor
    await stt.close()


def pids(stt: PocketsphinxSTT) -> set[int]:
    return {w.proc.pid for w in stt._all}


async def test_cancelled_decodes_leave_every_decoder_in_the_pool(
        pair: tuple[PocketsphinxSTT, Supervisor]) -> None:
    """Calls that end while their utterance is decoded, or while it waits for a decoder,
    cost no decoder process: each finishes its utterance and serves the next."""
    stt, supervisor = pair
    before = pids(stt)
    billing, goodbye = await speak("billing please", 0.2), await speak("goodbye", 0.2)
    for pause in (None, 0.0, 0.05, 0.3):        # cancelled at different points of the exchange
        tasks = [asyncio.ensure_future(stt.decode(billing * 8)) for _ in range(6)]
        if pause is not None:                   # (None: before any of them even ran)
            await until(lambda: len(stt._busy) == 2)   # both decoders busy, four callers wait
            await asyncio.sleep(pause)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks)
    assert stt._idle is not None
    await until(lambda: not stt._busy and stt._idle.qsize() == 2)   # both back, intact
    assert pids(stt) == before and all(w.proc.returncode is None for w in stt._all)
    assert stt.replaced == 0 and supervisor.errors == {} and supervisor.down == {}
    # each decoder answers the next request, not the abandoned one (nothing out of step)
    heard = await asyncio.gather(*(stt.decode(pcm) for pcm in (billing, goodbye) * 3))
    assert [LLM.match(h).rule for h in heard] == [RULES[0], RULES[4]] * 3
    assert pids(stt) == before and stt.replaced == 0


async def test_a_decode_waiting_for_a_decoder_fails_when_the_provider_closes() -> None:
    """Closing while a call waits for a decoder: that call fails (it never waits forever),
    the utterance being decoded finishes."""
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=1)
    await stt.start()
    pcm = await speak("billing please", 0.2)
    decoding = asyncio.ensure_future(stt.decode(pcm * 10))
    waiting = asyncio.ensure_future(stt.decode(pcm))
    await until(lambda: len(stt._busy) == 1)
    await asyncio.wait_for(stt.close(), 60)
    assert LLM.match(decoding.result()).rule is RULES[0]
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(waiting, 10)


async def test_a_start_while_closing_gets_a_pool_of_its_own() -> None:
    """start() during close() (which waits for an utterance): the new pool is not the old
    one's, its model files outlive the old close, and the old utterance still finishes."""
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=1)
    await stt.start()
    pcm = await speak("billing please", 0.2)
    [old] = stt._all
    decoding = asyncio.ensure_future(stt.decode(pcm * 10))
    await until(lambda: len(stt._busy) == 1)
    closing = asyncio.ensure_future(stt.close())
    await asyncio.sleep(0)
    await stt.start()
    try:
        await asyncio.wait_for(closing, 60)
        assert LLM.match(decoding.result()).rule is RULES[0]
        assert old not in stt._all and old.proc.returncode is not None
        assert len(stt._all) == 1 and Path(stt.decoder_args["dict"]).exists()
        assert LLM.match(await stt.decode(pcm)).rule is RULES[0]
        assert stt.replaced == 0
    finally:
        await stt.close()


async def test_a_close_while_starting_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() while start() loads the decoders: the start fails, its processes are stopped,
    and the provider stays closed."""
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=2)
    spawned: list[DecoderProcess] = []
    closed = asyncio.Event()
    real_spawn = DecoderProcess.spawn

    async def slow_spawn(decoder_args: dict[str, Any]) -> DecoderProcess:
        worker = await real_spawn(decoder_args)
        spawned.append(worker)
        await closed.wait()                     # loaded, but start() is not done yet
        return worker

    monkeypatch.setattr(DecoderProcess, "spawn", staticmethod(slow_spawn))
    starting = asyncio.ensure_future(stt.start())
    await until(lambda: len(spawned) == 2)
    await stt.close()
    closed.set()
    with pytest.raises(RuntimeError, match="closed while starting"):
        await asyncio.wait_for(starting, 60)
    assert all(w.proc.returncode is not None for w in spawned)
    assert stt._all == set() and stt._idle is None
    with pytest.raises(RuntimeError, match="closed"):
        await stt.decode(b"\0\0" * 800)


async def test_close_is_bounded_even_when_a_decoder_neither_answers_nor_goes_away(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A decoder stuck in its utterance, whose pipe a stray child holds open even after it is
    killed: close() still returns, after its grace, stop and reap bounds."""
    for name, seconds in (("STOP_WAIT", 0.2), ("REAP_WAIT", 0.3)):
        monkeypatch.setattr(sphinx_proc, name, seconds)
    monkeypatch.setattr(pocketsphinx, "CLOSE_GRACE", 0.2)
    pid_file = tmp_path / "child.pid"

    async def stuck_spawn(decoder_args: dict[str, Any]) -> DecoderProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STUCK, str(pid_file), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and await proc.stdout.read(1) == b"R"
        return DecoderProcess(proc)

    monkeypatch.setattr(DecoderProcess, "spawn", staticmethod(stuck_spawn))
    stt = PocketsphinxSTT(BackendConfig("pocketsphinx"), AGENT, LLM_CFG, workers=1)
    await stt.start()
    [stuck] = stt._all
    try:
        decoding = asyncio.ensure_future(stt.decode(b"\0\0" * 8000))
        await until(lambda: len(stt._busy) == 1)
        await asyncio.wait_for(stt.close(), 10)          # ~1 s with these bounds
        assert stuck.proc.returncode == -signal.SIGKILL
        with pytest.raises(RuntimeError, match="closed"):   # its process died: not answered
            await asyncio.wait_for(decoding, 10)
        assert not stt._busy and not stt._tasks
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert stuck.proc.stdout is not None           # its pipe ends with the child:
        await asyncio.wait_for(stuck.proc.stdout.read(), 10)   # then the process is all gone
