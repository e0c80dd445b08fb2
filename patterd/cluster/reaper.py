"""The reaper's transaction: take over the calls of replicas that stopped heartbeating.

Every replica runs it (from its heartbeat loop, when the heartbeat reports stale replicas);
``FOR UPDATE SKIP LOCKED`` on the dead replica's row makes exactly one survivor act on it, and
the ownership UPDATE … RETURNING moves each call once even without the lock.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..ops.logging import get_logger
from . import queries as Q
from .errors import ClusterUnavailable

log = get_logger("patterd.cluster")

# The answer to a command whose owner died before applying it (or while applying it: unknown).
# Not re-targeted: the call is being hung up and no other replica holds its media socket.
REPLICA_LOST: dict[str, Any] = {"ok": False, "error": "replica_lost"}


async def take_over_dead(pool: Any, me: str, dead_after: float) -> list[tuple[str, str, str]]:
    """In one transaction, for each dead replica this one could lock: move its calls to ``me``,
    answer its open commands with ``REPLICA_LOST`` (notifying their submitters) and delete its
    row. Returns ``(dead_replica, call_id, carrier)`` for each call taken over; the caller
    ends them (after the commit, so each is ended by exactly one replica)."""
    taken: list[tuple[str, str, str]] = []
    try:
        async with pool.acquire(timeout=10.0) as conn, conn.transaction():
            for dead in await conn.fetch(Q.LOCK_DEAD, me, dead_after):
                calls = await conn.fetch(Q.TAKE_OVER, dead["id"], me)
                answered = await conn.fetch(Q.ANSWER_OPEN, dead["id"], me,
                                            json.dumps(REPLICA_LOST))
                await conn.execute(Q.DELETE_REPLICA, dead["id"])
                taken += [(dead["id"], c["call_id"], c["carrier"]) for c in calls]
                log.warning("cluster_replica_dead", replica=dead["id"], calls=len(calls),
                            commands_answered=len(answered), taken_by=me)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise ClusterUnavailable(f"cluster: PostgreSQL: {str(exc) or type(exc).__name__}") \
            from exc
    return taken
