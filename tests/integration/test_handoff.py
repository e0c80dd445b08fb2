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
import json
import time
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from patterd.call.handoff import LOST_APOLOGY, LOST_OUTCOME
from patterd.carriers.twilio.signature import compute_signature
from patterd.carriers.twilio.webhooks import stream_url
from patterd.simulate import CallResult, Dtmf, Wait, WaitForAgent, say, simulate_call
from patterd.simulate.twilio_wire import parse_twiml
from tests.integration.test_load_balanced import records, started_api
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.cluster import Cluster
from tests.support.fakes.openai_chat import FakeOpenAIChat, Reply
from tests.support.media_client import twilio_token
from tests.support.tcp_proxy import proxied_url

pytestmark = pytest.mark.slow

CALL_TIMEOUT = 60.0


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAIChat]:
    """The language model every replica asks (on 127.0.0.1), numbering its answers."""
    fake = FakeOpenAIChat()
    fake.url = await fake.start()          # type: ignore[attr-defined]
    for n in range(120):
        fake.replies.append(Reply(f"Answer number {n}."))
    try:
        yield fake
    finally:
        await fake.stop()


def llm_section(llm: FakeOpenAIChat) -> dict[str, Any]:
    return {"provider": "openai", "api_key": llm.api_key, "base_url": llm.url,  # type: ignore
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


async def test_draining_replica_hands_its_calls_to_the_others(
        tmp_path: Path, pg_url: str, llm: FakeOpenAIChat) -> None:  # noqa: F811
    """After the move each caller speaks (the replicas' offline recogniser hears it): the
    words are answered with the whole conversation before them."""
    phrase = await say("what are your opening hours")
    spoken = [WaitForAgent(), Dtmf("1"), WaitForAgent(), Wait(9.0), phrase,
              WaitForAgent(timeout=20), Wait(0.5)]
    async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=60,
                       extra={"llm": llm_section(llm),
                              "server": {"handoff_delay": 2.0}}) as cluster:
        api = await started_api(cluster)
        try:
            tasks = await place(cluster, api, 6, 9.0, steps=spoken)   # each past its 1st answer
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
        # one greeting, both turns answered (each waited for), on whichever replica: at most
        # three lines heard (a greeting said again would make four; two answers heard back to
        # back can make two)
        assert agent_lines(r) <= 3, r.transcript
        rec = recs[r.call_id]
        handoffs = [e for e in rec["events"] if e["type"] == "handoff"]
        roles = [(ln["role"], ln.get("dtmf", "")) for ln in rec["transcript"]]
        assert roles == [("agent", ""), ("caller", "1"), ("agent", ""), ("caller", ""),
                         ("agent", "")], (r.call_id, rec["transcript"])
        said = [ln["text"] for ln in rec["transcript"] if ln["role"] == "agent"]
        assert said[0] == "Hello." and all(t.startswith("Answer number") for t in said[1:])
        assert rec["transcript"][3]["text"], rec["transcript"]      # the words heard
        assert not any(ln.get("interrupted") for ln in rec["transcript"]), rec["transcript"]
        assert rec["outcome"] == "completed" and rec["status"] == "completed", rec
        if r.call_id in moved:
            assert len(handoffs) == 1 and handoffs[0]["ok"] is True, handoffs
            h = handoffs[0]
            assert h["from"] != h["to"] and 0 <= h["gap"] < 2.0, h
        else:
            assert not handoffs, handoffs
    # The caller's words after the move were asked with the whole conversation before them.
    second = [b for b in llm.bodies if len(user_turns(b)) == 2]
    assert len(second) == 6 and len(llm.bodies) == 12
    for body in second:
        first, words = user_turns(body)
        assert first == "[The caller pressed 1 on the keypad]" and words and "[" not in words
        assistant = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert assistant[0] == "Hello." and assistant[1].startswith("Answer number"), assistant


# ------------------------------------------------------------------------ what can go wrong

async def twilio_start(cluster: Cluster, call_id: str, params: dict[str, str], *,
                       hold: float = 3.0) -> int | None:
    """A Twilio media stream for ``call_id`` with ``params`` as its ``<Parameter>``s, opened
    through HAProxy with a valid upgrade signature, marks echoed as Twilio does; the close
    code the daemon answered with, or None when it kept the socket open for ``hold`` seconds
    (then the stream ends with ``stop``, as Twilio ends it)."""
    url = stream_url(cluster.lb_url)
    sig = compute_signature(cluster.config.carrier.auth_token.encode(), url, []).decode()
    sid = "MZ" + "7" * 32
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(cluster.lb_url + "/media/twilio",
                                   headers={"X-Twilio-Signature": sig}) as ws:
            await ws.send_str(json.dumps({"event": "start", "streamSid": sid, "start": {
                "streamSid": sid, "callSid": call_id,
                "accountSid": cluster.config.carrier.account_sid, "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}}}))
            try:
                async with asyncio.timeout(hold):
                    async for msg in ws:
                        frame = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT \
                            else {}
                        if frame.get("event") == "mark":
                            await ws.send_str(json.dumps({"event": "mark", "streamSid": sid,
                                                          "mark": frame["mark"]}))
            except TimeoutError:
                await ws.send_str(json.dumps({"event": "stop", "streamSid": sid}))
                return None
            return ws.close_code


def moved_stream(result: CallResult) -> dict[str, str]:
    """The ``<Parameter>``s of the TwiML update that moved the call (the hand-off)."""
    for action in result.actions:
        doc = action.fields.get("Twiml", "")
        if action.action == "twiml" and "handoff" in doc:
            stream = parse_twiml(doc)[0].find("Stream")
            assert stream is not None, doc
            return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    raise AssertionError(f"no hand-off update among {[a.action for a in result.actions]}")


async def test_moved_streams_are_checked_replays_and_forgeries_refused_and_no_state_ends_the_call(
        tmp_path: Path, pg_url: str, llm: FakeOpenAIChat) -> None:  # noqa: F811
    async with Cluster(tmp_path, pg_url, replicas=2, drain_timeout=60,
                       extra={"llm": llm_section(llm)}) as cluster:
        api = await started_api(cluster)
        try:
            call = asyncio.create_task(simulate_call(
                cluster.config, cluster.lb_url, conversation(6.0), api=api,
                timeout=CALL_TIMEOUT, keep_audio=False))
            while cluster.count("media_started") < 1:
                await asyncio.sleep(0.02)
            await asyncio.sleep(2.0)
            holder = [r.index for r in cluster.replicas if r.call_ids("media_started")]
            cluster.drain(holder[0])
            result = await asyncio.wait_for(call, CALL_TIMEOUT)
            await cluster.replicas[holder[0]].wait_exit(30)
            params = moved_stream(result)
            # The hand-off's own token, replayed (the state was taken once already).
            replayed = await twilio_start(cluster, result.call_id, params)
            # A token that does not verify.
            forged = await twilio_start(cluster, result.call_id, {
                **params, "stream_token": params["stream_token"][:-2] + "xx"})
            # A valid token (the carrier credential mints it) naming a hand-off whose state
            # never existed: the call cannot go on as the conversation it was.
            other = "CA" + "5e" * 16
            lost = await twilio_start(cluster, other, {
                "stream_token": twilio_token(other), "resumed": "1",
                "handoff": "no-such-handoff", "direction": "inbound"}, hold=12.0)
            recs = await records(cluster, [other],
                                 lambda rec: rec.get("ended_at") is not None)
            survivor = cluster.replicas[1 - holder[0]]
            lost_count = await metric(survivor.url, "patterd_call_handoffs_total",
                                      'result="lost"')
        finally:
            await api.close()
    assert result.ok and result.outcome == "completed", (result.outcome, result.errors)
    assert params["handoff"] and params["resumed"] == "1" and params["stream_token"]
    assert replayed == 4403 and forged == 4403, (replayed, forged)
    refused = [ln for ln in survivor.lines() if ln.get("event") == "media_start_refused"]
    assert [ln["reason"] for ln in refused] == ["the stream token was used already",
                                                "no valid stream token for this call"], refused
    rec = recs[other]
    assert rec["outcome"] == LOST_OUTCOME, rec
    assert any(e["type"] == "handoff" and e["ok"] is False and e["stage"] == "resume"
               for e in rec["events"]), rec["events"]
    apology = [ln for ln in rec["transcript"] if ln["role"] == "agent"]
    assert [ln["text"] for ln in apology] == [LOST_APOLOGY], apology
    assert any(e["type"] == "hangup" and e.get("reason") == LOST_OUTCOME
               for e in rec["events"]), rec["events"]
    assert lost is None, lost    # served (then ended through the carrier), not refused
    assert lost_count == 1


# ------------------------------------------------------------------------ a rolling restart

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_a_rolling_restart_of_every_replica_keeps_every_call(
        tmp_path: Path, pg_url: str, carrier: str, llm: FakeOpenAIChat) -> None:  # noqa: F811
    """50 calls in mid-conversation; the three replicas restarted one after another (each
    drained with SIGTERM, started again, back in HAProxy's rotation before the next): every
    call goes on where it was, however often it moved."""
    calls = 50
    async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=90, carrier=carrier,
                       log_level="warning",
                       extra={"llm": llm_section(llm),
                              "server": {"handoff_delay": 1.5}}) as cluster:
        api = await started_api(cluster)
        try:
            tasks = [asyncio.create_task(simulate_call(
                cluster.config, cluster.lb_url, conversation(40.0), api=api,
                signer=cluster.signer, timeout=90, keep_audio=False))
                for _ in range(calls)]
            deadline = time.monotonic() + 30
            while len(llm.requests) < calls:      # every call past its first answer
                assert time.monotonic() < deadline, len(llm.requests)
                assert not any(t.done() for t in tasks), [t.result() for t in tasks
                                                          if t.done()][:1]
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            began = time.monotonic()
            steps = []
            for i in range(3):
                t0 = time.monotonic()
                cluster.drain(i)
                code = await cluster.replicas[i].wait_exit(30)
                assert code == 0, cluster.replicas[i].log_tail()
                t1 = time.monotonic()
                await cluster.restart(i)
                steps.append(f"r{i}: exited {t1 - t0:.1f} s, back "
                             f"{time.monotonic() - t1:.1f} s")
            took = time.monotonic() - began
            assert not any(t.done() for t in tasks), "calls ended during the restart"
            results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        finally:
            await api.close()
        recs = await records(cluster, [r.call_id for r in results],
                             lambda rec: rec.get("ended_at") is not None, timeout=20)
    gaps = [g for r in results for g in r.stream_gaps]
    moves = [sum(1 for e in recs[r.call_id]["events"] if e["type"] == "handoff")
             for r in results]
    print(f"\n{carrier}: rolling restart of 3 replicas with {calls} calls took {took:.1f} s "
          f"({'; '.join(steps)}); "
          f"moves per call {sorted(moves)}; caller-side gap p50 {percentile(gaps, 0.5):.3f} s,"
          f" p95 {percentile(gaps, 0.95):.3f} s, max {max(gaps or [0]):.3f} s; "
          f"unsent caller frames {sum(r.unsent_frames for r in results)}")
    assert all(m >= 1 for m in moves), moves      # every call moved at least once
    for r in results:
        assert r.ok and r.outcome == "completed", (r.call_id, r.outcome, r.errors)
        assert agent_lines(r) <= 3, r.transcript          # no greeting repeated
        rec = recs[r.call_id]
        roles = [(ln["role"], ln.get("dtmf", "")) for ln in rec["transcript"]]
        assert roles == [("agent", ""), ("caller", "1"), ("agent", ""), ("caller", "2"),
                         ("agent", "")], (r.call_id, rec["transcript"])
        assert rec["outcome"] == "completed", rec
        assert all(e["ok"] for e in rec["events"] if e["type"] == "handoff"), rec["events"]
        assert len(r.stream_gaps) == len([e for e in rec["events"] if e["type"] == "handoff"])
    if carrier == "telnyx":     # the old stream listened until the new one was up
        assert all(g == 0.0 for g in gaps) and sum(r.unsent_frames for r in results) == 0
    second = [b for b in llm.bodies if user_turns(b)[-1:] == ["[The caller pressed 2 on the "
                                                             "keypad]"]]
    assert len(second) == calls
    for body in second:     # answered with the whole conversation
        assert user_turns(body) == ["[The caller pressed 1 on the keypad]",
                                    "[The caller pressed 2 on the keypad]"], body["messages"]


async def place(cluster: Cluster, api: Any, n: int, pause: float,
                steps: list[Any] | None = None) -> list[asyncio.Task[Any]]:
    """``n`` calls of :func:`conversation` (or ``steps``), one after another's stream started
    (so HAProxy spreads them), each past its first answer when this returns."""
    tasks = []
    for _ in range(n):
        before = cluster.count("media_started")
        tasks.append(asyncio.create_task(simulate_call(
            cluster.config, cluster.lb_url, steps or conversation(pause), api=api,
            signer=cluster.signer, timeout=CALL_TIMEOUT, keep_audio=False)))
        while cluster.count("media_started") <= before:
            await asyncio.sleep(0.02)
    await asyncio.sleep(2.0)
    return tasks


async def test_a_target_killed_mid_handoff_leaves_no_call_billing(
        tmp_path: Path, pg_url: str, llm: FakeOpenAIChat) -> None:  # noqa: F811
    """The first replica to take a moved call is killed at once: the calls still to move go
    to the third one, the calls the dead one had taken are hung up by a survivor through the
    carrier (``replica_lost``, their records whole); no call is left up."""
    async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=60,
                       extra={"llm": llm_section(llm)}) as cluster:
        api = await started_api(cluster)
        try:
            tasks = await place(cluster, api, 9, 12.0)
            holding = [len(r.call_ids("media_started")) for r in cluster.replicas]
            victim = max(range(3), key=lambda i: holding[i])
            cluster.drain(victim)
            target = None
            deadline = time.monotonic() + 15
            while target is None:
                assert time.monotonic() < deadline, "no call was resumed anywhere"
                for r in cluster.replicas:
                    if r.index != victim and r.events("handoff_resumed"):
                        target = r
                await asyncio.sleep(0.01)
            cluster.kill(target.index)
            assert await cluster.replicas[victim].wait_exit(40) == 0
            results = await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT)
        finally:
            await api.close()
        recs = await records(cluster, [r.call_id for r in results],
                             lambda rec: rec.get("ended_at") is not None, timeout=20)
    lost = target.call_ids("media_started")    # moved there (resumed or about to be)
    third = next(r for r in cluster.replicas if r.index not in (victim, target.index))
    print(f"\nr{victim} drained, r{target.index} killed with {len(lost)} moved call(s), "
          f"r{third.index} took {len(third.events('handoff_resumed'))}: "
          f"{[(r.outcome, recs[r.call_id]['outcome']) for r in results if r.call_id in lost]}")
    for r in results:
        rec = recs[r.call_id]
        assert rec.get("ended_at") is not None, rec         # no call left billing
        if r.call_id in lost:
            # hung up by a survivor (replica_lost); or its stream died with the process before
            # the move was over — Twilio ends a call whose <Connect><Stream> closes
            assert r.outcome in ("hung_up_by_agent", "stream_closed"), (r.call_id, r.outcome)
            assert rec["outcome"] in ("replica_lost", "completed"), rec
        else:
            assert r.ok and r.outcome == "completed", (r.call_id, r.outcome, r.errors)
            assert rec["outcome"] == "completed", rec
        said = [ln for ln in rec["transcript"] if ln["role"] == "agent"]
        assert said and said[0]["text"] == "Hello.", rec["transcript"]


async def test_with_the_store_unreachable_no_call_moves_until_it_is_back(
        tmp_path: Path, pg_url: str, llm: FakeOpenAIChat) -> None:  # noqa: F811
    """The draining replica cannot reach the shared store: no call is moved while it is away
    (nobody could take a state it cannot write), the calls carry on where they are, and once
    the store is back they are moved and finish elsewhere — none lost, records whole."""
    proxy, via_proxy = await proxied_url(pg_url)
    try:
        async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=60,
                           store_urls={0: via_proxy},
                           extra={"llm": llm_section(llm)}) as cluster:
            api = await started_api(cluster)
            try:
                tasks = await place(cluster, api, 6, 12.0)
                ours = cluster.replicas[0].call_ids("media_started")
                assert ours, "no call on the replica to drain"
                await proxy.cut()
                cluster.drain(0)
                # below the 6 s after which the others would take it for dead
                await asyncio.sleep(4.0)
                during = [ln["event"] for ln in cluster.replicas[0].lines()]
                await proxy.resume()
                code = await cluster.replicas[0].wait_exit(40)
                results = await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT)
            finally:
                await api.close()
            recs = await records(cluster, [r.call_id for r in results],
                                 lambda rec: rec.get("ended_at") is not None, timeout=20)
    finally:
        await proxy.cut()
    assert code == 0, cluster.replicas[0].log_tail()
    assert "handoff_peers_unknown" in during and "handoff_sent" not in during, during
    assert len(cluster.replicas[0].events("handoff_sent")) == len(ours)
    for r in results:
        assert r.ok and r.outcome == "completed", (r.call_id, r.outcome, r.errors)
        rec = recs[r.call_id]
        assert rec["outcome"] == "completed" and len(rec["transcript"]) == 5, rec
        moved = [e for e in rec["events"] if e["type"] == "handoff"]
        assert [e["ok"] for e in moved] == ([True] if r.call_id in ours else []), moved
