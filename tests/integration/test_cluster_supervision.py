"""The cluster loops are supervised: a malformed notification, a failed heartbeat round or a
listener that dies costs nothing but that item — commands still flow, heartbeats go on."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.integration.test_cluster import Start, cluster, raw, until  # noqa: F401
from tests.integration.test_store_postgres import pg_database, pg_server, pg_url  # noqa: F401


async def notify(url: str, *payloads: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for payload in payloads:
            await conn.execute("SELECT pg_notify('patterd_cluster', $1)", payload)
    finally:
        await conn.close()


async def test_malformed_notifications_are_dropped_and_commands_still_flow(
        cluster: Start, pg_url: str) -> None:  # noqa: F811
    """An id past bigint range used to be kept and re-sent with every claim, each failing:
    no command reached the replica again."""
    a = await cluster("a")
    b = await cluster("b", poll_every=60.0)   # no periodic poll to hide behind
    await b.node.claim_call("CA1", "twilio")
    me = b.node.replica_id
    await notify(pg_url, f"{me}:99999999999999999999", f"{me}:²", f"{me}:", f"{me}:done:x",
                 "someone-else:12")
    await until(lambda: b.node.supervisor.errors.get("cluster_listener") == 4)
    command = await a.node.submit("CA1", "twilio", "hangup", {})
    assert (await a.node.wait_result(command, 5) or {}).get("by") == "b"
    assert b.node.supervisor.restarts == {}


async def test_a_heartbeat_round_that_fails_is_reported_and_the_beat_goes_on(
        cluster: Start, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    a = await cluster("a")
    real = a.node._flush_deferred
    calls = 0

    async def broken_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug in one round")
        await real()

    monkeypatch.setattr(a.node, "_flush_deferred", broken_once)
    await until(lambda: calls >= 3)
    assert a.node.supervisor.errors == {"cluster_heartbeat": 1}
    assert a.node.supervisor.restarts == {} and a.node.supervisor.down == {}
    [[before]] = await raw(pg_url, "SELECT heartbeat_at FROM patterd_replicas WHERE id = $1",
                           a.node.replica_id)
    await asyncio.sleep(0.2)
    [[after]] = await raw(pg_url, "SELECT heartbeat_at FROM patterd_replicas WHERE id = $1",
                          a.node.replica_id)
    assert after > before


async def test_a_listener_loop_that_dies_is_restarted(
        cluster: Start, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    a = await cluster("a")
    b = await cluster("b", poll_every=60.0)
    await b.node.claim_call("CA2", "telnyx")
    calls = 0
    real = b.node._listener._on_connected

    def broken_once() -> None:   # a bug after a reconnection escapes the listener's loop
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the catch-up")
        real()

    monkeypatch.setattr(b.node._listener, "_on_connected", broken_once)
    old = b.node.listener_pid
    [[killed]] = await raw(pg_url, "SELECT pg_terminate_backend($1)", old)
    assert killed
    await until(lambda: b.node.supervisor.restarts.get("cluster_listener") == 1)
    await until(lambda: b.node.listener_pid not in (None, old))
    command = await a.node.submit("CA2", "telnyx", "hangup", {})
    assert (await a.node.wait_result(command, 5) or {}).get("by") == "b"
    assert b.node.supervisor.errors == {"cluster_listener": 1}
