"""The cluster core against this machine's PostgreSQL: several ClusterNodes in one process.

Each node has its own pool and LISTEN connection, exactly as separate replicas would; every
test works in a schema of its own (fixtures shared with test_store_postgres: the configured
or local server, else a throwaway one — never a skip). NOTIFY is database-wide, so nodes of
different tests hear each other's payloads; random replica ids keep them apart.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from patterd.cluster import REPLICA_LOST, ClusterNode, NoLiveOwner
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401
from tests.support.tcp_proxy import proxied_url

# Generous dead_after by default: a loaded machine must not make a live replica look dead.
FAST = {"heartbeat_every": 0.05, "dead_after": 30.0, "poll_every": 0.2}
DYING = {"dead_after": 1.0}   # where a death is the point of the test


class Replica:
    """What one node's daemon would see: the commands and orphans handed to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.applied: list[tuple[str, str, str, dict[str, Any]]] = []
        self.applied_at: dict[int, float] = {}   # args["n"] -> perf_counter at on_command
        self.orphans: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.node: ClusterNode

    async def on_command(self, call_id: str, carrier: str, kind: str,
                         args: dict[str, Any]) -> dict[str, Any]:
        if "n" in args:
            self.applied_at[args["n"]] = time.perf_counter()
        self.applied.append((call_id, carrier, kind, args))
        self.changed.set()
        if self.gate is not None:
            await self.gate.wait()
        if kind == "explode":
            raise RuntimeError("no such session")
        return {"ok": True, "by": self.name, "kind": kind, "args": args}

    async def on_orphan(self, call_id: str, carrier: str) -> None:
        self.orphans.append((call_id, carrier))
        self.changed.set()


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def cluster(pg_url: str) -> AsyncIterator[Start]:  # noqa: F811
    """Start replicas (``start(name, **node_kwargs)``); all stopped at the end."""
    replicas: list[Replica] = []

    async def start(name: str, *, dsn: str | None = None, replica_id: str | None = None,
                    **kwargs: Any) -> Replica:
        rep = Replica(name)
        rep.node = await ClusterNode.start(
            dsn or pg_url, replica_id or f"{name}-{secrets.token_hex(3)}",
            on_command=rep.on_command, on_orphan=rep.on_orphan, **{**FAST, **kwargs})
        replicas.append(rep)
        return rep

    yield start
    for rep in replicas:
        if rep.gate is not None:
            rep.gate.set()
        await rep.node.stop()


async def raw(url: str, sql: str, *args: Any) -> list[Any]:
    """Run one statement on a connection of its own (in the test's schema)."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for ``check()`` to hold (an async check is awaited); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def test_command_runs_once_on_the_owner_and_its_result_returns(cluster: Start,
                                                                       pg_url: str) -> None:  # noqa: F811
    a, b = await cluster("a"), await cluster("b")
    await b.node.claim_call("CA1", "twilio")
    assert await a.node.owner_of("CA1", "twilio") == b.node.replica_id
    assert await a.node.owner_of("CA1", "telnyx") is None   # (call_id, carrier) is the key

    command = await a.node.submit("CA1", "twilio", "transfer", {"target": "+15550009999"})
    result = await a.node.wait_result(command, timeout=5)

    assert result == {"ok": True, "by": "b", "kind": "transfer",
                      "args": {"target": "+15550009999"}}
    assert b.applied == [("CA1", "twilio", "transfer", {"target": "+15550009999"})]
    assert a.applied == []
    [row] = await raw(pg_url, "SELECT target_replica, submitted_by, claimed_by, claimed_at, "
                              "done_at FROM patterd_call_commands WHERE id = $1", command)
    assert row["target_replica"] == row["claimed_by"] == b.node.replica_id
    assert row["submitted_by"] == a.node.replica_id
    assert row["claimed_at"] is not None and row["done_at"] is not None


async def test_one_calls_commands_apply_in_order_and_failures_become_results(
        cluster: Start) -> None:
    a, b = await cluster("a"), await cluster("b")
    await b.node.claim_call("CA2", "telnyx")
    ids = [await a.node.submit("CA2", "telnyx", "dtmf", {"n": n}) for n in range(30)]
    failing = await a.node.submit("CA2", "telnyx", "explode", {})
    assert await a.node.wait_result(failing, 5) == {"ok": False, "error": "no such session"}
    results = [await a.node.wait_result(i, 5) for i in ids]
    assert [r["args"]["n"] for r in results] == list(range(30))          # type: ignore[index]
    assert [args["n"] for _, _, kind, args in b.applied if kind == "dtmf"] == list(range(30))


async def test_no_live_owner_is_a_clear_error(cluster: Start) -> None:
    a = await cluster("a")
    with pytest.raises(NoLiveOwner, match="CA404"):
        await a.node.submit("CA404", "twilio", "hangup", {})
    await a.node.claim_call("CA404", "twilio")
    await a.node.release_call("CA404", "twilio")
    assert await a.node.owner_of("CA404", "twilio") is None
    with pytest.raises(NoLiveOwner):
        await a.node.submit("CA404", "twilio", "hangup", {})


async def test_duplicate_notifications_and_concurrent_claimers_apply_once(
        cluster: Start, pg_url: str) -> None:  # noqa: F811
    # Two processes that both answer to replica id "b" (and so both hear every notification
    # for it and race to claim), plus every notification delivered six times.
    a = await cluster("a")
    shared = f"b-{secrets.token_hex(3)}"
    b1, b2 = await cluster("b1", replica_id=shared), await cluster("b2", replica_id=shared)
    await b1.node.claim_call("CA3", "twilio")
    ids = [await a.node.submit("CA3", "twilio", "dtmf", {"n": n}) for n in range(40)]
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(5):
            for i in ids:
                await conn.execute("SELECT pg_notify('patterd_cluster', $1)", f"{shared}:{i}")
    finally:
        await conn.close()
    for i in ids:
        assert (await a.node.wait_result(i, 5) or {}).get("ok") is True
    applied = Counter(args["n"] for _, _, _, args in b1.applied + b2.applied)
    assert applied == Counter(range(40))                  # each exactly once


async def test_listener_killed_by_the_server_reconnects(cluster: Start,
                                                        pg_url: str) -> None:  # noqa: F811
    a = await cluster("a")
    b = await cluster("b", poll_every=60.0)   # no periodic poll: delivery must be by NOTIFY
    await b.node.claim_call("CA4", "twilio")
    old = b.node.listener_pid
    assert old is not None
    [[killed]] = await raw(pg_url, "SELECT pg_terminate_backend($1)", old)
    assert killed
    await until(lambda: b.node.listener_pid not in (None, old))
    assert b.node.listener_reconnects == 1
    command = await a.node.submit("CA4", "twilio", "hangup", {})
    assert (await a.node.wait_result(command, 5) or {}).get("by") == "b"


async def test_commands_sent_while_the_listener_is_down_apply_after_reconnect(
        cluster: Start, pg_url: str) -> None:  # noqa: F811
    proxy, via_proxy = await proxied_url(pg_url)
    try:
        a = await cluster("a")
        b = await cluster("b", dsn=via_proxy, poll_every=60.0)
        await b.node.claim_call("CA5", "telnyx")
        await proxy.cut()   # B loses its LISTEN connection and its pool: the NOTIFY is lost
        await until(lambda: b.node.listener_pid is None)
        command = await a.node.submit("CA5", "telnyx", "hangup", {"reason": "admin"})
        assert await a.node.wait_result(command, 0.3) is None   # nobody can apply it yet
        assert b.applied == []
        await proxy.resume()
        # Not by NOTIFY (sent while B was away) nor the periodic poll (60 s): the catch-up
        # poll that follows the reconnection.
        result = await a.node.wait_result(command, 10)
        assert result == {"ok": True, "by": "b", "kind": "hangup", "args": {"reason": "admin"}}
        assert b.node.listener_reconnects >= 1
        assert len(b.applied) == 1
        await b.node.stop()   # while the proxy still passes traffic: a clean leave
    finally:
        await proxy.cut()


async def test_a_dead_replicas_calls_go_to_exactly_one_survivor(cluster: Start,
                                                                pg_url: str) -> None:  # noqa: F811
    a, c, b = (await cluster("a", **DYING), await cluster("c", **DYING),
               await cluster("b", **DYING))
    calls = [(f"CA6-{n}", "twilio") for n in range(20)]
    for call in calls:
        await b.node.claim_call(*call)
    await b.node.abort()            # dies: no clean stop, no more heartbeats
    # A command submitted in the moment before it is found dead is answered, not lost.
    pending = await a.node.submit("CA6-0", "twilio", "hangup", {})
    await until(lambda: len(a.orphans) + len(c.orphans) >= len(calls), timeout=10)
    assert Counter(a.orphans + c.orphans) == Counter(calls)    # each call exactly once
    assert await a.node.wait_result(pending, 5) == REPLICA_LOST
    live = {r.id for r in await a.node.live_replicas()}
    assert live == {a.node.replica_id, c.node.replica_id}
    assert await raw(pg_url, "SELECT 1 FROM patterd_replicas WHERE id = $1",
                     b.node.replica_id) == []
    async def released() -> bool:   # each survivor drops the calls it ended
        return await raw(pg_url, "SELECT 1 FROM patterd_call_owners") == []
    await until(released)
    # Racing survivors: nothing left for a second pass.
    assert b.applied == []


async def test_owner_of_ignores_dead_replicas(cluster: Start, pg_url: str) -> None:  # noqa: F811
    a = await cluster("a")
    await raw(pg_url, "INSERT INTO patterd_replicas (id, started_at, heartbeat_at) VALUES "
                      "('ghost', now() - interval '1 hour', now() - interval '31 seconds'), "
                      "('fresh', now(), now())")
    await raw(pg_url, "INSERT INTO patterd_call_owners (call_id, carrier, replica_id) VALUES "
                      "('CA7', 'twilio', 'ghost'), ('CA8', 'twilio', 'fresh'), "
                      "('CA9', 'twilio', 'nobody')")
    assert await a.node.owner_of("CA7", "twilio") is None
    assert await a.node.owner_of("CA8", "twilio") == "fresh"
    assert await a.node.owner_of("CA9", "twilio") is None
    for call_id in ("CA7", "CA9"):
        with pytest.raises(NoLiveOwner):
            await a.node.submit(call_id, "twilio", "hangup", {})


async def test_a_moved_call_takes_its_pending_commands_along(cluster: Start) -> None:
    a, c = await cluster("a"), await cluster("c")
    b = await cluster("b")
    await b.node.claim_call("CA10", "twilio")
    await b.node.abort()   # not yet dead for the others: commands still go to it
    command = await a.node.submit("CA10", "twilio", "dtmf", {"digits": "1"})
    await c.node.claim_call("CA10", "twilio")   # e.g. the stream re-attached on C
    assert (await a.node.wait_result(command, 5) or {}).get("by") == "c"
    assert c.applied == [("CA10", "twilio", "dtmf", {"digits": "1"})]


async def test_clean_stop_releases_everything(cluster: Start, pg_url: str) -> None:  # noqa: F811
    a, b = await cluster("a"), await cluster("b")
    b.gate = asyncio.Event()
    for n in range(3):
        await b.node.claim_call(f"CA11-{n}", "telnyx")
    running = await a.node.submit("CA11-0", "telnyx", "hangup", {})
    await until(lambda: b.applied)   # in progress on B when B is asked to stop
    stopping = asyncio.create_task(b.node.stop())
    await asyncio.sleep(0)
    b.gate.set()
    await stopping
    assert (await a.node.wait_result(running, 5) or {}).get("by") == "b"   # finished first
    assert await raw(pg_url, "SELECT * FROM patterd_replicas WHERE id = $1",
                     b.node.replica_id) == []
    assert await raw(pg_url, "SELECT * FROM patterd_call_owners WHERE replica_id = $1",
                     b.node.replica_id) == []
    assert await a.node.owner_of("CA11-1", "telnyx") is None
    with pytest.raises(NoLiveOwner):
        await a.node.submit("CA11-1", "telnyx", "hangup", {})
    assert a.orphans == []   # a clean stop is not a death


async def test_replicas_starting_together_create_the_schema_once(cluster: Start,
                                                                 pg_url: str) -> None:  # noqa: F811
    reps = await asyncio.gather(*(cluster(f"r{n}") for n in range(4)))
    live = {r.id for r in await reps[0].node.live_replicas()}
    assert live == {r.node.replica_id for r in reps}
    tables = await raw(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = "
                               "current_schema() ORDER BY 1")
    assert [t[0] for t in tables] == ["patterd_call_commands", "patterd_call_owners",
                                      "patterd_deliveries", "patterd_handoffs",
                                      "patterd_replicas"]
    reps[1].node.set_draining(True)
    await until(lambda: _draining(reps[0].node, reps[1].node.replica_id))


async def _draining(node: ClusterNode, replica_id: str) -> bool:
    return any(r.id == replica_id and r.draining for r in await node.live_replicas())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def test_cross_replica_latency(cluster: Start) -> None:
    a, b = await cluster("a"), await cluster("b")
    await b.node.claim_call("CA12", "twilio")
    to_apply: list[float] = []
    round_trip: list[float] = []
    for n in range(500):
        t0 = time.perf_counter()
        command = await a.node.submit("CA12", "twilio", "dtmf", {"n": n})
        result = await a.node.wait_result(command, 5)
        t1 = time.perf_counter()
        assert result is not None and result["args"] == {"n": n}
        to_apply.append(b.applied_at[n] - t0)
        round_trip.append(t1 - t0)
    ms = [x * 1000 for x in to_apply]
    rt = [x * 1000 for x in round_trip]
    print(f"\ncross-replica submit -> on_command (500): p50 {statistics.median(ms):.2f} ms, "
          f"p99 {_pct(ms, 0.99):.2f} ms, max {max(ms):.2f} ms; "
          f"submit -> result back: p50 {statistics.median(rt):.2f} ms, "
          f"p99 {_pct(rt, 0.99):.2f} ms")
    assert _pct(ms, 0.99) < 100
