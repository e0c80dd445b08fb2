"""Hand-off on drain: a draining replica moves its live calls to the others.

Three real ``patterd`` processes behind a real HAProxy sharing the machine's PostgreSQL
(:class:`tests.support.cluster.Cluster`), driven by the carrier simulator exactly as Twilio
places calls. The agent is a language model (a real aiohttp server on 127.0.0.1 speaking
OpenAI's chat-completions protocol) so that what each request carries — the conversation's
history — shows whether a moved call kept it.
PostgreSQL isolation as in test_store_postgres.py (a database per module, a schema per test).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from patterd.simulate import CallResult, Dtmf, Wait, WaitForAgent, simulate_call
from tests.integration.test_load_balanced import records, started_api
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.cluster import Cluster
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply

pytestmark = pytest.mark.slow

CALL_TIMEOUT = 60.0


def llm_section(llm: FakeOpenAIChat, url: str) -> dict[str, Any]:
    return {"provider": "openai", "api_key": llm.api_key, "base_url": url,
            "model": "gpt-4o-mini"}


def conversation(pause: float) -> list[Any]:
    """Greeting, key 1 and its answer, ``pause`` seconds of quiet (the replica drains then),
    key 2 and its answer, then the caller hangs up."""
    return [WaitForAgent(), Dtmf("1"), WaitForAgent(), Wait(pause), Dtmf("2"), WaitForAgent(),
            Wait(0.5)]


def user_turns(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def agent_lines(result: CallResult) -> int:
    """How many times the caller heard the agent speak."""
    return sum(1 for ln in result.transcript if ln.who == "agent")


async def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of a replica's /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


async def test_draining_replica_hands_its_calls_to_the_others(tmp_path: Path,
                                                              pg_url: str) -> None:  # noqa: F811
    llm = FakeOpenAIChat()
    url = await llm.start()
    for n in range(40):
        llm.replies.append(Reply(f"Answer number {n}."))
    try:
        async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=60,
                           extra={"llm": llm_section(llm, url),
                                  "server": {"handoff_delay": 2.0}}) as cluster:
            api = await started_api(cluster)
            try:
                tasks = []
                for _ in range(6):
                    before = cluster.count("media_started")
                    tasks.append(asyncio.create_task(simulate_call(
                        cluster.config, cluster.lb_url, conversation(9.0), api=api,
                        timeout=CALL_TIMEOUT, keep_audio=False)))
                    while cluster.count("media_started") <= before:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(2.0)      # every call past its first answer
                holding = [len(r.call_ids("media_started")) for r in cluster.replicas]
                victim = max(range(3), key=lambda i: holding[i])
                moved = cluster.replicas[victim].call_ids("media_started")
                assert moved and not any(t.done() for t in tasks), holding
                drained_at = time.monotonic()
                cluster.drain(victim)
                code = await cluster.replicas[victim].wait_exit(30)
                exited_after = time.monotonic() - drained_at
                assert not all(t.done() for t in tasks), "the calls ended before the move"
                results = await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT)
                survivors = [r for r in cluster.replicas if r.index != victim]
                resumed = sum([await metric(r.url, "patterd_call_handoffs_total",
                                            'result="resumed"') for r in survivors])
            finally:
                await api.close()
            recs = await records(cluster, [r.call_id for r in results],
                                 lambda rec: rec.get("ended_at") is not None)
    finally:
        await llm.stop()
    print(f"\nr{victim} held {len(moved)} of 6 calls, exited {exited_after:.2f} s after "
          "SIGTERM")
    assert code == 0, cluster.replicas[victim].log_tail()
    # It left as soon as its calls were moved, not when they ended (they had ~8 s to go).
    assert exited_after < 6.0, exited_after
    assert resumed == len(moved)
    events = [ln["event"] for ln in cluster.replicas[victim].lines()]
    assert events.count("handoff_sent") == len(moved) and "drain_timeout" not in events
    for r in results:
        assert r.ok and r.outcome == "completed", (r.call_id, r.outcome, r.errors)
        # one greeting, both keys answered, on whichever replica: three lines heard
        assert agent_lines(r) == 3, r.transcript
        rec = recs[r.call_id]
        handoffs = [e for e in rec["events"] if e["type"] == "handoff"]
        roles = [(ln["role"], ln.get("dtmf", "")) for ln in rec["transcript"]]
        assert roles == [("agent", ""), ("caller", "1"), ("agent", ""), ("caller", "2"),
                         ("agent", "")], (r.call_id, rec["transcript"])
        said = [ln["text"] for ln in rec["transcript"] if ln["role"] == "agent"]
        assert said[0] == "Hello." and all(t.startswith("Answer number") for t in said[1:])
        assert not any(ln.get("interrupted") for ln in rec["transcript"]), rec["transcript"]
        assert rec["outcome"] == "completed" and rec["status"] == "completed", rec
        if r.call_id in moved:
            assert len(handoffs) == 1 and handoffs[0]["ok"] is True, handoffs
            h = handoffs[0]
            assert h["from"] != h["to"] and 0 <= h["gap"] < 2.0, h
        else:
            assert not handoffs, handoffs
    # The answer to key 2 of every call was asked with the whole conversation so far.
    second = [b for b in llm.bodies if user_turns(b)[-1:] == ["[The caller pressed 2 on the "
                                                             "keypad]"]]
    assert len(second) == 6
    for body in second:
        assert user_turns(body) == ["[The caller pressed 1 on the keypad]",
                                    "[The caller pressed 2 on the keypad]"], body["messages"]
        assistant = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert assistant[0] == "Hello." and assistant[1].startswith("Answer number"), assistant
