"""The process-wide workers outlive any one call: calls ending at the wrong instant, a worker
that dies, a malformed item — later callers are still heard and answered (issue 11)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from patterd.audio.batch_vad import BatchedVadStream
from patterd.simulate import Say, WaitForAgent, say, simulate_call
from patterd.simulate.runner import make_api
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.net import free_port

AGENT = {
    "agent": {"first_message": "Hi."},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["goodbye"], "reply": "Goodbye!", "action": {"hangup": True}},
    ], "fallback": "Sorry?"},
}


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


def twilio_cfg() -> Any:
    raw = twilio_raw(**AGENT)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


async def test_callers_hanging_up_mid_phrase_leave_the_next_caller_heard(daemon) -> None:  # type: ignore[no-untyped-def]
    """Six callers hang up 0.3–0.9 s into their first phrase (the shared VAD has a window of
    theirs queued when their stream ends); a seventh caller's phrase is still answered."""
    cfg = twilio_cfg()
    client = await daemon(cfg)            # stub STT ("goodbye"), stub TTS, Silero VAD
    phrase = await say("what are your opening hours")
    assert len(phrase.pcm) > 2 * 8000     # over a second of speech to cut into

    api = make_api(cfg)                   # one simulated carrier REST API for all calls
    assert api is not None
    await api.start()

    async def cut_short(seconds: float) -> Any:
        cut = Say(phrase.pcm[: int(seconds * 8000) * 2], "cut")
        return await simulate_call(cfg, url_of(client), [WaitForAgent(), cut], api=api,
                                   timeout=30)

    try:
        short = await asyncio.gather(*(cut_short(0.3 + 0.1 * i) for i in range(6)))
        last = await simulate_call(cfg, url_of(client),
                                   [WaitForAgent(), phrase, WaitForAgent(timeout=5)],
                                   api=api, timeout=30)
    finally:
        await api.close()
    assert all(r.outcome == "completed" for r in short), [(r.outcome, r.detail) for r in short]
    assert last.outcome == "hung_up_by_agent", (last.outcome, last.detail, last.errors)
    assert last.turns and last.turns[0].latency is not None
    rec = gateway_of(client).registry.get(last.call_id)
    assert [ln["text"] for ln in rec.transcript if ln["role"] == "agent"] == ["Hi.", "Goodbye!"]
    assert gateway_of(client).supervisor.errors == {}


async def test_readyz_is_503_while_the_vad_restarts_and_200_once_it_is_back(
        daemon, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    cfg = twilio_cfg()
    client = await daemon(cfg)
    gw = gateway_of(client)
    batcher = gw.backends.vad_batcher
    assert batcher.supervisor is gw.supervisor          # given backends report here too
    batcher.restart_delay = 0.5
    real_batch = batcher._batch

    async def crash_once(loop: asyncio.AbstractEventLoop) -> int:
        monkeypatch.setattr(batcher, "_batch", real_batch)
        raise RuntimeError("a bug outside any one window")

    monkeypatch.setattr(batcher, "_batch", crash_once)
    assert (await client.get("/readyz")).status == 200
    stream = BatchedVadStream(batcher=batcher)
    stream.submit(np.full(256, 3000, "<i2").tobytes())   # the next batch kills the loop
    await asyncio.sleep(0.2)
    down = await client.get("/readyz")
    assert down.status == 503
    assert await down.json() == {"status": "degraded", "down": {"vad": "restarting"}}
    assert (await client.get("/healthz")).status == 200   # alive: never restart the process
    await asyncio.sleep(0.6)
    up = await client.get("/readyz")
    assert up.status == 200 and (await up.json())["status"] == "ready"
    metrics = await (await client.get("/metrics")).text()
    assert 'patterd_internal_errors_total{component="vad"} 1.0' in metrics
    phrase = await say("goodbye")                         # calls are heard again
    result = await simulate_call(cfg, url_of(client),
                                 [WaitForAgent(), phrase, WaitForAgent(timeout=5)], timeout=30)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)


async def test_a_calls_vad_stream_is_labelled_with_its_call_id() -> None:
    """The batcher's failure reports name the call: the segmenter factory takes the id from
    the session whose method receives the events (or from ``label=``)."""
    from patterd.call.backends import default_segmenter

    class Session:
        call_id = "CA0123"

        def on_event(self, event: Any) -> None:
            pass

    factory, batcher = default_segmenter(twilio_cfg())
    try:
        assert factory(Session().on_event).stream.label == "CA0123"
        assert factory(lambda event: None, label="v3:abc").stream.label == "v3:abc"
        assert factory(lambda event: None).stream.label == ""
    finally:
        await batcher.aclose()
