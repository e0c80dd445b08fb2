"""Several real ``patterd`` processes behind a real HAProxy (a templated copy of
``deploy/haproxy/haproxy.cfg``, ``balance roundrobin``, health checks on /readyz), sharing the
machine's PostgreSQL, exercised by the simulator exactly as Twilio calls: a call's signed voice
webhook, its media WebSocket and its status callback each go through HAProxy, so they land on
different replicas; the replicas' own logs say which one handled what.

Then one replica is drained (SIGTERM) and one killed (SIGKILL) while calls are live: the
drained replica's calls finish, the killed replica's calls are hung up by a survivor through
the carrier's REST API, and every record — merged from the parts each replica wrote — holds
what each replica saw.
PostgreSQL isolation as in test_store_postgres.py (a database per module, a schema per test).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from patterd.simulate import (ApiRequest, CallResult, CarrierApi, Dtmf, Wait, WaitForAgent,
                              make_api, simulate_call)
from patterd.store.merge import TERMINAL
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.cluster import Cluster

pytestmark = pytest.mark.slow

CALL_TIMEOUT = 60.0
# Merged record of a call driven by SHORT (see AGENT in tests/support/cluster.py).
TRANSCRIPT = [("agent", "Hello.", ""), ("caller", "", "1"), ("agent", "You pressed one.", ""),
              ("caller", "", "2"), ("agent", "You pressed two.", ""), ("caller", "", "9"),
              ("agent", "Goodbye!", "")]


def short() -> list[Any]:
    """Three DTMF turns, the last one makes the agent hang up (~4 s)."""
    return [WaitForAgent(), Dtmf("1"), WaitForAgent(), Dtmf("2"), WaitForAgent(), Dtmf("9"),
            WaitForAgent(required=False)]


def long() -> list[Any]:
    """The same with pauses: live for ~10 s, so a replica can be drained or killed mid-call."""
    return [WaitForAgent(), Dtmf("1"), WaitForAgent(), Wait(3.0), Dtmf("2"), WaitForAgent(),
            Wait(3.0), Dtmf("9"), WaitForAgent(required=False)]


class Calls:
    """Calls placed one after another through HAProxy, sharing one Twilio REST stand-in."""

    def __init__(self, cluster: Cluster, api: CarrierApi) -> None:
        self.cluster, self.api = cluster, api
        self.tasks: list[asyncio.Task[CallResult]] = []

    async def place(self, n: int, steps: Any) -> list[asyncio.Task[CallResult]]:
        """Start ``n`` calls, each once the previous one's media stream has started
        somewhere: while calls are being placed, HAProxy sees webhook, socket, webhook,
        socket… so each call's webhook and socket go to consecutive replicas."""
        started = []
        for _ in range(n):
            before = self.cluster.count("media_started")
            task = asyncio.create_task(simulate_call(self.cluster.config, self.cluster.lb_url,
                                                     steps(), api=self.api,
                                                     timeout=CALL_TIMEOUT, keep_audio=False))
            started.append(task)
            self.tasks.append(task)
            deadline = time.monotonic() + 15
            while self.cluster.count("media_started") <= before:
                assert not task.done() or task.result().ok, task.result().errors
                assert time.monotonic() < deadline, "the call's media stream did not start"
                await asyncio.sleep(0.02)
        return started

    async def results(self, tasks: list[asyncio.Task[CallResult]]) -> list[CallResult]:
        return list(await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT + 30))


async def records(cluster: Cluster, ids: list[str], ready: Any,
                  timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """``GET /v1/calls/{id}`` through HAProxy (so from different replicas) until ``ready(rec)``
    holds for every call or ``timeout`` passes (the replicas write in the background)."""
    deadline = time.monotonic() + timeout
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as http:
        while True:
            for cid in ids:
                status, body = await cluster.admin_get(f"/v1/calls/{cid}", http)
                out[cid] = body if status == 200 else {"_status": status}
            if all(ready(r) for r in out.values()) or time.monotonic() > deadline:
                return out
            await asyncio.sleep(0.2)


def lb_routes(cluster: Cluster, path: str, call_id: str) -> list[int]:
    """The replicas HAProxy sent ``call_id``'s webhooks on ``path`` to (its log captures the
    CallSid of every Twilio webhook: ``{CA…}``)."""
    out = []
    for line in cluster.haproxy_log.read_text(errors="replace").splitlines():
        if "{" + call_id + "}" in line and f"POST {path} " in line:
            m = re.search(r" patterd/r(\d+) ", line)
            assert m, line
            out.append(int(m.group(1)))
    return out


def where(cluster: Cluster, call_id: str) -> dict[str, list[int]]:
    """Which replica handled the call's voice webhook, media stream and status callback: the
    first two from the replicas' own logs, the status callback from HAProxy's (a replica
    logs call_ended only when the callback changed what it knew)."""
    return {"webhook": cluster.who_logged("call_answering", call_id),
            "media": cluster.who_logged("media_started", call_id),
            "status": lb_routes(cluster, "/webhooks/twilio/status", call_id)}


async def started_api(cluster: Cluster) -> CarrierApi:
    api = make_api(cluster.config)
    assert api is not None
    await api.start()
    return api


# --------------------------------------------------------------------------------------------


async def test_calls_through_haproxy_land_on_different_replicas(tmp_path: Path,
                                                                pg_url: str) -> None:  # noqa: F811
    async with Cluster(tmp_path, pg_url, replicas=3) as cluster:
        api = await started_api(cluster)
        try:
            calls = Calls(cluster, api)
            results = await calls.results(await calls.place(6, short))
        finally:
            await api.close()
        for r in results:
            assert r.ok and r.outcome == "hung_up_by_agent", (r.outcome, r.errors, r.warnings)
            assert [a.action for a in r.actions] == ["hangup"]
            assert [t.text for t in r.turns] == ["1", "2", "9"], r.turns
        await asyncio.sleep(0.3)      # HAProxy logs a request when it is over
        spread = {r.call_id: where(cluster, r.call_id) for r in results}
        print("\nreplica per call (webhook, media, status):")
        for cid, w in spread.items():
            print(f"  {cid}: {w}")
        for cid, w in spread.items():
            # Exactly one replica answered each part of the call...
            assert all(len(v) == 1 for v in w.values()), (cid, w)
            assert lb_routes(cluster, "/webhooks/twilio/voice", cid) == w["webhook"]
            # ...and the media stream was never on the replica that answered the webhook:
            # the call context travelled in the signed stream parameters.
            assert w["webhook"] != w["media"], (cid, w)
        # Every replica served webhooks, media streams and status callbacks.
        for part in ("webhook", "media", "status"):
            assert {w[part][0] for w in spread.values()} == {0, 1, 2}, (part, spread)
        # Some calls' status callbacks reached a replica that did not hold their stream
        # (which replica gets which callback depends on the order the calls end in, so
        # three different replicas for one call is likely but not certain).
        assert any(w["status"] != w["media"] for w in spread.values()), spread
        # HAProxy's own log agrees: every replica answered voice webhooks, 101 upgrades and
        # status callbacks, and nothing failed.
        log = cluster.haproxy_log.read_text()
        for name in ("r0", "r1", "r2"):
            assert f"patterd/{name} " in log
        codes = re.findall(r" patterd/r\d \S+ (\d{3}) ", log)
        assert len(codes) == 18 and set(codes) == {"200", "101", "204"}, log

        # What holds whoever wrote last: every call has a record, readable through any
        # replica, with its identity and a final status.
        recs = await records(cluster, [r.call_id for r in results],
                             lambda rec: rec.get("ended_at") is not None)
        for r in results:
            rec = recs[r.call_id]
            assert rec.get("call_id") == r.call_id, rec
            assert rec["carrier"] == "twilio" and rec["direction"] == "inbound"
            assert rec["ended_at"] is not None, rec


async def test_records_of_a_call_handled_by_several_replicas_are_merged(
        tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """The media replica (transcript, DTMF, hang-up event) and the replica that received the
    status callback (status history, final status) each write what they saw; the stored
    record is their merge, so neither half is lost."""
    async with Cluster(tmp_path, pg_url, replicas=3) as cluster:
        api = await started_api(cluster)
        try:
            calls = Calls(cluster, api)
            results = await calls.results(await calls.place(6, short))
        finally:
            await api.close()
        assert all(r.ok for r in results), [(r.outcome, r.errors) for r in results]
        await asyncio.sleep(0.3)      # HAProxy logs a request when it is over
        split = [r for r in results
                 if where(cluster, r.call_id)["media"] != where(cluster, r.call_id)["status"]]
        assert split, "no call had its media and status callback on different replicas"

        def merged(rec: dict[str, Any]) -> bool:
            return (rec.get("status") == "completed" and len(rec.get("transcript", [])) == 7
                    and rec.get("outcome") == "completed")

        recs = await records(cluster, [r.call_id for r in results], merged)
        for r in results:
            rec = recs[r.call_id]
            lines = [(ln["role"], ln["text"], ln.get("dtmf", ""))
                     for ln in rec.get("transcript", [])]
            assert lines == TRANSCRIPT, (r.call_id, where(cluster, r.call_id), rec)
            assert rec["dtmf"] == "129"
            assert rec["status"] == "completed" and rec["outcome"] == "completed", rec
            assert "completed" in [h["status"] for h in rec["status_history"]], rec
            assert any(e["type"] == "hangup" for e in rec["events"]), rec


async def test_draining_a_replica_lets_its_calls_finish_and_sends_new_calls_elsewhere(
        tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """With ``server.handoff: false`` (or when a call cannot be moved, test_handoff.py) a
    draining replica keeps its calls until they end."""
    async with Cluster(tmp_path, pg_url, replicas=3, drain_timeout=40,
                       extra={"server": {"handoff": False}}) as cluster:
        api = await started_api(cluster)
        try:
            calls = Calls(cluster, api)
            live = await calls.place(6, long)
            holding = [len(r.call_ids("media_started")) for r in cluster.replicas]
            victim = max(range(3), key=lambda i: holding[i])
            its_calls = cluster.replicas[victim].call_ids("media_started")
            assert its_calls and not any(t.done() for t in live), holding
            cluster.drain(victim)
            # /readyz turns 503 and HAProxy takes it out of the rotation within ~2 s.
            took = await cluster.wait_backend(victim, "DOWN", timeout=5)
            print(f"\ndrained r{victim} (held {len(its_calls)} calls): HAProxy marked it DOWN "
                  f"after {took:.2f} s")
            assert not all(t.done() for t in live), "the calls ended before the drain mattered"
            fresh = await calls.place(3, short)
            results = await calls.results(live + fresh)
            code = await cluster.replicas[victim].wait_exit(30)
        finally:
            await api.close()
        # Every call, including the draining replica's own, ended normally.
        for r in results:
            assert r.ok and r.outcome == "hung_up_by_agent", (r.call_id, r.outcome, r.errors)
        assert code == 0, cluster.replicas[victim].log_tail()
        events = [ln["event"] for ln in cluster.replicas[victim].lines()]
        assert "draining" in events and events[-1] == "stopped", events
        assert "drain_timeout" not in events
        # The new calls went to the others only.
        for r in results[6:]:
            w = where(cluster, r.call_id)
            assert victim not in w["webhook"] + w["media"] + w["status"], (r.call_id, w)


async def test_killing_a_replica_leaves_the_others_serving(tmp_path: Path,
                                                           pg_url: str) -> None:  # noqa: F811
    """SIGKILL one replica with live calls: the other replicas' calls go on, HAProxy drops it,
    new calls succeed. What becomes of the dead replica's calls is printed (observed)."""
    async with Cluster(tmp_path, pg_url, replicas=3) as cluster:
        api = await started_api(cluster)
        try:
            calls = Calls(cluster, api)
            live = await calls.place(6, long)
            holding = [len(r.call_ids("media_started")) for r in cluster.replicas]
            victim = max(range(3), key=lambda i: holding[i])
            dead_calls = cluster.replicas[victim].call_ids("media_started")
            killed_at = time.monotonic()
            cluster.kill(victim)
            took = await cluster.wait_backend(victim, "DOWN", timeout=5)
            fresh = await calls.place(3, short)
            results = await calls.results(live + fresh)
        finally:
            await api.close()
        assert cluster.replicas[victim].returncode == -9
        print(f"\nkilled r{victim} holding {len(dead_calls)} call(s); HAProxy marked it DOWN "
              f"after {took:.2f} s")
        for r in results[:6]:
            if r.call_id in dead_calls:
                ended = r.started_at + r.duration
                print(f"  its call {r.call_id}: {r.outcome} ({r.detail}); REST requests from "
                      f"the daemon: {[a.action for a in r.actions]}; ended "
                      f"{ended - (time.time() - (time.monotonic() - killed_at)):.1f} s "
                      f"after the kill")
        survivors = [r for r in results if r.call_id not in dead_calls]
        for r in survivors:
            assert r.ok and r.outcome == "hung_up_by_agent", (r.call_id, r.outcome, r.errors)
        for r in results[6:]:
            w = where(cluster, r.call_id)
            assert victim not in w["webhook"] + w["media"], (r.call_id, w)
        # The dead replica's calls were not left up: the carrier ended them (the stream
        # closed), and a survivor received their final status callback.
        for r in results[:6]:
            if r.call_id in dead_calls:
                assert r.outcome != "error" or "still up" not in " ".join(r.errors), r.errors
                assert [i for i in lb_routes(cluster, "/webhooks/twilio/status", r.call_id)
                        if i != victim], (r.call_id, where(cluster, r.call_id))


async def test_calls_of_a_killed_replica_are_hung_up_by_a_survivor(
        tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """When a replica dies mid-call, a survivor notices (its heartbeat lapses in the shared
    store), ends each of its calls through the carrier's REST API (Twilio: POST
    /Calls/{sid}.json Status=completed) within 15 s, and records it: status ``completed``,
    outcome ``replica_lost``. Its part and the carrier's final status callback (stored by
    whichever replica got it) may reach the store in either order; no read on the way says
    the call ended with a status that is not final."""
    async with Cluster(tmp_path, pg_url, replicas=3) as cluster:
        api = await started_api(cluster)
        hangups: dict[str, list[ApiRequest]] = {}
        try:
            calls = Calls(cluster, api)
            live = await calls.place(6, long)
            holding = [len(r.call_ids("media_started")) for r in cluster.replicas]
            victim = max(range(3), key=lambda i: holding[i])
            dead_calls = sorted(cluster.replicas[victim].call_ids("media_started"))
            for cid in dead_calls:   # every REST request about these calls, from now on
                hangups[cid] = []
                api.watchers[cid] = hangups[cid].append
            killed_at = time.time()
            cluster.kill(victim)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(
                    any(q.method == "POST" and q.fields.get("Status") == "completed"
                        for q in hangups[cid]) for cid in dead_calls):
                await asyncio.sleep(0.1)
            await calls.results(live)
        finally:
            await api.close()
        for cid in dead_calls:
            asked = [q for q in hangups[cid]
                     if q.method == "POST" and q.fields.get("Status") == "completed"]
            assert asked, (f"no survivor hung up {cid} (held by the killed r{victim}) "
                           f"within 15 s; REST requests about it: {hangups[cid]}")
            print(f"\n{cid}: REST hang-up {asked[0].at - killed_at:.2f} s after the kill")
        # The survivor's part and the carrier's final callback (on any replica) reach the
        # store in either order: every read on the way says a terminal status once the call
        # has ended, and the record settles on the survivor's account.
        seen: list[dict[str, Any]] = []

        def settled(rec: dict[str, Any]) -> bool:
            seen.append(rec)
            return rec.get("outcome") == "replica_lost"

        recs = await records(cluster, dead_calls, settled)
        for rec in seen:
            if rec.get("ended_at") is not None:
                assert rec.get("status") in TERMINAL, rec
        for cid in dead_calls:
            rec = recs[cid]
            assert rec.get("outcome") == "replica_lost", rec
            assert rec.get("status") == "completed" and rec.get("ended_at"), rec
            assert any(e["type"] == "hangup" and e.get("reason") == "replica_lost"
                       for e in rec.get("events", [])), rec
