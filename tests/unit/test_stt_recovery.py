"""Recovery within a call: Deepgram streams (a local server speaking /v1/listen) that drop or
are refused are reopened, and a failover chain returns to its first provider once it rested."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from patterd.audio.codecs import ulaw_encode
from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverSTT
from patterd.backends.stt.deepgram import DeepgramSTT
from patterd.config.model import AgentConfig
from tests.support.fakes.deepgram_listen import FakeDeepgramListen
from tests.unit.test_stt_deepgram import KEY, config, feed, silence, tone, until

REST = 0.2          # the tests' back-off: short, so a recovery is quick to see


class Errors(list[BaseException]):
    def __call__(self, layer: str, provider: str, exc: BaseException) -> None:
        self.append(exc)


async def started(*names: str) -> list[FakeDeepgramListen]:
    fakes = []
    for name in names:
        counter = itertools.count(1)
        fake = FakeDeepgramListen(KEY, recogniser=lambda s, i, n=name, c=counter:
                                  f"{n} utterance {next(c)}")
        fake.base = await fake.start()  # type: ignore[attr-defined]
        fakes.append(fake)
    return fakes


@pytest.fixture
async def dg() -> AsyncIterator[FakeDeepgramListen]:
    (fake,) = await started("first")
    yield fake
    await fake.stop()


def chain(*fakes: FakeDeepgramListen, errors: Errors) -> FailoverSTT:
    return FailoverSTT([DeepgramSTT(config(f.base), AgentConfig())  # type: ignore[attr-defined]
                        for f in fakes], on_error=errors, timeouts=[3.0] * len(fakes),
                       backoff=(REST, 2.0))


def utterance(ms: int = 600) -> bytes:
    return ulaw_encode(tone(ms) + silence(100))


async def test_a_stream_dropped_mid_utterance_is_reopened(dg: FakeDeepgramListen) -> None:
    """1011 NET-0000 in the middle of the caller's words: the utterance so far is replayed into
    a new socket, so it is still recognised; the next one goes to that socket. Before, every
    later finalize said 'every STT provider has failed on this call'."""
    dg.close_after_seconds, dg.close_times = 0.3, 1
    errors = Errors()
    stt = chain(dg, errors=errors)
    stream = stt.open_stream("PCMU")
    try:
        feed(stream, utterance())                   # the socket drops 0.3 s into it
        await until(lambda: bool(dg.sessions) and dg.sessions[0].done.is_set())
        first = await stream.finalize()
        assert first.text == "first utterance 2"    # heard whole by the second socket
        assert len(errors) == 1 and isinstance(errors[0], BackendError)
        assert errors[0].status == 1011 and errors[0].message.startswith("NET-0000")
        feed(stream, utterance())
        second = await stream.finalize()
        assert second.text == "first utterance 3"
        assert len(dg.sessions) == 2 and len(errors) == 1    # one reopened socket, kept
        assert dg.sessions[1].audio_seconds > 1.2            # the replay, then utterance 2
    finally:
        await stream.close()
        await stt.close()


async def test_a_stream_dropped_between_utterances_is_reopened_after_the_back_off(
        dg: FakeDeepgramListen) -> None:
    dg.close_after_seconds, dg.close_times = 0.2, 1
    errors = Errors()
    stt = chain(dg, errors=errors)
    stream = stt.open_stream("PCMU")
    try:
        feed(stream, ulaw_encode(silence(300)))     # no words; the socket drops anyway
        await until(lambda: len(errors) == 1)
        dropped = asyncio.get_running_loop().time()
        await until(lambda: len(dg.sessions) == 2)  # reopened without any utterance
        assert asyncio.get_running_loop().time() - dropped >= REST * 0.9
        assert stream.provider == "deepgram" and stream.reopened == 1
        feed(stream, utterance())
        assert (await stream.finalize()).text == "first utterance 1"
    finally:
        await stream.close()
        await stt.close()


async def test_a_refused_handshake_is_retried_for_the_next_turn(dg: FakeDeepgramListen) -> None:
    """429 on every handshake for a while: that utterance fails (each provider tried once,
    per utterance); once Deepgram accepts again, the next one is recognised."""
    dg.refuse = (429, "TOO_MANY_REQUESTS", "Too many concurrent requests.")
    errors = Errors()
    stt = chain(dg, errors=errors)
    stream = stt.open_stream("PCMU")
    try:
        feed(stream, utterance())
        with pytest.raises(BackendError, match="every STT provider failed on this utterance"):
            await stream.finalize()
        assert errors and all(getattr(e, "status", None) == 429 for e in errors)
        dg.refuse = None                            # the provider recovers
        await until(lambda: len(dg.sessions) == 1, timeout=5.0)   # reopened by the back-off
        feed(stream, utterance())
        assert (await stream.finalize()).text == "first utterance 1"
        assert len(dg.refused) == len(errors)
    finally:
        await stream.close()
        await stt.close()


async def test_a_refused_handshake_once_then_ok_costs_no_utterance(dg: FakeDeepgramListen) -> None:
    dg.refuse, dg.refuse_times = (503, "SERVICE_UNAVAILABLE", "Service unavailable."), 1
    errors = Errors()
    stt = chain(dg, errors=errors)
    stream = stt.open_stream("PCMU")
    try:
        await until(lambda: len(dg.sessions) == 1)  # retried after the back-off
        feed(stream, utterance())
        assert (await stream.finalize()).text == "first utterance 1"
        assert [getattr(e, "status", None) for e in errors] == [503]
    finally:
        await stream.close()
        await stt.close()


async def test_a_failover_chain_returns_to_its_first_provider() -> None:
    """The first provider refuses the call's handshake: the second recognises its words;
    once the first has rested, the utterance after the next one is the first's again."""
    first, second = await started("first", "second")
    first.refuse, first.refuse_times = (500, "INTERNAL", "Internal error."), 1
    errors = Errors()
    stt = chain(first, second, errors=errors)
    stream = stt.open_stream("PCMU")
    try:
        feed(stream, utterance())
        assert (await stream.finalize()).text == "second utterance 1"
        assert stream.provider == "deepgram" and len(second.sessions) == 1
        await asyncio.sleep(REST * 2.5)             # the first provider's rest is over
        feed(stream, utterance())
        assert (await stream.finalize()).text == "second utterance 2"   # never mid-utterance
        feed(stream, utterance())
        assert (await stream.finalize()).text == "first utterance 1"    # back to the first
        assert second.sessions[0].done.is_set()     # the fallback's socket was closed
        assert [getattr(e, "status", None) for e in errors] == [500]
    finally:
        await stream.close()
        await stt.close()
        for fake in (first, second):
            await fake.stop()
